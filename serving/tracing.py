"""OpenTelemetry traces of /predict, /predict_batch and /explain*, exported over OTLP gRPC to the
task's ADOT collector, which sends them to X-Ray (infra_pulumi/ml_api_infra/collector.py).

The fast path runs in front of BentoML's tracing middleware, so it traces its own requests: a
server span per request, with children for validation, the wait for a batch (or a pool thread)
and the model call. Sampling is ParentBased(TraceIdRatioBased(XGB_TRACE_SAMPLE)), decided once per
request before anything is created: a W3C `traceparent` that is sampled is traced (its trace id
kept), one that is not is not, and a request without one is a root drawn at the rate. An
unsampled request costs a header scan and a random number; XGB_TRACE_SAMPLE=0 turns tracing off.

Trace ids are X-Ray's (time-prefixed, AwsXRayIdGenerator), which X-Ray requires. A sampled root
draws its id under TraceIdRatioBased's bound, so the SDK's sampler, applied again when the span
starts, agrees with the decision. The collector's endpoint is OTEL_EXPORTER_OTLP_ENDPOINT (the task
definition sets http://localhost:4317, its sidecar); without one, tracing is off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.extension.aws.trace import AwsXRayIdGenerator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

SERVICE_NAME = "xgb-service"
logger = logging.getLogger("xgb_service")
T = TypeVar("T")

_preset_trace_id: ContextVar[int | None] = ContextVar("xgb_preset_trace_id", default=None)
_traced: ContextVar["TracedRequest | None"] = ContextVar("xgb_traced_request", default=None)
_NOT_TRACED = contextlib.nullcontext()
_PROPAGATOR = TraceContextTextMapPropagator()


class DrawnTraceIds(AwsXRayIdGenerator):
    """X-Ray ids; a sampled root request's trace id is the one drawn when it was sampled."""

    def generate_trace_id(self) -> int:
        preset = _preset_trace_id.get()
        return super().generate_trace_id() if preset is None else preset


@dataclass
class TracedRequest:
    tracer: trace.Tracer
    span: trace.Span

    def finish(self, status: int) -> None:
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
        _traced.set(None)


def otlp_exporter() -> SpanExporter:
    """The OTLP gRPC exporter, imported only when tracing is on: gRPC's import is a good part of a
    worker's start, and most laptops run without a collector."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class Tracing:
    def __init__(self, rate: float, processor: SpanProcessor | None = None) -> None:
        self.rate = rate
        self.bound = TraceIdRatioBased.get_bound_for_rate(rate)
        self.provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(rate)), id_generator=DrawnTraceIds(),
                                       resource=Resource.create({"service.name": SERVICE_NAME}))
        self.provider.add_span_processor(processor or BatchSpanProcessor(otlp_exporter()))
        self.tracer = self.provider.get_tracer("xgb_service.fastpath")

    def start(self, scope: dict[str, Any]) -> TracedRequest | None:
        """The request's span if it is sampled, else None (and nothing created)."""
        traceparent = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                traceparent = value
                break
        parent = None
        if traceparent is not None:
            flags = traceparent[-2:]
            try:
                sampled = int(flags, 16) & 1
            except ValueError:
                sampled = None
            parent = _PROPAGATOR.extract({"traceparent": traceparent.decode("latin-1")})
            if not trace.get_current_span(parent).get_span_context().is_valid:
                parent = None  # malformed: a root, like no header at all
            elif not sampled:
                return None
        if parent is None:
            if random.random() >= self.rate:
                return None
            # An X-Ray id (seconds, then random bits) whose low 64 bits fall under the sampler's bound.
            token = _preset_trace_id.set((int(time.time()) << 96) | (random.getrandbits(32) << 64) | random.randrange(self.bound))
        else:
            token = None
        try:
            span = self.tracer.start_span(f"{scope['method']} {scope['path']}", context=parent, kind=SpanKind.SERVER,
                                          attributes={"http.request.method": scope["method"], "http.route": scope["path"]})
        finally:
            if token is not None:
                _preset_trace_id.reset(token)
        if not span.is_recording():
            return None
        traced = TracedRequest(self.tracer, span)
        _traced.set(traced)  # this request's task and what it awaits
        return traced

    def shutdown(self) -> None:
        self.provider.shutdown()


def step(name: str) -> contextlib.AbstractContextManager:
    """A child span of the traced request around a step (validate, batch wait, model call); nothing if untraced."""
    traced = _traced.get()
    if traced is None:
        return _NOT_TRACED
    return traced.tracer.start_as_current_span(name, context=trace.set_span_in_context(traced.span))


def record(**attributes: Any) -> None:
    """Attributes of the traced request's span (records, model version); nothing if untraced."""
    traced = _traced.get()
    if traced is not None:
        traced.span.set_attributes(attributes)


def in_thread(name: str, fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` as a child span of the traced request when it runs in a pool thread (which has no context of ours)."""
    traced = _traced.get()
    if traced is None:
        return fn

    def traced_fn(*args: Any) -> T:
        with traced.tracer.start_as_current_span(name, context=trace.set_span_in_context(traced.span)):
            return fn(*args)

    return traced_fn


ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def from_rate(rate: float, environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """The worker's tracing, or None with XGB_TRACE_SAMPLE=0 or without a collector to export to:
    with no OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT set (a laptop, a test), the exporter would retry a
    closed port for ever, so tracing is off. The task definition names its sidecar."""
    endpoint = next((environ[name] for name in ENDPOINT_VARIABLES if environ.get(name)), None)
    if rate <= 0 or endpoint is None:
        logger.info("tracing off (%s)", "XGB_TRACE_SAMPLE=0" if rate <= 0 else "no OTEL_EXPORTER_OTLP_ENDPOINT to export to")
        return None
    logger.info("tracing %g %% of requests to %s", rate * 100, endpoint)
    return Tracing(rate)

