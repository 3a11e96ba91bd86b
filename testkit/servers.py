"""The one server launcher: a real process on a free port, in a session of its own, its output in a log.

Tests (tests/conftest.py's server_factory), the benchmarks (loadtest/bench_servers.py) and the
monitoring checks start `bentoml serve` (or the baseline app) through Server. Every start is
counted (STARTS, and one line "testkit: started <name> ..." per start in $TESTKIT_START_LOG when
set) so the suite can say how many servers it ran and how many were alive at once.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from testkit.waiting import NotReady, http_ready, wait_until

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
BENTOML = str(VENV_BIN / "bentoml")
START_LOG_ENV = "TESTKIT_START_LOG"

_lock = threading.Lock()
STARTS = 0  # servers started by this process
LIVE: set["Server"] = set()  # started and not yet stopped
MOST_LIVE = 0  # the most alive at one time


class ServerError(NotReady):
    """A server did not start or died; the message carries the tail of its log."""


_PORTS = random.SystemRandom()  # not `random`: a seeded generator would give every xdist worker the same ports
LOWEST_PORT = 10000


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nothing listens on now, below the ephemeral range. A port the kernel picks (bind to
    port 0) is from that range, and any process's outgoing connection (wrk, hey, a client) can take
    it before the server binds it: Prometheus failed with "address already in use" that way."""
    below = ephemeral_ports()[0]
    for _ in range(200):
        port = _PORTS.randrange(LOWEST_PORT, below)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the low range is full: the kernel's pick, as before
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_home(shared_home: str) -> Path:
    """A BENTOML_HOME of one server's own that sees the shared model store.

    Every `bentoml serve` empties $BENTOML_HOME/prometheus_multiproc_dir when it starts
    (bentoml/serving.py, ensure_prometheus_dir), so a second server on the same home silently wipes
    the first one's metrics: its /metrics turns empty. Other jobs on this box start servers too.
    """
    home = Path(tempfile.mkdtemp(prefix="testkit-bentoml-home-"))
    (home / "models").symlink_to(Path(shared_home).resolve() / "models")
    return home


def environment(changes: dict[str, str | None], base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (this process's environment) with `changes` applied; a None value unsets the variable."""
    changed = {**(os.environ if base is None else base), **changes}
    return {name: value for name, value in changed.items() if value is not None}


def read_only_root(command: Sequence[str], *, cwd: Path | str, writable: Sequence[str] = ("/tmp",),
                   read_only: Sequence[str] = (), binds: dict[str, str] | None = None) -> list[str]:
    """`command` as a task with readonlyRootFilesystem runs it: in a private mount namespace
    (`unshare --mount`, root only) where / is read-only except the `writable` paths (the task's
    volumes), `read_only` paths stay read-only even inside them, and each `binds` source is shown
    read-only at its target. The command's own parts may hold {port} (Server replaces it)."""
    steps = ["mount --make-rprivate /"]
    for source, target in (binds or {}).items():
        steps += [f"mount --bind {shlex.quote(source)} {shlex.quote(target)}", f"mount -o remount,bind,ro {shlex.quote(target)}"]
    # A writable volume becomes a mount of its own, so it stays writable when / turns read-only
    # (not a fresh tmpfs: what is already there, a checkout or a store, stays visible).
    steps += [f"mount --bind {shlex.quote(path)} {shlex.quote(path)}" for path in writable]
    for path in read_only:
        steps += [f"mount --bind {shlex.quote(path)} {shlex.quote(path)}", f"mount -o remount,bind,ro {shlex.quote(path)}"]
    steps += ["mount -o remount,bind,ro /", f"cd {shlex.quote(str(cwd))}", "exec " + shlex.join(command)]
    return ["unshare", "--mount", "sh", "-c", " && ".join(steps)]


class Server:
    """A server process: `command` ({port} is replaced by a free port) run from `cwd` with `env` on top.

    With private_bentoml_home, it gets a BENTOML_HOME of its own whose models/ is the one its
    environment names (see private_home). Ready when GET `ready_path` answers 200.
    """

    ready_poll_seconds = 0.1

    def __init__(self, command: Sequence[str], *, name: str = "server", ready_path: str = "/readyz",
                 env: dict[str, str | None] | None = None, cwd: Path = REPO, private_bentoml_home: bool = False,
                 metrics_path: str | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.ready_path = ready_path
        self.env = dict(env or {})
        self.cwd = cwd
        self.private_bentoml_home = private_bentoml_home
        self.metrics_path = metrics_path  # Prometheus text with bentoml_service_request_total, if the server has it
        self.port = 0  # picked by start(): a port checked free long before the process binds it may be taken by then
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._home: Path | None = None

    def __repr__(self) -> str:
        return f"Server({self.name!r}, {self.url})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 90) -> float:
        """Start it and (with `wait`) wait for the readiness URL to answer 200; returns seconds from exec to ready."""
        global STARTS, MOST_LIVE
        self.log_path = Path(tempfile.mkstemp(prefix=f"testkit-{self.name}-", suffix=".log")[1])
        env = environment(self.env)
        if self.private_bentoml_home:
            self._home = private_home(env.get("BENTOML_HOME") or str(Path(env.get("HOME") or Path.home()) / "bentoml"))
            env["BENTOML_HOME"] = str(self._home)
        self.port = free_port()
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        started = time.monotonic()
        self.proc = subprocess.Popen(command, cwd=self.cwd, env=env, stdout=self.log_path.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        with _lock:
            STARTS += 1
            LIVE.add(self)
            MOST_LIVE = max(MOST_LIVE, len(LIVE))
            live = len(LIVE)
        if os.environ.get(START_LOG_ENV):
            with open(os.environ[START_LOG_ENV], "a") as log:
                log.write(f"testkit: started {self.name} pid {self.proc.pid} port {self.port} live {live}: {shlex.join([Path(command[0]).name, *command[1:3]])}\n")
        if not wait:
            return 0.0
        try:
            self.wait_started(timeout)
        except ServerError:
            self.stop()
            raise
        return time.monotonic() - started

    def exited(self) -> str | None:
        """None while the process runs; once it exited, why (its code and the tail of its log)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"

    def wait_started(self, timeout: float) -> None:
        """What start() waits for: the readiness URL's 200."""
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90, ready: Callable[[int], bool] = lambda status: status == 200) -> tuple[int, bytes]:
        """Polls the readiness URL until its status is `ready` (by default: a 200); returns that (status, body)."""
        try:
            return http_ready(self.url + self.ready_path, timeout, self.ready_poll_seconds, alive=self.exited, ready=ready)
        except NotReady as exc:
            raise ServerError(f"{self.name} at {self.url} not ready: {exc}\n{self.log_tail() if self.exited() is None else ''}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log()[-chars:]

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM the server's process group (it runs in a session of its own), SIGKILL if it lingers; its exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
            code = self.proc.returncode
        with _lock:
            LIVE.discard(self)
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)  # removes the models link, not the store
            self._home = None
        return code


class BentoServer(Server):
    """`bentoml serve`: started when /readyz answers and every one of its `workers` HTTP workers listens."""

    def __init__(self, command: Sequence[str], *, workers: int, **options) -> None:
        super().__init__(command, **options)
        self.workers = workers

    def wait_started(self, timeout: float) -> None:
        super().wait_started(timeout)
        if self.workers > 1:
            self.wait_workers_listening(timeout)

    def wait_workers_listening(self, timeout: float = 90) -> None:
        """/readyz is answered by whichever worker accepts it; a test that spreads load over the
        workers (or counts them) needs every one accepting, which a loaded machine can delay by seconds."""
        def every_worker_listens() -> bool:
            pids = worker_pids(self)
            holders = set().union(*listeners(self.port))
            return len(pids) == self.workers and pids <= holders

        try:
            wait_until(every_worker_listens, timeout, f"{self.workers} workers listening", 0.2)
        except NotReady as exc:
            raise ServerError(f"{self.name} at {self.url}: {exc}: workers {worker_pids(self)}, "
                              f"listening sockets {listeners(self.port)}\n{self.log_tail()}") from None


def bentoml_serve(env: dict[str, str | None] | None = None, workers: int | None = None,
                  service: Sequence[str] = ("service:XGBoostService",), cwd: Path = REPO, name: str = "bentoml-serve",
                  private_bentoml_home: bool = True, server_class: type[BentoServer] = BentoServer) -> BentoServer:
    """`bentoml serve <service>` (by default service.py's, whatever it currently is) with `env` on top.

    `service=()` serves the bentofile.yaml in `cwd`. A private BENTOML_HOME by default (see private_home).
    `workers` sets XGB_WORKERS; without it the service runs its default, one per CPU.
    """
    env = {**({"XGB_WORKERS": str(workers)} if workers else {}), **(env or {})}
    count = int(environment(env).get("XGB_WORKERS") or 0) or os.cpu_count() or 1
    return server_class([BENTOML, "serve", *service, "--host", "127.0.0.1", "--port", "{port}"], name=name, env=env, cwd=cwd,
                        private_bentoml_home=private_bentoml_home, metrics_path="/metrics", workers=count)


def worker_pids(server: Server) -> set[int]:
    """The BentoML HTTP worker processes of a server."""
    out = subprocess.run(["pgrep", "-f", "-P", str(server.proc.pid), "_bentoml_impl.worker.service"], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def listeners(port: int) -> list[set[int]]:
    """The listening sockets on a port, each as the set of processes holding it."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return [{int(p) for p in re.findall(r"pid=(\d+)", line)} for line in out.splitlines() if line.strip()]
