"""Goal 7 of `make bench` (issue 22): what capturing every answered record costs.

    python -m loadtest.bench_capture [--rounds 3] [--goal-seconds 10]      # this goal alone (make bench-capture)

Two servers of the same model: capture off, and capture at 100 % to a local directory (the
writer's whole cost: Arrow tables, Parquet with zstd, files). /predict at 64 connections and
/predict_batch with 1,000 records at 4 connections, in back-to-back pairs of short rounds
(bench_servers.paired_rounds), each share the median of the pairs'. Goals: capture at 100 % keeps
at least 90 % of /predict's req/s and 85 % of /predict_batch's rows/s. Capture off is the service
as goal 1 measures it (the request path only tests `capture is not None`); compare goal 1 with the
previous bench.json for before/after. Also reported: Parquet bytes per captured record, from the
files once the server has stopped (its shutdown writes what is pending), and the records its
xgb_capture_dropped_total counted.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from .bench_servers import Server, interleaved, median_pair_ratio, our_service, paired_rounds

PREDICT_CONNECTIONS = 64
BATCH_CONNECTIONS = 4
BATCH_RECORDS = 1000
MIN_PREDICT_SHARE = 0.90
MIN_BATCH_SHARE = 0.85
WARMUP_SECONDS = 3
PAIRS_PER_ROUND = 3  # for each of the bench's --rounds: 3 pairs of a third of --goal-seconds each


def servers(capture_dir: Path) -> dict[str, Server]:
    return {
        "off": our_service(name="capture-off"),
        "on": our_service(env={"XGB_CAPTURE": "100", "XGB_CAPTURE_URI": str(capture_dir)}, name="capture-100"),
    }


def capture_counts(server: Server) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {name: sum(float(v) for v in re.findall(rf"^xgb_capture_{name}_total(?:{{[^}}]*}})? (\S+)$", text, re.M))
            for name in ("records", "bytes", "dropped")}  # fmt: skip


def measure(workdir: Path, bodies: dict[str, Path], rounds: int, seconds: float,
            closed_loop: Callable[..., dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
    """/predict @64 and /predict_batch x1000 @4, capture off and at 100 %, in back-to-back pairs
    (bench_servers.paired_rounds): the shares are the medians of the pairs' ratios."""
    group = servers(workdir / "captured")
    runs: dict[str, dict[str, list]] = {name: {"predict": [], "batch": []} for name in group}
    pairs, seconds = paired_rounds(rounds, seconds, PAIRS_PER_ROUND)
    log(f"goal 7: capture off vs 100 %: {pairs} pairs of {seconds:g} s rounds back to back of /predict at {PREDICT_CONNECTIONS} connections "
        f"and /predict_batch x{BATCH_RECORDS} at {BATCH_CONNECTIONS}")  # fmt: skip
    try:
        for server in group.values():
            server.start()
            closed_loop(server, bodies["single"], PREDICT_CONNECTIONS, WARMUP_SECONDS)  # warm-up, discarded
        for order in interleaved(group, pairs):
            for server in order:
                name = "off" if server is group["off"] else "on"
                runs[name]["predict"].append(closed_loop(server, bodies["single"], PREDICT_CONNECTIONS, seconds))
                batch = closed_loop(server, bodies["batch"], BATCH_CONNECTIONS, seconds, path="/predict_batch")
                batch["rows_per_s"] = round(batch["rps"] * BATCH_RECORDS)
                runs[name]["batch"].append(batch)
        dropped = capture_counts(group["on"])["dropped"]  # a full queue drops at once; the rest is written on SIGTERM
    finally:
        for server in group.values():
            server.stop()  # its shutdown writes every pending record: the files then hold them all
    files = list((workdir / "captured").rglob("*.parquet"))
    records = sum(pq.read_metadata(f).num_rows for f in files)
    on_disk = sum(f.stat().st_size for f in files)
    return {"predict_connections": PREDICT_CONNECTIONS, "batch_connections": BATCH_CONNECTIONS, "batch_records": BATCH_RECORDS, **runs,
            "captured_records": records, "dropped_records": dropped, "parquet_bytes": on_disk, "files": len(files),
            "bytes_per_record": round(on_disk / records, 1) if records else None}  # fmt: skip


def summary(capture: dict[str, Any]) -> dict[str, float]:
    """Median req/s and rows/s per mode, and capture's share of capture off (the median of the pairs' shares)."""
    med = {name: {"rps": statistics.median(r["rps"] for r in capture[name]["predict"]),
                  "rows_per_s": statistics.median(r["rows_per_s"] for r in capture[name]["batch"]),
                  "errors": sum(r["errors"] for r in capture[name]["predict"] + capture[name]["batch"])} for name in ("off", "on")}  # fmt: skip
    return {"predict_share": median_pair_ratio(capture["on"]["predict"], capture["off"]["predict"]),
            "batch_share": median_pair_ratio(capture["on"]["batch"], capture["off"]["batch"], "rows_per_s"), **med}  # fmt: skip


def goals(capture: dict[str, Any]) -> list[dict[str, Any]]:
    s = summary(capture)
    return [
        {"goal": f"7. capture 100 %: /predict @{capture['predict_connections']} conns req/s vs capture off",
         "value": f"{s['predict_share']:.0%} (median of {len(capture['on']['predict'])} pairs; medians {s['on']['rps']:.0f} / {s['off']['rps']:.0f})", "target": f">= {MIN_PREDICT_SHARE:.0%}, 0 errors",
         "met": s["predict_share"] >= MIN_PREDICT_SHARE and s["on"]["errors"] == 0},
        {"goal": f"7. capture 100 %: /predict_batch x{capture['batch_records']} rows/s vs capture off",
         "value": f"{s['batch_share']:.0%} (median of pairs; medians {s['on']['rows_per_s']:,.0f} / {s['off']['rows_per_s']:,.0f})", "target": f">= {MIN_BATCH_SHARE:.0%}",
         "met": s["batch_share"] >= MIN_BATCH_SHARE},
    ]  # fmt: skip


def markdown_row(capture: dict[str, Any]) -> str:
    """The README's (docs/performance.md's) row for this goal."""
    s = summary(capture)
    return (f"| 7. capture at 100 % vs off ({len(capture['on']['predict'])} back-to-back pairs; medians, and the median of the pairs' shares): `/predict` at {capture['predict_connections']} connections "
            f"req/s, `/predict_batch` ×{capture['batch_records']} rows/s; bytes per captured record | {s['on']['rps']:,.0f} vs {s['off']['rps']:,.0f} "
            f"(**{s['predict_share']:.0%}**), {s['on']['rows_per_s']:,.0f} vs {s['off']['rows_per_s']:,.0f} (**{s['batch_share']:.0%}**); "
            f"{capture['bytes_per_record']} B | | ≥ {MIN_PREDICT_SHARE:.0%}, ≥ {MIN_BATCH_SHARE:.0%} |")  # fmt: skip


def table(capture: dict[str, Any]) -> str:
    s = summary(capture)
    return "\n".join([
        f"capture ({len(capture['on']['predict'])} back-to-back pairs; medians, share = median of the pairs'): /predict @{capture['predict_connections']}  off {s['off']['rps']:.0f} req/s, "
        f"100 % {s['on']['rps']:.0f} req/s ({s['predict_share']:.0%});  /predict_batch x{capture['batch_records']}  off {s['off']['rows_per_s']:,.0f} rows/s, "
        f"100 % {s['on']['rows_per_s']:,.0f} rows/s ({s['batch_share']:.0%})",
        f"  {capture['captured_records']:,.0f} records captured in {capture['files']} files, {capture['bytes_per_record']} bytes per record, "
        f"{capture['dropped_records']:.0f} dropped",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """This goal alone, on the model in the store (for a quiet box: `make bench-capture`)."""
    from . import bench, bench_load
    from .bench_servers import ServerError
    from .traffic import ServedModel

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--goal-seconds", type=float, default=10)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xgb-bench-capture-") as workdir:
        probe = our_service()
        try:
            probe.start()
            model = ServedModel.fetch(probe.url)
        except ServerError as exc:
            print(f"bench: harness error: {exc}", file=sys.stderr)
            return bench.EXIT_HARNESS_ERROR
        finally:
            probe.stop()
        bodies = bench.write_bodies(Path(workdir), model)
        try:
            results = measure(Path(workdir), bodies, args.rounds, args.goal_seconds, bench.closed_loop, bench.log)
        except (ServerError, bench_load.GeneratorError) as exc:
            print(f"bench: harness error: {exc}", file=sys.stderr)
            return bench.EXIT_HARNESS_ERROR
    verdicts = goals(results)
    print(table(results))
    for v in verdicts:
        print(f"  [{'PASS' if v['met'] else 'FAIL'}] {v['goal']}: {v['value']} (target {v['target']})")
    if args.out:
        Path(args.out).write_text(json.dumps({"capture": results, "goals": verdicts}, indent=2) + "\n")
    return 0 if all(v["met"] for v in verdicts) else bench.EXIT_GOAL_MISSED


if __name__ == "__main__":
    sys.exit(main())
