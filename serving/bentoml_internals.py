"""The one place that reaches into BentoML internals (bentoml==1.4.40, pinned in requirements.in).

Why: BentoML's adaptive batching (CorkDispatcher + the bentoml_service_adaptive_batch_size metric)
is only reachable through the HTTP route of a batchable API, whose per-request path (pydantic
schema building, OpenTelemetry, context objects) costs more than the whole prediction. Our
/predict fast path validates the seed's flat JSON itself and then hands the row to the *same*
dispatcher BentoML built for the batchable `predict_rows` API, through the app factory's own
`batch_infer`, so batching, its metric and its thread limiter are BentoML's.

How: Starlette puts the app into every request scope; BentoML's API routes are
`functools.partial(factory.api_endpoint_wrapper, api_name)`, so the route's endpoint leads to the
factory. tests/test_serving_runtime.py fails if an upgrade moves any of this, and every worker
looks it all up at start-up (fastpath.PredictionRoutes.start): if anything moved, the worker is
not ready, naming the failed check, rather than answering each prediction with a 500.

The fast path is also put *in front of* BentoML's middleware chain (serve_in_front). A middleware
added with add_asgi_middleware runs inside BentoML's error, metrics, OpenTelemetry and timeout
middlewares, which cost ~30 % of a /predict request here (a task, a timer and five metric label
lookups per request) and there is no public hook to go before them. The fast path records
BentoML's own request metrics itself (TrafficMetrics), with the same names and labels, so
dashboards and alerts see no difference; tracing was already excluded on these routes.

uvicorn (what BentoML serves with) writes a response's status line and headers with one write()
and its body with another, and uvloop sends each at once: two loopback segments, two wake-ups of
the client, per prediction. send_response() has uvicorn write both in one.

Last, BentoML's arbiter binds one listening socket and every worker accepts from it; whichever
worker wakes first takes all pending connections, so keep-alive clients end up unevenly spread
(25/25 to 8/42 for 50 connections over 2 workers, measured) and the busiest worker sets the tail
latency. own_listening_socket() gives each worker its own SO_REUSEPORT socket on the same address,
as nginx's `reuseport` does, so the kernel spreads new connections evenly.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import time
from typing import Any, Awaitable, Callable

from bentoml._internal.context import server_context
from bentoml._internal.marshal.dispatcher import Optimizer
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from starlette.applications import Starlette
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

BENTOML_VERSION = "1.4.40"
UVICORN_VERSION = "0.54.0"  # send_response() relies on its httptools RequestResponseCycle


class BentoMLInternalsChanged(RuntimeError):
    """BentoML no longer looks the way this module expects: re-check it against the new version."""


def find_app_factory(app: Any, api_name: str) -> Any:
    """The ServiceAppFactory behind a running BentoML Starlette app, found through an API route."""
    for route in getattr(app, "routes", ()):
        if isinstance(route, Route) and route.name == api_name:
            endpoint = route.endpoint
            if isinstance(endpoint, functools.partial) and hasattr(endpoint.func, "__self__"):
                factory = endpoint.func.__self__
                if hasattr(factory, "batch_infer") and api_name in getattr(factory, "dispatchers", {}):
                    return factory
    raise BentoMLInternalsChanged(
        f"no BentoML batch dispatcher found for API {api_name!r}; this code was written for bentoml=={BENTOML_VERSION}"
    )


def batch_caller(factory: Any, api_name: str) -> Callable[[Any], Awaitable[Any]]:
    """An async function sending one input through BentoML's adaptive batching for `api_name`."""

    async def call(value: Any) -> Any:
        return await factory.batch_infer(api_name, (value,), {})

    return call


def service_instance(factory: Any) -> Any:
    instance = getattr(factory, "_service_instance", None)
    if instance is None:
        raise BentoMLInternalsChanged("BentoML's app factory holds no service instance")
    return instance


def bind_api_once(instance: Any, api_name: str) -> None:
    """Bind a BentoML API method to its instance once, instead of on every request.

    batch_infer() looks the method up with getattr(instance, name) per request, and BentoML's
    APIMethod.__get__ rebuilds an inspect.signature() wrapper each time (~10 % of a worker's CPU
    under load). APIMethod is a non-data descriptor, so an instance attribute takes precedence.
    """
    descriptor = type(instance).__dict__.get(api_name)
    if descriptor is None or not hasattr(descriptor, "_local_call"):
        raise BentoMLInternalsChanged(f"{api_name!r} is not a BentoML APIMethod on {type(instance).__name__}")
    bound = descriptor.__get__(instance, type(instance))
    instance.__dict__[api_name] = bound


class NoHoldOptimizer(Optimizer):
    """BentoML's batch-cost model, without the deliberate wait before dispatching a batch.

    CorkDispatcher holds a batch open while n * (wn + tick + a) <= 0.95 * wait, where `wait` is the
    mean queueing time of recent batches, refreshed at most every 5 s. The holding is what feeds
    that mean: after a burst it keeps delaying every request for minutes (a lone client went from
    0.8 ms to 8 ms per request after 6 s at 64 connections; 1,000 req/s open-loop fell short of its
    rate). Our model call runs on the event loop, so the requests that arrive while it runs already
    form the next batch: no waiting is needed to batch. The fitted cost (a, b) still drives
    BentoML's latency-budget shedding.
    """

    @property
    def wait(self) -> float:
        return 0.0

    @wait.setter
    def wait(self, value: float) -> None:
        pass  # Optimizer.__init__ and trigger_refresh() assign the mean of past waits


def dispatch_without_holding(factory: Any, api_name: str) -> None:
    """Give BentoML's dispatcher for `api_name` a NoHoldOptimizer (before its first batch)."""
    dispatcher = factory.dispatchers.get(api_name)
    if dispatcher is None or type(getattr(dispatcher, "optimizer", None)) is not Optimizer or not hasattr(dispatcher, "max_latency"):
        raise BentoMLInternalsChanged(f"BentoML's dispatcher for {api_name!r} is not a CorkDispatcher with an Optimizer")
    dispatcher.optimizer = NoHoldOptimizer(dispatcher.max_latency)


ASGIApp = Callable[[dict[str, Any], Callable, Callable], Awaitable[None]]


def serve_in_front(app: Any, paths: frozenset[str], handler: ASGIApp) -> None:
    """Route HTTP requests for `paths` to `handler` before BentoML's middleware chain.

    Called from inside that chain (the first time it runs, at lifespan start-up), when Starlette
    has built it: Starlette's __call__ sets scope["app"] and calls app.middleware_stack.
    """
    inner = getattr(app, "middleware_stack", None)
    if not isinstance(app, Starlette) or inner is None:
        raise BentoMLInternalsChanged("the BentoML app is not a Starlette app with a built middleware stack")

    async def front(scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] in paths:
            return await handler(scope, receive, send)
        return await inner(scope, receive, send)

    app.middleware_stack = front


def traffic_metrics_middleware(app: Any) -> RunnerTrafficMetricsMiddleware | None:
    """BentoML's request-metrics middleware in the app's chain (None when metrics are disabled)."""
    layer = app.middleware_stack
    while layer is not None:
        if isinstance(layer, RunnerTrafficMetricsMiddleware):
            return layer
        layer = getattr(layer, "app", None)
    return None


class TrafficMetrics:
    """What RunnerTrafficMetricsMiddleware records per request, for requests that bypass it.

    Same metric objects, names and labels (bentoml_service_request_total, _request_duration_seconds,
    _request_in_progress, _last_request_timestamp_seconds); the labelled children are looked up
    once per endpoint and status instead of five times per request.
    """

    def __init__(self, middleware: RunnerTrafficMetricsMiddleware | None) -> None:
        self.middleware = middleware
        if middleware is not None and not getattr(middleware, "_is_setup", False):
            middleware._setup()
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._in_progress: dict[str, Any] = {}
        self._last_request: Any = None

    def _labels(self) -> dict[str, str]:
        return {
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }

    def started(self, endpoint: str) -> float:
        m = self.middleware
        if m is not None:
            gauge = self._in_progress.get(endpoint)
            if gauge is None:
                gauge = self._in_progress[endpoint] = m.metrics_request_in_progress.labels(endpoint=endpoint, **self._labels())
                self._last_request = m.metrics_last_request_timestamp.labels(**self._labels())
            gauge.inc()
            self._last_request.set_to_current_time()
        return time.perf_counter()

    def finished(self, endpoint: str, status: int, started: float) -> None:
        m = self.middleware
        if m is None:
            return
        children = self._children.get((endpoint, status))
        if children is None:
            labels = {"endpoint": endpoint, "http_response_code": status, **self._labels()}
            children = self._children[(endpoint, status)] = (
                m.metrics_request_total.labels(**labels),
                m.metrics_request_duration.labels(**labels),
            )
        total, duration = children
        total.inc()
        duration.observe(max(time.perf_counter() - started, 0.0))
        self._in_progress[endpoint].dec()


class _CollectingTransport:
    """Stands in for uvicorn's transport while one response is sent, collecting its writes."""

    __slots__ = ("real", "chunks", "close_requested")

    def __init__(self, real: Any) -> None:
        self.real = real
        self.chunks: list[bytes] = []
        self.close_requested = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def close(self) -> None:
        self.close_requested = True  # after the collected bytes are written

    def is_closing(self) -> bool:
        return self.real.is_closing()


async def send_response(send: Callable, start: dict[str, Any], body: dict[str, Any]) -> None:
    """Send an ASGI response start and its whole body; through uvicorn's httptools protocol, in one write().

    uvicorn's send() still does all its own work (status line, header checks, keep-alive, content
    length, completion); only the transport it writes to is swapped for the duration. Any other
    server (or a wrapped send, e.g. with CORS) gets the two messages as usual.
    """
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        await send(start)
        await send(body)
        return
    real = cycle.transport
    collector = _CollectingTransport(real)
    cycle.transport = collector
    try:
        await send(start)
        await send(body)
    finally:
        cycle.transport = real
        if collector.chunks and not real.is_closing():
            real.write(b"".join(collector.chunks))
        if collector.close_requested:
            real.close()


logger = logging.getLogger("xgb_service")


def _worker_argument(name: str) -> str | None:
    """A command-line option of BentoML's worker process (`python -m _bentoml_impl.worker.service ... --fd 3`)."""
    argv = sys.argv
    if name in argv[:-1]:
        return argv[argv.index(name) + 1]
    return None


def own_listening_socket() -> bool:
    """In a BentoML HTTP worker on Linux, listen on a socket of its own instead of the arbiter's.

    Must run before uvicorn starts listening: in a startup hook (uvicorn runs the lifespan start-up
    first). The arbiter's socket is passed to the worker as `--fd N`; this binds a new SO_REUSEPORT
    socket to the same address, stops the shared one listening (in every process: a listening
    socket is one kernel object), and puts the new socket at fd N, where uvicorn picks it up.
    A worker started later (or a replacement for one that died) does the same. Returns False, and
    changes nothing, where this does not apply.
    """
    fd = _worker_argument("--fd")
    if sys.platform != "linux" or fd is None or not fd.isdigit():
        return False
    fd_number = int(fd)
    shared = socket.socket(fileno=os.dup(fd_number))  # a second handle: closing it keeps fd N
    try:
        if shared.type != socket.SOCK_STREAM or shared.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        address = shared.getsockname()
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # lets our socket bind beside it
        own = socket.socket(shared.family, socket.SOCK_STREAM)
        try:
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            own.bind(address)
            backlog = _worker_argument("--backlog")
            own.listen(int(backlog) if backlog and backlog.isdigit() else socket.SOMAXCONN)
            if shared.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                shared.shutdown(socket.SHUT_RD)  # out of the reuseport group: nobody would accept from it
            os.dup2(own.fileno(), fd_number)
        finally:
            own.close()
    except OSError as exc:
        logger.warning("keeping the shared listening socket (own SO_REUSEPORT socket failed: %s)", exc)
        return False
    finally:
        shared.close()
    return True
