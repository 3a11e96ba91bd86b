"""The service in this process: its ASGI app as BentoML builds it for a worker, with the start-up run.

`app()` imports service.py and asks BentoML for the app through its public `Service.to_asgi()`,
the ServiceAppFactory a `bentoml serve` worker runs. `client()` enters Starlette's TestClient, which
runs the ASGI lifespan, so BentoML creates the service instance (its __init__ loads the model's
explainers and the rollout) and serving.fastpath binds to its dispatcher exactly as in a worker.

One app per process, with the environment's settings: service.py reads its settings and the model
at import, and BentoML's traffic metrics register in prometheus_client's one registry (a second
app's first request raises DuplicateTimeseries). Other settings (an API key, a rollout) and what
needs real processes (several workers, signals, sockets, the multiprocess /metrics) run on
testkit.servers.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any


def app() -> Any:
    """The service's ASGI app (BentoML's worker app with serving.fastpath in front), not yet started."""
    import service

    return service.XGBoostService.to_asgi()


@contextlib.contextmanager
def client(base_url: str = "http://testserver") -> Iterator[Any]:
    """An HTTP client (httpx API) of the started app; the block's end runs its shutdown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette's notice that httpx2 is the newer client
        from starlette.testclient import TestClient
    with TestClient(app(), base_url=base_url, raise_server_exceptions=False) as started:
        yield started
