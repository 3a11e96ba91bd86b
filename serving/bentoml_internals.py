"""The one place that reaches into BentoML internals (uvicorn's and the socket's: uvicorn_internals.py).

| reach (bentoml 1.4.40)                                 | used for                          | checked at start (PredictionRoutes.start) | public fallback                                   |
|--------------------------------------------------------|-----------------------------------|-------------------------------------------|---------------------------------------------------|
| API route endpoint = partial(factory.api_endpoint_wrapper) | find_app_factory()            | the route, its factory, `batch_infer`, `dispatchers` | none that batches: the worker is not ready, /readyz and /predict* answer 503 naming the check (never a 500 per request) |
| ServiceAppFactory.batch_infer(api, args, kwargs)       | batch_caller(): /predict's batching | (with find_app_factory)                 | (same)                                            |
| ServiceAppFactory._service_instance                    | service_instance()                | not None                                  | (same)                                            |
| APIMethod descriptor (`_local_call`, `__get__`)        | bind_api_once()                   | the class attribute is an APIMethod       | skipped: BentoML binds the method per request (slower), logged |
| CorkDispatcher.optimizer / Optimizer / max_latency     | dispatch_without_holding()        | an Optimizer, exactly, and max_latency    | BentoML's own holding Optimizer, logged          |
| Starlette app.middleware_stack                         | serve_in_front()                  | a Starlette app with a built stack        | the fast path stays inside BentoML's chain (slower; BentoML counts the requests), logged |
| RunnerTrafficMetricsMiddleware in the chain (factory.enable_metrics): _is_setup, _setup(), metrics_request_{total,duration,in_progress}, metrics_last_request_timestamp | TrafficMetrics | traffic_metrics_middleware() finds it when metrics are on; check_traffic_metrics(): each is there and has .labels | (same as serve_in_front: BentoML's chain counts them) |
| bentoml.server_context (public)                        | TrafficMetrics' labels            | -                                         | -                                                 |

Pinned: bentoml==1.4.40, starlette==1.10.0 (requirements.in); serving/pins.py warns at start when
another is installed, and tests/test_serving_runtime.py checks every reach against the installed one.

Why batching: BentoML's adaptive batching (CorkDispatcher + the bentoml_service_adaptive_batch_size
metric) is only reachable through the HTTP route of a batchable API, whose per-request path
(pydantic schema building, OpenTelemetry, context objects) costs more than the whole prediction.
Our /predict fast path validates the seed's flat JSON itself and then hands the row to the *same*
dispatcher BentoML built for the batchable `predict_rows` API, through the app factory's own
`batch_infer`, so batching, its metric and its thread limiter are BentoML's. Starlette puts the
app into every request scope; BentoML's API routes are
`functools.partial(factory.api_endpoint_wrapper, api_name)`, so the route's endpoint leads to the
factory.

Why in front: a middleware added with add_asgi_middleware runs inside BentoML's error, metrics,
OpenTelemetry and timeout middlewares, which cost a large share of a /predict request (a task, a
timer and five metric label lookups per request; docs/performance.md) and there is no public hook
to go before them. The fast path records BentoML's own request metrics itself (TrafficMetrics),
with the same names and labels, so dashboards and alerts see no difference; tracing was already
excluded on these routes.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Awaitable, Callable

from bentoml import server_context
from bentoml._internal.marshal.dispatcher import Optimizer
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from starlette.applications import Starlette
from starlette.routing import Route

BENTOML_VERSION = "1.4.40"
STARLETTE_VERSION = "1.10.0"
logger = logging.getLogger("xgb_service")


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
    APIMethod.__get__ rebuilds an inspect.signature() wrapper each time (a noticeable share of a
    worker's CPU under load: docs/performance.md). APIMethod is a non-data descriptor, so an instance attribute takes precedence.
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
    that mean: after a burst it keeps delaying every request for minutes (a lone client's latency
    grew tenfold, and the open loop fell short of its rate: docs/performance.md). Our model call runs on the event loop, so the requests that arrive while it runs already
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


def traffic_metrics_middleware(app: Any, factory: Any = None) -> RunnerTrafficMetricsMiddleware | None:
    """BentoML's request-metrics middleware in the app's chain (None when the factory has metrics disabled)."""
    layer = app.middleware_stack
    while layer is not None:
        if isinstance(layer, RunnerTrafficMetricsMiddleware):
            return layer
        layer = getattr(layer, "app", None)
    if factory is not None and getattr(factory, "enable_metrics", True):
        raise BentoMLInternalsChanged("BentoML's metrics are on but no RunnerTrafficMetricsMiddleware is in the app's chain")
    return None


TRAFFIC_METRICS = ("metrics_request_total", "metrics_request_duration", "metrics_request_in_progress", "metrics_last_request_timestamp")


def check_traffic_metrics(middleware: RunnerTrafficMetricsMiddleware) -> None:
    """Set BentoML's request-metrics middleware up (as its first request would) and check it has the metrics TrafficMetrics records."""
    setup = getattr(middleware, "_setup", None)
    if not callable(setup) or not hasattr(middleware, "_is_setup"):
        raise BentoMLInternalsChanged("BentoML's RunnerTrafficMetricsMiddleware has no _setup()/_is_setup")
    if not middleware._is_setup:
        setup()
    missing = [name for name in TRAFFIC_METRICS if not callable(getattr(getattr(middleware, name, None), "labels", None))]
    if missing:
        raise BentoMLInternalsChanged(f"BentoML's RunnerTrafficMetricsMiddleware has no {', '.join(missing)}")


class TrafficMetrics:
    """What RunnerTrafficMetricsMiddleware records per request, for requests that bypass it.

    Same metric objects, names and labels (bentoml_service_request_total, _request_duration_seconds,
    _request_in_progress, _last_request_timestamp_seconds); the labelled children are looked up
    once per endpoint and status instead of five times per request. Raises BentoMLInternalsChanged
    when the middleware does not have them (check_traffic_metrics).
    """

    def __init__(self, middleware: RunnerTrafficMetricsMiddleware | None) -> None:
        self.middleware = middleware
        if middleware is not None:
            check_traffic_metrics(middleware)
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
