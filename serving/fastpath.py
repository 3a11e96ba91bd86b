"""/predict, /predict_batch, /explain and /explain_batch, answered by a raw ASGI handler in front of
BentoML's middlewares.

BentoML's own API route and middleware chain cost more per request than the prediction itself
(see bentoml_internals.py). PredictionRoutes is added with add_asgi_middleware and, when the app
starts, puts its handler in front of that chain for the two prediction routes. The handler counts
and times each request in BentoML's own request metrics, reads the body with a size limit
(body.py), answers within the request timeout (deadlines.py), validates it with pydantic-core,
sends single records through BentoML's adaptive batching and batches to a pool of their own
(batch_pool.py), and writes the JSON with orjson. /explain and /explain_batch take the same
records (same contract) and run in a pool of their own (serving/explain.py). The pages (/, its
files, /docs.json, /metadata, /schema.json) are served from memory (pages.py). Every error's body,
status and headers are errors.py's. Every other route goes through BentoML as usual, and its
router's plain-text 404 and 405 become JSON errors like ours (errors.bentoml_route_sender).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Awaitable, Callable

import numpy as np
import orjson
from bentoml.exceptions import ServiceUnavailable
from starlette.middleware.cors import CORSMiddleware

from . import bentoml_internals, errors, metrics, request_ids, tracing
from .batch_pool import BatchPool
from .bentoml_internals import ASGIApp
from .body import read_body
from .contract import Contract
from .deadlines import Deadlines, timed_out
from .errors import InputError, respond
from .explain import MAX_EXPLAIN_RECORDS, NICENESS, ExplainBatcher
from .pages import Pages
from .settings import Settings

logger = logging.getLogger("xgb_service")

BATCHED_API = "predict_rows"  # the batchable BentoML API the single-record path feeds
EXPLAIN_ROUTES = frozenset({"/explain", "/explain_batch"})


class PredictionRoutes:
    def __init__(self, app: ASGIApp, settings: Settings, contract: Contract, card: dict[str, Any], client_schema: dict[str, Any]) -> None:
        self.app = app
        self.settings = settings
        self.contract = contract
        self.api_key = settings.api_key.encode()
        self.routes: dict[str, tuple[Callable[[bytes, dict[str, Any], Any], Awaitable[bytes]], int]] = {
            "/predict": (self.predict, settings.max_predict_bytes),
            "/predict_batch": (self.predict_batch, settings.max_batch_bytes),
            "/explain": (self.explain, settings.max_predict_bytes),
            "/explain_batch": (self.explain_batch, settings.max_batch_bytes),
        }
        self.pages = Pages(contract, settings, card, client_schema, self.check_api_key)
        self.explain_pool = BatchPool(settings.explain_threads, settings.explain_queue, name="explain", unit="records to explain", niceness=NICENESS)
        # What serves the prediction routes from in front of BentoML's chain (see __call__).
        self.prediction_app: ASGIApp = (CORSMiddleware(self.serve_counted, **cors_options(settings)) if settings.cors_origins
                                        else self.serve_counted)  # fmt: skip
        self.traffic = bentoml_internals.TrafficMetrics(None)
        self.not_ready: bytes | None = None  # the failed start-up check's answer to /readyz and /predict*
        self.inflight = 0
        self.deadlines = Deadlines(settings.request_timeout_s)
        self.batch_pool = BatchPool(settings.batch_threads, settings.batch_queue)
        self._batched: Callable[[np.ndarray], Awaitable[np.ndarray]] | None = None
        self._service: Any = None
        self.capture: Any = None  # the service's serving.capture.Capture when XGB_CAPTURE is on
        # One per loaded model, keyed by version (they share the pool); need the service's explainers: made in start().
        self.explanations: dict[str, ExplainBatcher] | None = None
        self.tracing: tracing.Tracing | None = None  # made in start(), in the worker (its export thread)

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, self.on_startup_complete(scope["app"], send))
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.not_ready is not None and (scope["path"] in self.routes or scope["path"] == "/readyz"):
            return await respond(send, 503, self.not_ready, errors.RETRY_AFTER)
        if scope["path"] in self.routes:  # (once served in front, these requests go to self.prediction_app directly)
            return await self.prediction_app(scope, receive, send)
        if scope["path"] in self.pages:
            return await self.pages.serve(scope, send)
        if scope["path"] == f"/{BATCHED_API}":
            # Internal: reachable only through /predict, which validates what it sends.
            return await respond(send, 404, errors.not_found(scope).body())
        return await self.app(scope, receive, errors.bentoml_route_sender(scope, send))

    async def serve_counted(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        """One /predict* or /explain* request, counted in BentoML's request metrics."""
        endpoint = scope["path"]
        status, started = 500, None
        traced = self.tracing.start(scope) if self.tracing is not None else None
        try:
            started = self.traffic.started(endpoint)
            status = await self.serve_prediction(scope, receive, send)
        finally:
            if started is not None:
                self.traffic.finished(endpoint, status, started)
            if traced is not None:
                traced.finish(status)

    async def serve_prediction(self, scope: dict[str, Any], receive: Callable, send: Callable) -> int:
        """Answer one /predict* or /explain* request; returns the status sent.
        """
        handler, max_bytes = self.routes[scope["path"]]
        status, headers, body = 200, None, None
        counted = scope["path"] not in EXPLAIN_ROUTES  # explanations have their own limit (their pool)
        self.inflight += counted
        task = asyncio.current_task()
        cohort = self.deadlines.start(task)
        request_ids.assign(scope)
        try:
            pinned = self.check_request(scope)
            body = await read_body(receive, max_bytes, scope)
            if self.inflight > self.settings.max_inflight:
                raise ServiceUnavailable("the prediction queue is full")
            payload = await handler(body, scope, pinned)
        except InputError as exc:
            metrics.rejected.labels(reason=errors.rejection_reason(exc.status)).inc()
            status, payload, headers = exc.status, exc.body(), errors.headers_for(exc)
        except (asyncio.CancelledError, ServiceUnavailable) as exc:
            # BentoML's dispatcher turns a cancelled wait into ServiceUnavailable: either may be the deadline.
            if timed_out(cohort, task):
                metrics.rejected.labels(reason="timeout").inc()
                status, payload = errors.timed_out_answer(body is None, self.settings.request_timeout_s)
            elif isinstance(exc, asyncio.CancelledError):
                raise
            else:
                metrics.rejected.labels(reason="overloaded").inc()
                status, headers, payload = 503, errors.RETRY_AFTER, errors.overloaded()
        except Exception:
            logger.exception("prediction failed")
            status = 500
            payload = errors.internal_error()
        finally:
            self.inflight -= counted
            cohort.discard(task)
        await respond(send, status, payload, request_ids.with_header(scope, headers))
        return status

    def on_startup_complete(self, app: Any, send: Callable) -> Callable:
        """The lifespan's send: when BentoML's start-up is done (service instance, dispatchers), and
        before uvicorn accepts a request, look up and check the BentoML internals the fast path uses."""

        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.start(app)
            await send(message)

        return wrapped

    def start(self, app: Any) -> None:
        """Bind to BentoML's dispatcher and service instance, then take the prediction routes in front
        of its middleware chain (the reaches: serving/bentoml_internals.py's table). Without the
        dispatcher or the service instance the worker stays up but not ready: /readyz and the
        prediction routes answer 503 naming the failed check, so a deployment never takes traffic it
        would answer with 500s. The other reaches fall back to BentoML's public behaviour, logged."""
        self.tracing = tracing.from_rate(self.settings.trace_sample)
        try:
            factory = bentoml_internals.find_app_factory(app, BATCHED_API)
            self._batched = bentoml_internals.batch_caller(factory, BATCHED_API)
            self._service = bentoml_internals.service_instance(factory)
            self.capture = getattr(self._service, "capture", None)
            self.explanations = {version: ExplainBatcher(e, self.explain_pool) for version, e in self._service.explainers.items()}
        except Exception as exc:  # BentoMLInternalsChanged names the check; anything else is a change too
            error = f"not ready: BentoML internals changed ({exc}); update serving/bentoml_internals.py"
            logger.error("%s", error, exc_info=not isinstance(exc, bentoml_internals.BentoMLInternalsChanged))
            self.not_ready = InputError(503, error).body()
            return
        for optimisation, fallback in ((lambda: bentoml_internals.bind_api_once(self._service, BATCHED_API), "bound per request"),
                                       (lambda: bentoml_internals.dispatch_without_holding(factory, BATCHED_API), "BentoML's holding optimizer")):  # fmt: skip
            try:
                optimisation()
            except bentoml_internals.BentoMLInternalsChanged as exc:
                logger.warning("%s; falling back to %s (update serving/bentoml_internals.py)", exc, fallback)
        try:
            traffic = bentoml_internals.TrafficMetrics(bentoml_internals.traffic_metrics_middleware(app, factory))
            bentoml_internals.serve_in_front(app, frozenset(self.routes), self.prediction_app)
        except bentoml_internals.BentoMLInternalsChanged as exc:
            # Inside BentoML's chain (a plain add_asgi_middleware) BentoML counts the requests itself.
            logger.warning("%s; the prediction routes stay inside BentoML's middleware chain (update serving/bentoml_internals.py)", exc)
        else:
            self.traffic = traffic

    def check_request(self, scope: dict[str, Any]) -> Any:
        """Refuse what is not a well-formed prediction request; returns the model X-Model-Version pins, if any."""
        if scope["method"] != "POST":
            raise errors.not_allowed(scope, "POST")
        headers = dict(scope["headers"])
        self.check_api_key(headers)
        content_type = headers.get(b"content-type")
        if content_type is not None and content_type.split(b";")[0].strip().lower() != b"application/json":
            raise InputError(415, f"unsupported content type {content_type.decode('latin-1')[:100]!r}: send application/json")
        encoding = headers.get(b"content-encoding")
        if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
            # Read as JSON, a gzipped body would be "malformed JSON at column 1", which misleads.
            raise InputError(415, f"unsupported content encoding {encoding.decode('latin-1')[:100]!r}: send the body uncompressed")
        pinned = headers.get(b"x-model-version")
        return None if pinned is None else self._service.rollout.pinned(pinned)

    def check_api_key(self, headers: dict[bytes, bytes]) -> None:
        if self.api_key and not hmac.compare_digest(headers.get(b"x-api-key", b""), self.api_key):
            raise InputError(401, "missing or wrong API key: send it in the X-API-Key header")

    async def predict(self, body: bytes, scope: dict[str, Any], pinned: Any) -> bytes:
        with tracing.step("validate"):
            rows = self.contract.parse_record(body)
            self.check_ranges(rows, batch=False)
        if pinned is not None:  # debugging traffic: straight to the pinned model, not batched with the rest
            with tracing.step("model call"):
                body = orjson.dumps(self._service.prediction_bodies(rows, pinned)[0])
        else:
            assert self._batched is not None
            with tracing.step("batch wait"):  # BentoML's adaptive batch: the wait for it and its model call
                (body,) = await self._batched(rows)  # predict_rows' JSON bytes for this row
        if self.capture is not None:
            self.capture.record_answer(request_ids.of(scope), rows, body)
        return body

    async def predict_batch(self, body: bytes, scope: dict[str, Any], pinned: Any) -> bytes:
        self.batch_pool.admit()
        with tracing.step("validate"):
            rows = self.contract.parse_batch(body)
            self.check_ranges(rows, batch=True)
        tracing.record(records=len(rows))
        model = self._service.rollout.for_request(pinned)  # a canary answers whole requests
        # Already a batch: straight to the model, off the event loop, on this route's own threads.
        with tracing.step("batch wait"):  # the pool's queue, then its thread's model call
            scored = await self.batch_pool.run(tracing.in_thread("model call", self._service.scored), rows, model)
        request_id = request_ids.of(scope)
        if self.capture is not None:
            self.capture.record_scores(request_id, rows, scored, model.version)
        return orjson.dumps({"predictions": request_ids.label_records(request_id, scored.bodies)})

    def explanations_for(self, pinned: Any) -> ExplainBatcher:
        """The batcher of the explainer answering this request (XGBoostService.explainer_for: pinned, or the rollout's draw)."""
        assert self.explanations is not None
        return self.explanations[self._service.explainer_for(pinned).bundle.version]

    async def explain(self, body: bytes, scope: dict[str, Any], pinned: Any) -> bytes:
        explanations = self.explanations_for(pinned)
        explained_class, top = explanations.explainer.options(scope["query_string"])
        with tracing.step("validate"):
            rows = self.contract.parse_record(body)
            self.check_ranges(rows, batch=False)
        with tracing.step("model call"):  # the explanation pool's queue and TreeSHAP
            explanations_found = await explanations.explain(rows, explained_class, top)
        if self.capture is not None:
            self.capture.record_explanations(request_ids.of(scope), rows, explanations_found, batch=False)
        return orjson.dumps(explanations_found[0])

    async def explain_batch(self, body: bytes, scope: dict[str, Any], pinned: Any) -> bytes:
        explanations = self.explanations_for(pinned)
        explained_class, top = explanations.explainer.options(scope["query_string"])
        with tracing.step("validate"):
            rows = self.contract.parse_batch(body)
        if len(rows) > MAX_EXPLAIN_RECORDS:
            raise InputError(422, f"too many instances: {len(rows)} records in one /explain_batch, at most {MAX_EXPLAIN_RECORDS}",
                             [{"loc": ["instances"], "msg": f"at most {MAX_EXPLAIN_RECORDS} records", "type": "too_long"}])  # fmt: skip
        self.check_ranges(rows, batch=True)
        tracing.record(records=len(rows))
        with tracing.step("model call"):  # the explanation pool's queue and TreeSHAP
            explanations_found = await explanations.explain(rows, explained_class, top)
        request_id = request_ids.of(scope)
        request_ids.label_records(request_id, explanations_found)
        if self.capture is not None:
            self.capture.record_explanations(request_id, rows, explanations_found, batch=True)
        return orjson.dumps({"explanations": explanations_found})

    def check_ranges(self, rows: np.ndarray, batch: bool) -> None:
        """Refuse out-of-range values when so configured; counting them in "warn" mode is done per
        batch, where the rows are predicted (XGBoostService.scored)."""
        if self.settings.range_check != "reject":
            return
        mask = self.contract.out_of_range(rows)
        metrics.observe_out_of_range(mask, self.contract.schema.feature_names)  # also counts the records checked: the ratio's denominator
        if mask.any():
            raise self.contract.range_error(rows, mask, batch)


def cors_options(settings: Settings) -> dict[str, Any]:
    return {"allow_origins": list(settings.cors_origins), "allow_methods": ["GET", "POST"],
            "allow_headers": ["Content-Type", "X-API-Key", request_ids.HEADER], "expose_headers": [request_ids.HEADER]}
