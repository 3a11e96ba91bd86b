"""Shared fixtures: a throw-away model store with the default model, and real `bentoml serve` processes.

The store is a temporary BENTOML_HOME, set before anything imports bentoml, so tests never touch
the developer's store and every run trains from scratch (~3 s).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
BENTOML = str(Path(sys.executable).parent / "bentoml")
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="xgb-test-bentoml-")

from loadtest.bench_servers import free_port, private_home  # noqa: E402  (imports no bentoml)
os.environ.pop("MODEL_TAG", None)


def environment(changes: dict[str, str | None]) -> dict[str, str]:
    """This process's environment with `changes` applied; a None value unsets the variable."""
    changed = {**os.environ, **changes}
    return {name: value for name, value in changed.items() if value is not None}


class ServerProcess:
    """A real `bentoml serve service:XGBoostService` (or `bentoml serve` in `cwd`) on a free port, its output in a log file.

    Each server gets a BENTOML_HOME of its own whose models/ is the session store: `bentoml serve`
    wipes $BENTOML_HOME/prometheus_multiproc_dir when it starts, so two servers sharing a home
    would read and clobber each other's metrics.
    """

    def __init__(self, env: dict[str, str | None] | None = None, workers: int = 2, cwd: Path = REPO,
                 service: tuple[str, ...] = ("service:XGBoostService",)) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="bentoml-serve-", suffix=".log")[1])
        home = private_home(os.environ["BENTOML_HOME"])
        self.env = environment({"BENTOML_HOME": str(home), "XGB_WORKERS": str(workers), **(env or {})})
        self.cwd, self.service = cwd, service
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout: float = 60) -> "ServerProcess":
        self.proc = subprocess.Popen(
            [BENTOML, "serve", *self.service, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.cwd,
            env=self.env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60, ready: Callable[[requests.Response], bool] = lambda answer: answer.status_code == 200) -> requests.Response:
        """Polls /readyz until an answer is `ready` (by default: a 200); returns that answer."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                answer = requests.get(f"{self.url}/readyz", timeout=1)
                if ready(answer):
                    return answer
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"bentoml serve not ready after {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


def train_default_model(*extra_args: str) -> str:
    """Train via the real CLI into the test store; returns its output."""
    out = subprocess.run(
        [sys.executable, "train_export.py", *extra_args], cwd=REPO, capture_output=True, text=True, check=True
    )
    return out.stdout


@pytest.fixture(scope="session")
def bentoml_home() -> str:
    """The test store, holding the default model."""
    import bentoml

    try:
        bentoml.models.get("xgb_classifier:latest")
    except bentoml.exceptions.NotFound:
        train_default_model()
    return os.environ["BENTOML_HOME"]


@pytest.fixture(scope="session")
def server_factory(bentoml_home):
    """Start extra servers with their own settings; all are stopped at the end of the session."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None, workers: int = 2, wait: bool = True,
              service: tuple[str, ...] = ("service:XGBoostService",)) -> ServerProcess:
        server = ServerProcess(env, workers, service=service)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def live_server(server_factory) -> str:
    """Base URL of a shared real service with default settings (2 workers)."""
    return server_factory().url


def samples(url: str) -> dict[str, list]:
    """A service's /metrics as {sample name: [(labels, value), ...]}."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, list] = {}
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=10).text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def total(found: dict[str, list], name: str, **labels: str) -> float:
    """The sum of a sample over the series (workers, label values) that carry `labels`."""
    return sum(v for got, v in found.get(name, []) if labels.items() <= got.items())


def exposed(url: str, series: str) -> float:
    """The value of one series (name and labels as /metrics writes them) in a service's /metrics; 0 before it exists."""
    lines = [l for l in requests.get(f"{url}/metrics", timeout=10).text.splitlines() if l.startswith(series + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


@contextlib.contextmanager
def meanwhile(send: Callable[[requests.Session], requests.Response], pause: float = 0.0) -> Iterator[list[tuple[int, float]]]:
    """Sends a request over and over from a thread of its own (`pause` s apart) while the block runs.

    Yields the (status, seconds) of each answer so far; the block's end stops the thread, and an
    error it met (a timeout, a refused connection) is raised there.
    """
    answers: list[tuple[int, float]] = []
    stop = threading.Event()

    def loop() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                started = time.monotonic()
                status = send(session).status_code
                answers.append((status, time.monotonic() - started))
                stop.wait(pause)

    with ThreadPoolExecutor(1) as thread:
        looping = thread.submit(loop)
        try:
            yield answers
        finally:
            stop.set()
        looping.result()


def worker_pids(server: ServerProcess) -> set[int]:
    """The BentoML HTTP worker processes of a server."""
    out = subprocess.run(["pgrep", "-f", "-P", str(server.proc.pid), "_bentoml_impl.worker.service"], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def listeners(port: int) -> list[set[int]]:
    """The listening sockets on a port, each as the set of processes holding it."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return [{int(p) for p in re.findall(r"pid=(\d+)", line)} for line in out.splitlines() if line.strip()]


def fuzz(url: str, report_dir: Path, max_examples: int) -> None:
    """schemathesis against the service's own OpenAPI document: no 5xx, every answer as documented."""
    result = subprocess.run(
        [str(REPO / ".venv/bin/schemathesis"), "run", f"{url}/docs.json", "--checks", "all",
         "--max-examples", str(max_examples), "--seed", "7", "--report-dir", str(report_dir),
         # Longer than the service's own XGB_REQUEST_TIMEOUT_S (30 s): a slow answer (a 1,000-record
         # /explain_batch on a loaded machine took 8-10 s) is a 200 or a documented 504, not a client timeout.
         "--request-timeout", "45"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    assert re.search(r"\d+ generated, \d+ passed", result.stdout), result.stdout[-2000:]
