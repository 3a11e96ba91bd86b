"""The one place that reaches into BentoML internals (bentoml==1.4.40, pinned in requirements.in).

Why: BentoML's adaptive batching (CorkDispatcher + the bentoml_service_adaptive_batch_size metric)
is only reachable through the HTTP route of a batchable API, whose per-request path (pydantic
schema building, OpenTelemetry, context objects) costs more than the whole prediction. Our
/predict fast path validates the seed's flat JSON itself and then hands the row to the *same*
dispatcher BentoML built for the batchable `predict_rows` API, through the app factory's own
`batch_infer`, so batching, its metric and its thread limiter are BentoML's.

How: Starlette puts the app into every request scope; BentoML's API routes are
`functools.partial(factory.api_endpoint_wrapper, api_name)`, so the route's endpoint leads to the
factory. tests/test_serving_runtime.py fails if an upgrade moves any of this.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable

from bentoml._internal.marshal.dispatcher import Optimizer
from starlette.routing import Route

BENTOML_VERSION = "1.4.40"


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
