"""Running the load generators (wrk, hey) and reading their output into one result shape.

wrk drives the closed-loop runs (N keep-alive connections, each sending as fast as answers come
back); its Lua script (bench_post.lua) prints a machine-readable summary line. hey drives the
open-loop run: -c workers each limited to -q requests per second, so the offered rate is c*q.

Every run also records how much CPU the generator itself burned (from the kernel's rusage of the
finished process) and how much the server's process tree used, as shares of the whole box: the
generator shares the box's cores with the server, so a generator near saturation would cap the
numbers it reports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil

LUA_SCRIPT = Path(__file__).with_name("bench_post.lua")
WRK_TIMEOUT = "30s"  # long enough that slow answers are measured as latency, not dropped as timeouts
_WRK_MARKER = "BENCH_JSON "


class GeneratorError(RuntimeError):
    """The load generator failed or printed something this module cannot read."""


@dataclasses.dataclass
class LoadResult:
    tool: str
    url: str
    connections: int
    seconds: float  # measured by the generator
    requests: int  # completed responses, any status
    ok: int  # 2xx responses
    non_2xx: int
    socket_errors: dict[str, int]  # connect/read/write/timeout (wrk) or per-message counts (hey)
    rps: float  # completed 2xx responses per second
    latency_ms: dict[str, float]  # p50, p90, p99 (+ max, mean where the tool gives them)
    offered_rps: float | None = None  # open loop only
    generator_cpu_seconds: float = 0.0
    generator_cpu_share: float = 0.0  # of the whole box (all cores)
    server_cpu_share: float | None = None  # of the whole box, the server's process tree
    background_cpu_share: float | None = None  # of the whole box, everything else (other jobs on the box)
    status_counts: dict[str, float] | None = None  # per HTTP status: hey's own; for wrk, the server's /metrics

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "errors": self.errors}


def parse_wrk(stdout: str) -> dict[str, Any]:
    """The summary line bench_post.lua's done() prints, checked against wrk's own text."""
    lines = [line for line in stdout.splitlines() if line.startswith(_WRK_MARKER)]
    if len(lines) != 1:
        raise GeneratorError(f"wrk printed {len(lines)} summary lines (expected 1); output:\n{stdout[-2000:]}")
    summary = json.loads(lines[0][len(_WRK_MARKER) :])
    # wrk's own "N requests in Xs" line: the Lua summary must agree with it.
    text = re.search(r"^\s*(\d+) requests in ", stdout, re.MULTILINE)
    if text is None or int(text.group(1)) != summary["requests"]:
        raise GeneratorError(f"wrk's text and Lua summary disagree on the request count:\n{stdout[-2000:]}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", stdout)
    summary["non_2xx_or_3xx"] = int(non_2xx.group(1)) if non_2xx else 0
    return summary


def wrk_result(url: str, connections: int, summary: dict[str, Any]) -> LoadResult:
    errors = summary["errors"]
    seconds = summary["duration_us"] / 1e6
    # wrk counts 4xx/5xx in errors.status and also prints 3xx in "Non-2xx or 3xx"; take the larger.
    non_2xx = max(errors["status"], summary["non_2xx_or_3xx"])
    ok = summary["requests"] - non_2xx
    lat = summary["latency_us"]
    return LoadResult(
        tool="wrk",
        url=url,
        connections=connections,
        seconds=seconds,
        requests=summary["requests"],
        ok=ok,
        non_2xx=non_2xx,
        socket_errors={k: errors[k] for k in ("connect", "read", "write", "timeout")},
        rps=ok / seconds if seconds else 0.0,
        latency_ms={k: lat[k] / 1000 for k in ("p50", "p90", "p99", "p99_9", "max", "mean")},
    )


_HEY_SECONDS = re.compile(r"^\s*Total:\s*([\d.]+) secs", re.MULTILINE)
_HEY_PERCENTILE = re.compile(r"^\s*(\d+)%+ in ([\d.]+) secs", re.MULTILINE)
_HEY_STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses", re.MULTILINE)
_HEY_ERROR = re.compile(r"^\s*\[(\d+)\]\s+(.+)$", re.MULTILINE)


def parse_hey(stdout: str) -> dict[str, Any]:
    """hey's text summary: total seconds, latency percentiles, status codes, error messages."""
    seconds = _HEY_SECONDS.search(stdout)
    if seconds is None:
        raise GeneratorError(f"no 'Total: ... secs' line in hey's output:\n{stdout[-2000:]}")
    statuses = {int(code): int(n) for code, n in _HEY_STATUS.findall(stdout)}
    errors_section = stdout.split("Error distribution:", 1)[1] if "Error distribution:" in stdout else ""
    errors = {msg.strip(): int(n) for n, msg in _HEY_ERROR.findall(errors_section)}
    percentiles = {int(p): float(s) * 1000 for p, s in _HEY_PERCENTILE.findall(stdout)}
    return {"seconds": float(seconds.group(1)), "statuses": statuses, "errors": errors, "percentiles_ms": percentiles}


def hey_result(url: str, workers: int, offered_rps: float, summary: dict[str, Any]) -> LoadResult:
    statuses = summary["statuses"]
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    requests = sum(statuses.values())
    pct = summary["percentiles_ms"]
    return LoadResult(
        tool="hey",
        url=url,
        connections=workers,
        seconds=summary["seconds"],
        requests=requests,
        ok=ok,
        non_2xx=requests - ok,
        socket_errors=summary["errors"],
        rps=ok / summary["seconds"] if summary["seconds"] else 0.0,
        latency_ms={"p50": pct.get(50, float("nan")), "p90": pct.get(90, float("nan")), "p99": pct.get(99, float("nan"))},
        offered_rps=offered_rps,
        status_counts={str(code): n for code, n in statuses.items()},
    )


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole box has spent busy since boot (all cores)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


@dataclasses.dataclass
class CpuUse:
    wall: float
    generator: float
    server: float | None
    box: float  # busy CPU seconds of the whole box during the run


def run_generator(cmd: list[str], server_cpu_seconds: Callable[[], float] | None = None) -> tuple[str, CpuUse]:
    """Run a generator to completion: its stdout, and the CPU it, the server and the whole box used."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        server_before = server_cpu_seconds() if server_cpu_seconds else None
        box_before = _busy_cpu_seconds()
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        # wait4 reaps the process and hands back its own rusage: the generator's exact CPU time.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        box_used = _busy_cpu_seconds() - box_before
        server_used = server_cpu_seconds() - server_before if server_cpu_seconds and server_before is not None else None
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise GeneratorError(f"{cmd[0]} exited with {proc.returncode}: {stderr.strip()[-2000:]}")
    return stdout, CpuUse(wall, usage.ru_utime + usage.ru_stime, server_used, box_used)


def _shares(result: LoadResult, cpu: CpuUse) -> LoadResult:
    box = cpu.wall * (os.cpu_count() or 1)
    result.generator_cpu_seconds = round(cpu.generator, 3)
    result.generator_cpu_share = round(cpu.generator / box, 4)
    if cpu.server is not None:
        result.server_cpu_share = round(cpu.server / box, 4)
        result.background_cpu_share = round(max(0.0, cpu.box - cpu.server - cpu.generator) / box, 4)
    return result


def wrk(url: str, bodies: Path, connections: int, seconds: float, server_cpu_seconds: Callable[[], float] | None = None) -> LoadResult:
    """Closed loop: `connections` keep-alive connections for `seconds`, bodies round-robin."""
    threads = max(1, min(os.cpu_count() or 1, connections))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", WRK_TIMEOUT,
           "-s", str(LUA_SCRIPT), url, "--", str(bodies)]  # fmt: skip
    stdout, cpu = run_generator(cmd, server_cpu_seconds)
    return _shares(wrk_result(url, connections, parse_wrk(stdout)), cpu)


def hey(url: str, body: Path, rate: float, seconds: float, workers: int = 50, server_cpu_seconds: Callable[[], float] | None = None) -> LoadResult:
    """Open loop at `rate` req/s offered: hey's -q is per worker, so each of `workers` sends rate/workers."""
    per_worker = rate / workers
    cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(workers), "-q", f"{per_worker:g}", "-m", "POST",
           "-T", "application/json", "-D", str(body), url]  # fmt: skip
    stdout, cpu = run_generator(cmd, server_cpu_seconds)
    return _shares(hey_result(url, workers, per_worker * workers, parse_hey(stdout)), cpu)
