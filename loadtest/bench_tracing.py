"""Goal 7 of `make bench` (issue 21): /predict at 64 connections (goal 1's load) with tracing at the
default rate (XGB_TRACE_SAMPLE unset: 1 %) within 5 % of tracing off (XGB_TRACE_SAMPLE=0).

Two servers, otherwise the same settings; the traced one exports to an OTLP receiver in this
process (loadtest/otlp_receiver.py), as the task's sidecar would take them. The cost looked for
(a few %) is far below this box's round-to-round swing (+-20 % between 10 s rounds of one server),
so instead of the medians of 3 long rounds the goal is the median of many short *pairs*: the two
servers back to back (which one goes first alternates), their ratio taken per pair, so the box's
drift cancels within each pair. Runs alone with `python -m loadtest.bench --only tracing`
(`make bench-tracing`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .bench_servers import interleaved, median_pair_ratio, our_service, paired_rounds
from .otlp_receiver import Receiver

CONNECTIONS = 64
WARMUP_SECONDS = 3
MAX_SLOWDOWN = 0.05
PAIRS_PER_ROUND = 4  # for each of the bench's --rounds: 4 pairs of a third of --goal-seconds each


def measure(bodies: Path, rounds: int, seconds: float, closed_loop: Callable[..., dict[str, Any]],
            log: Callable[[str], None]) -> dict[str, Any]:
    receiver = Receiver().start()
    group = {"off": our_service(env={"XGB_TRACE_SAMPLE": "0"}, name="trace-off"),
             "default": our_service(env={"XGB_TRACE_SAMPLE": "", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
                                    name="trace-1%")}
    pairs, pair_seconds = paired_rounds(rounds, seconds, PAIRS_PER_ROUND)
    log(f"goal 8: /predict at {CONNECTIONS} connections, tracing off and at the default rate, "
        f"{pairs} pairs of {pair_seconds:g} s rounds back to back")
    runs: dict[str, list] = {name: [] for name in group}
    try:
        for server in group.values():
            server.start()
            closed_loop(server, bodies, CONNECTIONS, WARMUP_SECONDS)  # warm-up, discarded
        for order in interleaved(group, pairs):
            for server in order:
                name = next(k for k, s in group.items() if s is server)
                runs[name].append(closed_loop(server, bodies, CONNECTIONS, pair_seconds))
        answered = sum(group["default"].status_counts("/predict").values())  # warm-up included, like the spans
    finally:
        for server in group.values():
            server.stop()
        receiver.stop()
    # Stopping the server flushed its last spans (the SDK's exit hook).
    traced_requests = len({s["trace_id"] for s in receiver.spans if s["name"] == "POST /predict"})
    return {"connections": CONNECTIONS, **runs, "traced_requests": traced_requests, "default_requests": answered}


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    relative = median_pair_ratio(result["default"], result["off"])
    errors = sum(r["errors"] for r in result["off"] + result["default"])
    return [
        {"goal": "8. /predict @64 conns, tracing 1 % / off: req/s (median of pairs)", "value": round(relative, 3),
         "target": f">= {1 - MAX_SLOWDOWN:.2f}", "met": relative >= 1 - MAX_SLOWDOWN and errors == 0},
        {"goal": "8. traced share of /predict (sampled roots)", "value": round(result["traced_requests"] / max(result["default_requests"], 1), 4),
         "target": "~0.01", "met": result["traced_requests"] > 0},
    ]  # fmt: skip
