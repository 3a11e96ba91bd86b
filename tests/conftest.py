"""Shared fixtures: a throw-away model store with the default model, the service in process, and real
`bentoml serve` processes (testkit.servers).

The store is a temporary BENTOML_HOME, set before anything imports bentoml, so tests never touch
the developer's store and every run trains from scratch (~3 s). Each xdist worker is a process of
its own, so it gets a store of its own too.

Tiers (pytest.ini's markers), set here from the fixtures a test uses: `app` (the in-process
harness: `app_client`), `live` (`live_server`, `server_factory`); `fast` is set by the modules.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="xgb-test-bentoml-")

from testkit import servers  # noqa: E402  (imports no bentoml)
from testkit.probes import train_default_model  # noqa: E402
from testkit.servers import Server, bentoml_serve  # noqa: E402
os.environ.pop("MODEL_TAG", None)

LIVE_FIXTURES = {"live_server", "live_server_process", "live_client", "server_factory", "keyed_server"}
APP_FIXTURES = {"app_client"}


def pytest_configure(config) -> None:
    # One file that every process of the run (xdist workers inherit the environment) appends a line
    # to per server start, so the summary counts the whole run's `bentoml serve` starts.
    if not os.environ.get(servers.START_LOG_ENV):
        os.environ[servers.START_LOG_ENV] = tempfile.mkstemp(prefix="testkit-starts-", suffix=".log")[1]


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & LIVE_FIXTURES:
            item.add_marker(pytest.mark.live)
        if used & APP_FIXTURES:
            item.add_marker(pytest.mark.app)


def pytest_terminal_summary(terminalreporter, config) -> None:
    if hasattr(config, "workerinput"):
        return  # the controller reports for all workers
    path = os.environ.get(servers.START_LOG_ENV)
    lines = Path(path).read_text().splitlines() if path and Path(path).exists() else []
    most = max((int(m.group(1)) for line in lines if (m := re.search(r" live (\d+):", line))), default=0)
    terminalreporter.write_line(f"testkit: {len(lines)} server starts in this run "
                                f"({sum(': bentoml serve' in line for line in lines)} bentoml serve), at most {most} alive at once in one process ({path})")


@pytest.fixture(scope="session")
def bentoml_home() -> str:
    """The test store, holding the default model."""
    import bentoml

    try:
        bentoml.models.get("xgb_classifier:latest")
    except bentoml.exceptions.NotFound:
        train_default_model()
    return os.environ["BENTOML_HOME"]


def start_servers(started: list[Server]) -> Callable[..., Server]:
    def start(env: dict[str, str | None] | None = None, workers: int = 2, wait: bool = True,
              service: tuple[str, ...] = ("service:XGBoostService",)) -> Server:
        """A real `bentoml serve` with its own settings (`env` on top of the suite's) and BENTOML_HOME."""
        server = bentoml_serve(env, workers, service=service)
        started.append(server)
        server.start(wait=wait, timeout=90)
        return server

    return start


@pytest.fixture(scope="module")
def server_factory(bentoml_home) -> Iterator[Callable[..., Server]]:
    """Start servers with their own settings; they are stopped when the test module ends, so they
    don't pile up over the session."""
    started: list[Server] = []
    yield start_servers(started)
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def live_server_process(bentoml_home) -> Iterator[Server]:
    """A shared real service with default settings (2 workers), for the whole session (one per xdist
    worker). Tests only send it requests: what changes a server (a kill, a signal) starts its own."""
    started: list[Server] = []
    yield start_servers(started)()
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def live_server(live_server_process) -> str:
    """Base URL of the shared real service."""
    return live_server_process.url


@pytest.fixture(scope="session")
def live_client(live_server):
    """The shared real service through a client with app_client's interface (paths, not URLs)."""
    from testkit.probes import LiveClient

    with LiveClient(live_server) as client:
        yield client


@pytest.fixture(scope="session")
def app_client(bentoml_home):
    """The service in this process with default settings (testkit.inprocess): an httpx-style client
    of its ASGI app, started as a worker starts it. Relative URLs: app_client.post("/predict", ...)."""
    from testkit import inprocess

    with inprocess.client() as client:
        yield client
