"""The two servers under test, as real processes: our `bentoml serve` and the seed-style baseline.

They are testkit.servers.Server processes (the launcher the tests use too); the harness measures
start-up time to the first 200 from the readiness URL (polled every 50 ms), and the CPU time and
memory of the whole process tree (supervisor + workers) with psutil.
"""

from __future__ import annotations

import re
import statistics
import urllib.request
from typing import Any

import psutil

from testkit import servers
from testkit.servers import REPO, VENV_BIN, ServerError, free_port, private_home  # noqa: F401  (this module's API)

_REQUEST_TOTAL = re.compile(r"^bentoml_service_request_total\{([^}]*)\} (\S+)$", re.MULTILINE)


class Measured:
    """What the benchmarks measure of a server under test."""

    ready_poll_seconds = 0.05

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


class Server(Measured, servers.Server):
    """A server under test."""


class BentoServer(Measured, servers.BentoServer):
    """Our `bentoml serve` under test."""


def interleaved(servers: dict[str, Server], rounds: int) -> list[list[Server]]:
    """Each round starts one server later (two servers: they alternate who goes first), so drift on
    the box (heat, caches) hits all alike."""
    order = list(servers.values())
    return [order[r % len(order):] + order[:r % len(order)] for r in range(rounds)]


def paired_rounds(rounds: int, seconds: float, pairs_per_round: int) -> tuple[int, float]:
    """How many back-to-back pairs, each round a third of `seconds`, stand for `rounds` rounds:
    a cost of a few % is far below this box's swing between rounds of one server (+-20 % between
    10 s rounds), so two servers are compared in many short pairs whose drift cancels within each."""
    return pairs_per_round * max(rounds, 1), max(1.0, round(seconds / 3))


def median_pair_ratio(runs: list[dict[str, Any]], baseline: list[dict[str, Any]], key: str = "rps") -> float:
    """The median of run i's `key` over baseline run i's (the i-th runs of the two ran back to back)."""
    ratios = [r[key] / b[key] if b[key] else 0.0 for r, b in zip(runs, baseline)]
    return statistics.median(ratios) if ratios else 0.0


def our_service(workers: int | None = None, env: dict[str, str] | None = None, name: str = "ours") -> BentoServer:
    """`bentoml serve service:XGBoostService`, whatever service.py currently is, with `env` on top.
    start() waits until every worker listens: a round begun while one worker was still starting put
    every connection on the other."""
    return servers.bentoml_serve(env, workers, name=name, server_class=BentoServer)


def baseline(workers: int = 2) -> Server:
    """The seed-style FastAPI app: uvicorn with `workers` processes on uvloop + httptools."""
    return Server(
        name="baseline",
        command=[str(VENV_BIN / "uvicorn"), "loadtest.baseline.app:app", "--host", "127.0.0.1", "--port", "{port}",
                 "--workers", str(workers), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning"],  # fmt: skip
        ready_path="/health",
    )
