"""The two servers under test, as real processes: our `bentoml serve` and the seed-style baseline.

Each runs in its own session (process group) on a free port with its output in a log file; the
harness measures its start-up time to the first 200 from its readiness URL (polled every 50 ms),
and the CPU time and memory of its whole process tree (supervisor + workers) with psutil.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
READY_POLL_SECONDS = 0.05
_REQUEST_TOTAL = re.compile(r"^bentoml_service_request_total\{([^}]*)\} (\S+)$", re.MULTILINE)


class ServerError(RuntimeError):
    """A server under test did not start or died; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Server:
    name: str
    command: list[str]
    ready_path: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    metrics_path: str | None = None  # Prometheus text with bentoml_service_request_total, if the server has it
    private_bentoml_home: bool = False  # see private_home()
    _home: Path | None = None
    port: int = dataclasses.field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> float:
        """Start and wait for the readiness URL to answer 200; returns seconds from exec to ready."""
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-{self.name}-", suffix=".log")[1])
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        env = {**os.environ, **self.env}
        if self.private_bentoml_home:
            self._home = private_home(env.get("BENTOML_HOME") or str(Path.home() / "bentoml"))
            env["BENTOML_HOME"] = str(self._home)
        started = time.monotonic()
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            if self._ready():
                return time.monotonic() - started
            time.sleep(READY_POLL_SECONDS)
        self.stop()
        raise ServerError(f"{self.name} not ready at {self.url}{self.ready_path} after {timeout:g} s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def status_counts(self, endpoint: str = "/predict") -> dict[str, float]:
        """The server's own count of answers per HTTP status for `endpoint` (empty without metrics)."""
        if self.metrics_path is None:
            return {}
        with urllib.request.urlopen(self.url + self.metrics_path, timeout=5) as response:
            text = response.read().decode()
        counts: dict[str, float] = {}
        for labels, value in _REQUEST_TOTAL.findall(text):
            if f'endpoint="{endpoint}"' in labels:
                code = re.search(r'http_response_code="(\d+)"', labels)
                if code:
                    counts[code.group(1)] = counts.get(code.group(1), 0.0) + float(value)
        return counts

    def processes(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        """User + system CPU of the live process tree (workers live as long as the server)."""
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def memory(self) -> dict[str, float]:
        """Memory of the whole tree in MiB: RSS summed (counts shared pages twice) and PSS (shares them)."""
        rss = pss = 0
        procs = self.processes()
        for p in procs:
            try:
                info = p.memory_full_info()
                rss += info.rss
                pss += info.pss
            except psutil.NoSuchProcess:
                pass
        return {"processes": len(procs), "rss_mib": round(rss / 2**20, 1), "pss_mib": round(pss / 2**20, 1)}

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path else ""

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the server's own process group (it was started in a new session), SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)  # removes the models link, not the store
            self._home = None


def interleaved(servers: dict[str, Server], rounds: int) -> list[list[Server]]:
    """Each round starts one server later (two servers: they alternate who goes first), so drift on
    the box (heat, caches) hits all alike."""
    order = list(servers.values())
    return [order[r % len(order):] + order[:r % len(order)] for r in range(rounds)]


def private_home(shared_home: str) -> Path:
    """A BENTOML_HOME of this server's own that sees the shared model store.

    Every `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir when it starts
    (bentoml/serving.py, ensure_prometheus_dir), so a second server on the same home silently wipes
    the first one's metrics: its /metrics turns empty. Other jobs on this box start servers too.
    """
    home = Path(tempfile.mkdtemp(prefix="bench-bentoml-home-"))
    (home / "models").symlink_to(Path(shared_home).resolve() / "models")
    return home


def our_service(workers: int | None = None, env: dict[str, str] | None = None, name: str = "ours") -> Server:
    """`bentoml serve service:XGBoostService`, whatever service.py currently is, with `env` on top."""
    env = {**({"XGB_WORKERS": str(workers)} if workers else {}), **(env or {})}
    return Server(
        name=name,
        command=[str(VENV_BIN / "bentoml"), "serve", "service:XGBoostService", "--host", "127.0.0.1", "--port", "{port}"],
        ready_path="/readyz",
        env=env,
        metrics_path="/metrics",
        private_bentoml_home=True,
    )


def baseline(workers: int = 2) -> Server:
    """The seed-style FastAPI app: uvicorn with `workers` processes on uvloop + httptools."""
    return Server(
        name="baseline",
        command=[str(VENV_BIN / "uvicorn"), "loadtest.baseline.app:app", "--host", "127.0.0.1", "--port", "{port}",
                 "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning"],  # fmt: skip
        ready_path="/health",
    )
