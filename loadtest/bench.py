"""`make bench`: our service against the seed-style baseline, same box, same run (issue 3's goals).

    python -m loadtest.bench [--rounds 3] [--goal-seconds 10] [--sweep 1,4,16,64,256] [--out loadtest/results]

1. Warm start: start `bentoml serve` (model already in the store) and poll /readyz every 50 ms.
2. Start both servers on free ports, check they serve the same model, warm both up.
3. Goal 1: /predict at 64 keep-alive connections (wrk), interleaved ours/baseline, repeated.
4. Concurrency sweep 1..256 for both (the plot).
5. Goal 2: open loop, 1,000 req/s offered (hey), both (the goal applies to ours).
6. Goal 3: /predict_batch with 1,000 records per request (wrk), ours (the seed has no batch route).
7. Explanations (issue 13): the in-process single-core rate of XGBoost's pred_contribs on this box,
   /explain at 32 connections, then /predict at 32 connections while /explain is saturated at 32.
8. A candidate model (issue 17): /predict at 32 connections without one, in shadow mode and in canary
   mode (loadtest/bench_rollout.py).
9. Capture (issue 22): capture off vs 100 %, /predict at 64 and /predict_batch x1000 (loadtest/bench_capture.py;
   alone: `make bench-capture`).
10. Tracing (issue 21): /predict at 64 connections with tracing at the default rate and off
   (loadtest/bench_tracing.py); alone: `python -m loadtest.bench --only tracing`.
11. Batch scoring (issue 23, loadtest/bench_score.py): a 2M-row CSV -> Parquet, local; 500k rows on Spark;
   alone with `--only score` (writes bench_score.json).
12. Memory of each whole process tree after the load; results JSON + PNG; a table; exit 1 if a goal
   is missed, 2 if the harness itself failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from . import bench_capture, bench_load, bench_report, bench_rollout, bench_score, bench_tracing
from .bench_servers import REPO, Server, ServerError, baseline, interleaved, our_service
from .traffic import ServedModel

EXIT_GOAL_MISSED = 1
EXIT_HARNESS_ERROR = 2
BATCH_RECORDS = 1000
EXPLAIN_CONNECTIONS = 32
DISTINCT_BODIES = 200  # single records rotated by the wrk script, so no two neighbours are equal


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_bodies(workdir: Path, model: ServedModel) -> dict[str, Path]:
    """Records for the served model (for the default model: from its training distribution), as the
    files the generators read."""
    rng = np.random.default_rng(3)
    single = workdir / "records.jsonl"
    single.write_text("".join(json.dumps(r) + "\n" for r in model.sample_records(rng, DISTINCT_BODIES)))
    batch = workdir / "batches.jsonl"
    batch.write_text("".join(json.dumps({"instances": model.sample_records(rng, BATCH_RECORDS)}) + "\n" for _ in range(3)))
    example = workdir / "example.json"
    example.write_text(json.dumps(model.schema.example))
    return {"single": single, "batch": batch, "example": example}


def post_json(url: str, body: Any) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def same_model_check(servers: dict[str, Server], example: dict[str, Any]) -> dict[str, Any]:
    """Both servers must give the example the same answer, or the comparison is meaningless."""
    answers = {name: post_json(f"{s.url}/predict", example) for name, s in servers.items()}
    ours, base = answers["ours"], answers["baseline"]
    same = (
        ours["predicted_class"] == base["predicted_class"]
        and abs(ours["confidence"] - base["confidence"]) < 1e-4
        and ours["model_version"] == base["model_version"]
    )
    if not same:
        raise ServerError(f"ours and the baseline answer the seed's example differently: {answers}")
    return {"same_answer": same, "answers": answers}


def status_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float] | None:
    return {code: n - before.get(code, 0.0) for code, n in after.items() if n - before.get(code, 0.0)} if after else None


def closed_loop(server: Server, bodies: Path, connections: int, seconds: float, path: str = "/predict") -> dict[str, Any]:
    before = server.status_counts(path)
    result = bench_load.wrk(f"{server.url}{path}", bodies, connections, seconds, server.cpu_seconds)
    result.status_counts = status_delta(before, server.status_counts(path))
    log(f"  {server.name:<8} {connections:>3} conns: {result.rps:8.0f} req/s  p50 {result.latency_ms['p50']:6.1f} ms  "
        f"p99 {result.latency_ms['p99']:6.1f} ms  errors {result.errors}{_non_200(result.status_counts)}  (CPU of box: wrk {result.generator_cpu_share:.0%}, "
        f"server {result.server_cpu_share:.0%}, other jobs {result.background_cpu_share:.0%})")  # fmt: skip
    return result.as_dict()


def _non_200(counts: dict[str, float] | None) -> str:
    other = {code: int(n) for code, n in (counts or {}).items() if code != "200"}
    return f" {other}" if other else ""


def in_process_explain_rate(records_file: Path, seconds: float) -> dict[str, Any]:
    """Rows/s of XGBoost's exact pred_contribs on one core in this process, on the served model:
    what one core does with no HTTP, no JSON and no scheduling, in batches (its best case)."""
    from model_store import load_bundle
    from serving.contract import Contract
    from serving.explain import Explainer
    from serving.settings import Settings

    bundle = load_bundle(nthread=1)
    explainer = Explainer(bundle, Contract(bundle.schema, Settings()))
    records = [json.loads(line) for line in records_file.read_text().splitlines()]
    data = explainer.matrix(bundle.encode(records))
    rows, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        bundle.booster.predict(data, pred_contribs=True, validate_features=False)
        rows += len(records)
    elapsed = time.perf_counter() - started
    return {"rows_per_s": round(rows / elapsed, 1), "rows_per_call": len(records), "seconds": round(elapsed, 2), "model": bundle.tag}


def explanations(server: Server, bodies: dict[str, Path], seconds: float) -> dict[str, Any]:
    """Goal 5: /explain throughput against one core's pred_contribs, and /predict beside a saturated /explain."""
    log(f"goal 5: in-process pred_contribs on one core, {seconds:g} s")
    in_process = in_process_explain_rate(bodies["single"], seconds)
    log(f"  {in_process['rows_per_s']:.0f} rows/s ({in_process['rows_per_call']} rows per call)")
    log(f"goal 5: /explain at {EXPLAIN_CONNECTIONS} connections, {seconds:g} s")
    alone = closed_loop(server, bodies["single"], EXPLAIN_CONNECTIONS, seconds, path="/explain")
    log(f"goal 5: /predict at {EXPLAIN_CONNECTIONS} connections while /explain is saturated at {EXPLAIN_CONNECTIONS}, {seconds:g} s")
    with ThreadPoolExecutor(1) as background:
        # /explain starts first and ends after /predict: /predict is measured under explain load throughout.
        explain = background.submit(closed_loop, server, bodies["single"], EXPLAIN_CONNECTIONS, seconds + 3, "/explain")
        time.sleep(1.5)
        predict = closed_loop(server, bodies["single"], EXPLAIN_CONNECTIONS, seconds)
        explain_under_load = explain.result()
    return {"in_process": in_process, "explain_alone": alone, "predict_under_explain": predict, "explain_beside_predict": explain_under_load,
            "ratio": round(alone["rps"] / in_process["rows_per_s"], 3)}  # fmt: skip


def wait_for_quiet_box(max_wait: float, busy_limit: float = 0.25) -> float:
    """Wait (up to max_wait s) until other jobs leave the box mostly idle; returns the last busy share.

    The benchmark shares the cores with whatever else runs here (tests, builds); starting while the
    box is busy makes every number pessimistic. Each run also records the other jobs' CPU share.
    """
    deadline = time.monotonic() + max_wait
    while True:
        busy = psutil.cpu_percent(interval=3) / 100
        if busy <= busy_limit or time.monotonic() >= deadline:
            if busy > busy_limit:
                log(f"WARNING: the box is still {busy:.0%} busy with other work; numbers will be pessimistic")
            return busy
        log(f"box {busy:.0%} busy with other work; waiting for it to settle below {busy_limit:.0%}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xgb-bench-") as workdir:
        return run_in(args, Path(workdir))


def run_in(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": bench_report.machine_info(), "settings": vars(args)}
    results["machine"]["busy_share_before_start"] = round(wait_for_quiet_box(args.quiet_wait), 3)

    log(f"warm start: {args.warm_starts} start(s) of `bentoml serve` to /readyz 200 (model already in the store)")
    starts = []
    for i in range(args.warm_starts):
        probe = our_service()
        try:
            starts.append(round(probe.start(), 3))
        finally:
            probe.stop()
        log(f"  start {i + 1}: {starts[-1]:.2f} s")

    servers = {"ours": our_service(), "baseline": baseline()}
    try:
        for name, server in servers.items():
            seconds = server.start()
            log(f"{name} ready at {server.url} in {seconds:.2f} s")
            if name == "ours":
                starts.append(round(seconds, 3))
        results["warm_start"] = {"ours_seconds": starts, "poll_interval_s": 0.05}
        model = ServedModel.fetch(servers["ours"].url)  # the bodies are the served model's
        bodies = write_bodies(workdir, model)
        results["same_model"] = same_model_check(servers, model.schema.example)

        log(f"warm-up: {args.warmup_seconds:g} s at 64 connections each (discarded)")
        for server in servers.values():
            bench_load.wrk(f"{server.url}/predict", bodies["single"], 64, args.warmup_seconds)

        log(f"goal 1: /predict at 64 connections, {args.rounds} interleaved round(s) of {args.goal_seconds:g} s")
        closed: dict[str, list] = {name: [] for name in servers}
        for order in interleaved(servers, args.rounds):
            for server in order:
                closed[server.name].append(closed_loop(server, bodies["single"], 64, args.goal_seconds))
        results["closed_loop_64"] = closed

        log(f"concurrency sweep {args.sweep}, {args.sweep_seconds:g} s each")
        sweep: dict[str, list] = {name: [] for name in servers}
        for i, connections in enumerate(args.sweep):
            for server in interleaved(servers, len(args.sweep))[i]:
                sweep[server.name].append(closed_loop(server, bodies["single"], connections, args.sweep_seconds))
        results["sweep"] = sweep

        log(f"goal 2: open loop, {args.open_rate:g} req/s offered, {args.rounds} interleaved round(s) of {args.goal_seconds:g} s "
            "(hey, 50 workers; each round opens new connections)")  # fmt: skip
        open_loop: dict[str, list] = {name: [] for name in servers}
        for order in interleaved(servers, args.rounds):
            for server in order:
                r = bench_load.hey(f"{server.url}/predict", bodies["example"], args.open_rate, args.goal_seconds,
                                   server_cpu_seconds=server.cpu_seconds)  # fmt: skip
                log(f"  {server.name:<8} achieved {r.rps:.0f} req/s  p50 {r.latency_ms['p50']:.1f} ms  p99 {r.latency_ms['p99']:.1f} ms  "
                    f"errors {r.errors}{_non_200(r.status_counts)}  (hey CPU {r.generator_cpu_share:.0%} of box)")  # fmt: skip
                open_loop[server.name].append(r.as_dict())
        results["open_loop"] = open_loop

        log(f"goal 3: /predict_batch with {BATCH_RECORDS} records per request, 4 connections, {args.rounds} round(s) of {args.goal_seconds:g} s")
        ours = servers["ours"]
        batch_rounds = []
        for _ in range(args.rounds):  # one 10 s run of large batches varies by +-20 % here: the median of rounds
            r = closed_loop(ours, bodies["batch"], 4, args.goal_seconds, path="/predict_batch")
            r["rows_per_s"] = round(r["rps"] * BATCH_RECORDS)
            log(f"  ours     {r['rows_per_s']:,} rows/s  p99 {r['latency_ms']['p99']:.1f} ms  errors {r['errors']}")
            batch_rounds.append(r)
        batch = sorted(batch_rounds, key=lambda r: r["rows_per_s"])[len(batch_rounds) // 2]
        batch["records_per_request"] = BATCH_RECORDS
        batch["rounds_rows_per_s"] = [r["rows_per_s"] for r in batch_rounds]
        batch["errors"] = sum(r["errors"] for r in batch_rounds)  # the goal's 0 errors holds for every round
        results["batch"] = {"ours": batch}

        results["explain"] = explanations(ours, bodies, args.goal_seconds)

        results["rollout"] = bench_rollout.measure(workdir, model.card["tag"], bodies["single"], args.rounds, args.goal_seconds, closed_loop, log)

        results["capture"] = bench_capture.measure(workdir, bodies, args.rounds, args.goal_seconds, closed_loop, log)
        results["tracing"] = bench_tracing.measure(bodies["single"], args.rounds, args.goal_seconds, closed_loop, log)

        results["memory"] = {name: s.memory() for name, s in servers.items()}
    finally:
        for server in servers.values():
            server.stop()

    explain = results["explain"]
    runs = [r for group in (*closed.values(), *sweep.values(), *open_loop.values()) for r in group] + batch_rounds
    runs += [explain["explain_alone"], explain["predict_under_explain"], explain["explain_beside_predict"]]
    runs += [r for mode, _ in bench_report.ROLLOUT_MODES for r in results["rollout"][mode]]
    runs += [r for mode in ("off", "on") for route in ("predict", "batch") for r in results["capture"][mode][route]]
    for key in ("generator_cpu_share", "background_cpu_share"):
        shares = [r[key] for r in runs]
        results[key] = {"mean": round(statistics.mean(shares), 4), "max": round(max(shares), 4)}
    results["score"] = bench_score.measure(args.score_rows, args.spark_rows, log)
    results["capacity"] = bench_report.capacity(results)
    results["goals"] = bench_report.evaluate(results) + bench_score.goals(results["score"])
    results["all_goals_met"] = all(v["met"] for v in results["goals"])
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "loadtest" / "results"), help="directory for bench.json and bench.png")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the 64-connection and open-loop runs")
    p.add_argument("--goal-seconds", type=float, default=10, help="length of each goal run")
    p.add_argument("--sweep", type=lambda s: [int(c) for c in s.split(",")], default=[1, 4, 16, 64, 256], help="connection counts")
    p.add_argument("--sweep-seconds", type=float, default=5, help="length of each sweep run")
    p.add_argument("--warmup-seconds", type=float, default=5)
    p.add_argument("--open-rate", type=float, default=1000, help="offered req/s of the open-loop run")
    p.add_argument("--quiet-wait", type=float, default=120, help="max seconds to wait for other jobs to leave the box idle")
    p.add_argument("--warm-starts", type=int, default=2, help="extra measured starts before the main one")
    p.add_argument("--only", choices=["tracing", "score"],
                   help="run one goal alone (writes bench_<goal>.json): tracing (loadtest/bench_tracing.py), score = batch scoring (loadtest/bench_score.py)")
    p.add_argument("--score-rows", type=int, default=2_000_000, help="rows of the batch-scoring CSV")
    p.add_argument("--spark-rows", type=int, default=500_000, help="rows scored on Spark local mode (0: no Spark run)")
    return p.parse_args(argv)


def run_tracing_only(args: argparse.Namespace) -> int:
    """Goal 7 alone, for a quiet box: its two servers, the same rounds and seconds as the full run."""
    wait_for_quiet_box(args.quiet_wait)
    with tempfile.TemporaryDirectory(prefix="xgb-bench-") as workdir:
        probe = our_service()
        try:
            probe.start()
            bodies = write_bodies(Path(workdir), ServedModel.fetch(probe.url))
        finally:
            probe.stop()
        result = bench_tracing.measure(bodies["single"], args.rounds, args.goal_seconds, closed_loop, log)
    result["goals"] = bench_tracing.goals(result)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_tracing.json").write_text(json.dumps(result, indent=2) + "\n")
    for goal in result["goals"]:
        log(f"{goal['goal']}: {goal['value']} (target {goal['target']}) {'met' if goal['met'] else 'MISSED'}")
    return 0 if all(g["met"] for g in result["goals"]) else EXIT_GOAL_MISSED


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only == "tracing":
        try:
            return run_tracing_only(args)
        except (ServerError, bench_load.GeneratorError) as exc:
            print(f"bench: harness error: {exc}", file=sys.stderr)
            return EXIT_HARNESS_ERROR
    if args.only == "score":
        return only_score(args)
    started = time.monotonic()
    try:
        results = run(args)
    except (ServerError, bench_load.GeneratorError) as exc:
        print(f"bench: harness error: {exc}", file=sys.stderr)
        return EXIT_HARNESS_ERROR
    results["bench_seconds"] = round(time.monotonic() - started, 1)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    bench_report.plot(results, out_dir / "bench.png")
    print(bench_report.table(results))
    print(bench_score.table(results["score"]))
    log(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.png'} ({results['bench_seconds']:.0f} s)")
    return 0 if results["all_goals_met"] else EXIT_GOAL_MISSED


def only_score(args: argparse.Namespace) -> int:
    """`--only score`: the batch-scoring goal alone, on a quiet box, into bench_score.json."""
    results: dict[str, Any] = {"machine": bench_report.machine_info(), "settings": vars(args)}
    results["machine"]["busy_share_before_start"] = round(wait_for_quiet_box(args.quiet_wait), 3)
    try:
        results["score"] = bench_score.measure(args.score_rows, args.spark_rows, log)
    except RuntimeError as exc:
        print(f"bench: harness error: {exc}", file=sys.stderr)
        return EXIT_HARNESS_ERROR
    results["goals"] = bench_score.goals(results["score"])
    results["all_goals_met"] = all(v["met"] for v in results["goals"])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_score.json").write_text(json.dumps(results, indent=2) + "\n")
    print(bench_score.table(results["score"]))
    for g in results["goals"]:
        print(f"  {'met ' if g['met'] else 'MISS'}  {g['goal']}: {g['value']:,} (target {g['target']})")
    return 0 if results["all_goals_met"] else EXIT_GOAL_MISSED


if __name__ == "__main__":
    sys.exit(main())
