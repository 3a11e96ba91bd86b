"""An OTLP gRPC trace receiver (TraceService from opentelemetry-proto, what the ADOT collector's otlp
receiver implements) that keeps the spans it is sent: the tests' and the tracing bench's collector."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Any, Callable

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from .bench_servers import free_port


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Every exported span as {trace_id, span_id, parent (hex), name, attributes, resource, duration}."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: grpc.Server | None = None

    def start(self) -> "Receiver":
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0)

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}
                        self.spans.append({"trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                                           "parent": span.parent_span_id.hex(), "name": span.name,
                                           "attributes": attributes, "resource": resource,
                                           "duration": (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9})
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait(self, condition: Callable[[list[dict]], bool], timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if condition(self.spans):
                    return list(self.spans)
            time.sleep(0.2)
        with self.lock:
            raise AssertionError(f"spans never matched; got {[(s['name'], s['trace_id']) for s in self.spans]}")
