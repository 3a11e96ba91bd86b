"""`make bench-alternatives`: the API service + batched model service design, measured.

    python -m loadtest.alternatives.bench_depends [--seconds 10] [--out loadtest/results]

Runs the same wrk load (/predict, 32 and 64 keep-alive connections) against:
  depends-default  loadtest/alternatives/depends_service.py as BentoML configures it by default
  depends-fixed    the same with DEPENDS_SESSION_FIX=1 (the dependency client's session is never recycled)
  ours             service:XGBoostService (one service, the fast path into BentoML's batching)
and records req/s, p99, HTTP and socket errors seen by wrk, the errors in each server's log (aiohttp
ServerDisconnectedError and friends, raised in the API worker when its call to the model service
dies; CancelledError when the model service's batch dispatcher sheds a call), the model service's
mean adaptive batch size, and what was found (FINDINGS). Writes alternatives.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from loadtest import bench_load
from loadtest.bench import log, status_delta, write_bodies
from loadtest.bench_report import machine_info
from loadtest.bench_servers import REPO, VENV_BIN, Server, ServerError, our_service

CONNECTIONS = (32, 64)
# Exceptions the API worker logs when its HTTP call to the dependency dies mid-flight.
CONNECTION_ERRORS = ("ServerDisconnectedError", "ClientConnectionResetError", "ClientOSError", "ClientConnectorError")
# The model service's batch dispatcher cancelling a queued call it cannot serve within max_latency_ms (a 503).
SHED = "CancelledError"
FINDINGS = {
    "cause": (
        "BentoML 1.4.40's client to a dependency (_bentoml_impl/client/proxy2.py, SessionManager.get_session) "
        "replaces its aiohttp ClientSession after runner_connection.max_requests requests (default 100) or "
        "max_age seconds (default 300) and awaits close() on the old session while other coroutines of the "
        "same worker still have requests in flight on it. Closing the session closes its connector and every "
        "pooled connection, so those in-flight calls fail with aiohttp ServerDisconnectedError / "
        "ClientConnectionResetError ('Cannot write to closing transport') and the API answers 500. Under 64 "
        "connections a worker passes 100 requests every few tens of milliseconds, so this happens constantly; "
        "each refresh also throws away the keep-alive pool and reconnects."
    ),
    "fix": (
        "Set runner_connection on the dependency service so the session is never recycled under load: "
        "@bentoml.service(runner_connection={'max_requests': 10**9, 'max_age': 1e9}) (the client reads the "
        "dependency's own config). Zero errors afterwards; no retries needed."
    ),
    "throughput": (
        "Even without the drops the design is slow: py-spy on the model service under 64 connections shows one "
        "process at 100% CPU, spent on BentoML's per-request HTTP path (OpenTelemetry span attributes, "
        "Prometheus labels, ASGI middleware, pickle serde) with ~3% in XGBoost. Adaptive batching batches the "
        "model call, not the per-request cost in front of it, and every single-record call pays that cost twice "
        "(API worker, then model worker), the second time in the one model process that all traffic funnels "
        "through. Under that saturation the queue wait reaches max_latency_ms and BentoML's CorkDispatcher "
        "cancels the oldest calls (CancelledError -> 503 ServiceUnavailable -> the API answers 500): shedding, "
        "not dropped connections."
    ),
    "ruled_out": (
        "max_runner_connections (default 16) is only read by the legacy Runner client "
        "(bentoml/_internal/runner/runner_handle/remote.py), not by the 1.4 bentoml.depends client, whose "
        "aiohttp connector keeps its default limit of 100 connections; uvicorn's "
        "timeout_keep_alive (5 s) only closes idle connections, which cannot explain failures under "
        "continuous load; the model service itself logs no connection errors: the connections are torn down "
        "by the client."
    ),
}


def depends_server(fixed: bool) -> Server:
    return Server(
        name="depends-fixed" if fixed else "depends-default",
        command=[str(VENV_BIN / "bentoml"), "serve", "loadtest.alternatives.depends_service:DependsApi",
                 "--host", "127.0.0.1", "--port", "{port}"],  # fmt: skip
        ready_path="/readyz",
        env={"DEPENDS_SESSION_FIX": "1" if fixed else "0"},
        metrics_path="/metrics",
        private_bentoml_home=True,
    )


def log_errors(text: str) -> dict[str, int]:
    return {name: len(re.findall(rf"\b{name}\b", text)) for name in (*CONNECTION_ERRORS, SHED)}


def connection_errors(counts: dict[str, int]) -> int:
    return sum(counts[name] for name in CONNECTION_ERRORS)


def mean_batch_size(url: str) -> float | None:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    sums = re.findall(r'^bentoml_service_adaptive_batch_size_sum\{[^}]*method_name="predict_rows"[^}]*\} (\S+)', text, re.M)
    counts = re.findall(r'^bentoml_service_adaptive_batch_size_count\{[^}]*method_name="predict_rows"[^}]*\} (\S+)', text, re.M)
    total = sum(map(float, counts))
    return round(sum(map(float, sums)) / total, 2) if total else None


def measure(server: Server, bodies: Path, seconds: float) -> dict[str, Any]:
    ready = server.start()
    log(f"{server.name} ready in {ready:.1f} s; warm-up 3 s")
    try:
        bench_load.wrk(f"{server.url}/predict", bodies, 16, 3)
        runs = []
        for connections in CONNECTIONS:
            log_before = len(server.log_tail(chars=10**9))
            statuses_before = server.status_counts()
            r = bench_load.wrk(f"{server.url}/predict", bodies, connections, seconds, server.cpu_seconds).as_dict()
            r["status_counts"] = status_delta(statuses_before, server.status_counts())
            r["server_log_errors"] = log_errors(server.log_tail(chars=10**9)[log_before:])
            log(f"  {server.name:<16}{connections:>3} conns: {r['rps']:7.0f} req/s  p99 {r['latency_ms']['p99']:7.1f} ms  "
                f"non-2xx {r['non_2xx']} {r['status_counts']}  socket {sum(r['socket_errors'].values())}  log {r['server_log_errors']}")  # fmt: skip
            runs.append(r)
        return {"ready_seconds": round(ready, 2), "runs": runs, "mean_adaptive_batch_size": mean_batch_size(server.url), "memory": server.memory()}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--out", default=str(REPO / "loadtest" / "results"))
    args = p.parse_args(argv)
    bodies = write_bodies(Path(tempfile.mkdtemp(prefix="xgb-bench-alt-")))["single"]
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine_info(), "seconds_per_run": args.seconds, "designs": {}}
    try:
        for server in (depends_server(fixed=False), depends_server(fixed=True), our_service()):
            results["designs"][server.name] = measure(server, bodies, args.seconds)
    except (ServerError, bench_load.GeneratorError) as exc:
        print(f"bench-alternatives: harness error: {exc}", file=sys.stderr)
        return 2
    results["findings"] = FINDINGS
    results["bench_seconds"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "alternatives.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'design':<18}{'conns':>6}{'req/s':>9}{'p99 ms':>9}{'non-2xx':>9}{'socket':>8}{'conn. errors':>14}{'shed':>6}{'batch':>7}")
    for name, d in results["designs"].items():
        for r in d["runs"]:
            print(f"{name:<18}{r['connections']:>6}{r['rps']:>9.0f}{r['latency_ms']['p99']:>9.1f}{r['non_2xx']:>9}"
                  f"{sum(r['socket_errors'].values()):>8}{connection_errors(r['server_log_errors']):>14}{r['server_log_errors'][SHED]:>6}"
                  f"{d['mean_adaptive_batch_size'] or '-':>7}")  # fmt: skip
    log(f"wrote {out / 'alternatives.json'} ({results['bench_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
