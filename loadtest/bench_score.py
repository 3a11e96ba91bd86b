"""Batch scoring's goal (issue 23): a CSV of the default model's features -> Parquet, local processes
at >= MIN_ROWS_PER_S with the whole process tree's peak RSS <= MAX_RSS_BYTES; Spark local mode's rows/s
reported against it.

    python -m loadtest.bench --only score [--score-rows 2000000] [--spark-rows 500000]   (--spark-rows 0: no Spark run)

The CSV is generated from the default dataset's generator (model_store.dataset, so every value is
in range); both runs are the real CLI (`python -m model_store.score`, with and without --spark) as
subprocesses, their rows/s the CLI's own summary line (model load and worker start included), and
the memory the sum of the RSS of the CLI and all its children (workers, Spark's JVM), sampled.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv

from .bench_servers import REPO

MIN_ROWS_PER_S = 200_000
MAX_RSS_BYTES = 1 << 30
GENERATE_CHUNK_ROWS = 200_000
RATE = re.compile(r"in ([\d.]+) s \(([\d,]+) rows/s")


def write_features_csv(path: Path, rows: int, seed: int = 11) -> Path:
    """`rows` records of the default model's features as a CSV, written in chunks."""
    from model_store import dataset

    rng = np.random.default_rng(seed)
    with pacsv.CSVWriter(path, pa.schema([(n, pa.float64()) for n in dataset.FEATURE_NAMES])) as writer:
        for start in range(0, rows, GENERATE_CHUNK_ROWS):
            x = dataset.sample_features(rng, min(GENERATE_CHUNK_ROWS, rows - start))
            writer.write_table(pa.table({n: x[:, j] for j, n in enumerate(dataset.FEATURE_NAMES)}))
    return path


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def timed_cli(args: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Run the scoring CLI; its summary line's seconds and rows/s, the wall time and the tree's peak RSS."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "model_store.score", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        ps = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak = max(peak, tree_rss(ps))
            except psutil.Error:
                return
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    wall = time.monotonic() - started
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    match = RATE.search(summary)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"model_store.score {' '.join(args)} failed ({proc.returncode}): {err[-2000:]}")
    log(f"  {summary}")
    return {"seconds": float(match.group(1)), "rows_per_s": int(match.group(2).replace(",", "")), "wall_seconds": round(wall, 2),
            "peak_rss_bytes": peak}  # fmt: skip


def measure(rows: int, spark_rows: int, log: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="xgb-bench-score-") as workdir:
        work = Path(workdir)
        log(f"batch scoring: writing a {rows:,}-row CSV of the default model's features")
        features = write_features_csv(work / "features.csv", rows)
        bundle = work / "model.bundle"
        subprocess.run([sys.executable, "-m", "model_store.score", "--export-model", str(bundle)], cwd=REPO, check=True, capture_output=True)
        log(f"batch scoring: local processes, {rows:,} rows ({features.stat().st_size / 2**20:,.0f} MiB CSV) -> Parquet")
        local = timed_cli(["--input", str(features), "--output", str(work / "local"), "--model", str(bundle)], log)
        local["rows"] = rows
        spark = {"skipped": True, "rows_per_s": 0, "seconds": 0.0, "wall_seconds": 0.0, "peak_rss_bytes": 0}  # --spark-rows 0
        if spark_rows:
            spark = measure_spark(features if spark_rows == rows else write_features_csv(work / "spark.csv", spark_rows), work, bundle, log)
        spark["rows"] = spark_rows
    return {"local": local, "spark_local": spark}


def measure_spark(spark_input: Path, work: Path, bundle: Path, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"batch scoring: Spark local mode, {spark_input.name} -> Parquet")
    try:
        return timed_cli(["--input", str(spark_input), "--output", str(work / "spark"), "--model", str(bundle), "--spark"], log)
    except RuntimeError as exc:  # reported, not a goal: a failed Spark run must not lose the other goals' results
        log(f"batch scoring: Spark local mode failed: {str(exc).splitlines()[0][:300]}")
        return {"error": str(exc)[-2000:], "rows_per_s": 0, "seconds": 0.0, "wall_seconds": 0.0, "peak_rss_bytes": 0}


def goals(score: dict[str, Any]) -> list[dict[str, Any]]:
    local, spark = score["local"], score["spark_local"]
    rows = f"{local['rows'] / 1e6:g}M"
    return [
        {"goal": f"9. batch scoring {rows}-row CSV -> Parquet, local: rows/s", "value": local["rows_per_s"], "target": f">= {MIN_ROWS_PER_S:,}",
         "met": local["rows_per_s"] >= MIN_ROWS_PER_S},
        {"goal": f"9. batch scoring {rows}-row CSV, local: peak RSS MiB (all processes)", "value": round(local["peak_rss_bytes"] / 2**20),
         "target": f"<= {MAX_RSS_BYTES / 2**20:,.0f}", "met": local["peak_rss_bytes"] <= MAX_RSS_BYTES},
        {"goal": f"9. batch scoring on Spark local mode: rows/s (reported, vs {MIN_ROWS_PER_S:,} local)", "value": spark["rows_per_s"],
         "target": "skipped (--spark-rows 0)" if spark.get("skipped") else "reported" if "error" not in spark else "reported (the run failed: bench_score.json)",
         "met": True},
    ]  # fmt: skip


def table(score: dict[str, Any]) -> str:
    lines = ["", "batch scoring (python -m model_store.score), CSV -> Parquet:"]
    for label, r in (("local processes", score["local"]), ("Spark local mode", score["spark_local"])):
        if r.get("skipped"):
            lines.append(f"  {label:<18}skipped (--spark-rows 0)")
            continue
        lines.append(f"  {label:<18}{r['rows']:>11,} rows  {r['rows_per_s']:>9,} rows/s  {r['seconds']:>7.1f} s "
                     f"(wall {r['wall_seconds']:.1f} s)  peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MiB")  # fmt: skip
    return "\n".join(lines)
