"""Batch scoring on Spark: model_store/scoring.py's Scorer as a function over Arrow batches (mapInArrow).

The model goes to the executors once, as an exported bundle (model_store.bundle.export_bundle) in
a broadcast variable; each executor's Python worker loads it once and keeps it. model_store itself
is shipped as a zip (SparkContext.addPyFile) unless the executors already have it (an EMR image).
From a PySpark job:

    from model_store.score_spark import score_dataframe
    bundle = open("model.bundle", "rb").read()       # python -m model_store.score --export-model model.bundle
    scored = score_dataframe(spark.read.parquet("s3://bucket/in/"), bundle, id_column="customer_id")
    scored.filter("reject IS NULL").drop("reject").write.parquet("s3://bucket/out/")

Each output row is the input row (or its id column) and /predict's answer fields, plus `reject`:
null for a scored row, "field: reason" (the answer fields null) for a row /predict would refuse
("field: reason; field: reason" when several fields fail). A Spark partition has no line numbers:
a reject is found by its id column or values, not by a file row as in the local run's _rejects.csv.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import zipfile
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from .bundle import bundle_from_bytes
from .scoring import NUMBER, Scorer, ScoreError, explaining_scorer

REJECT_COLUMN = "reject"
_SCORERS: dict[tuple[str, str, str | None, bool], Scorer] = {}  # per executor Python worker: loaded once


def _scorer(bundle_bytes: bytes, tag: str, range_check: str, id_column: str | None, explain: bool) -> Scorer:
    key = (tag, range_check, id_column, explain)
    if key not in _SCORERS:
        _SCORERS[key] = explaining_scorer(bundle_from_bytes(bundle_bytes), range_check, id_column, explain)
    return _SCORERS[key]


def score_arrow(batches: Iterator[pa.RecordBatch], scorer: Scorer, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Each input batch's scored rows, then its rejected ones (answer fields null, `reject` set)."""
    for batch in batches:
        scored = scorer.score(batch)
        table = scored.table.append_column(REJECT_COLUMN, pa.nulls(scored.table.num_rows, pa.string()))
        yield from table.cast(schema).to_batches()
        if scored.rejects:
            reasons: dict[int, str] = {}
            for row, field, reason, _ in scored.rejects:  # every failing field of the row, as _rejects.csv lists them
                reasons[row - 1] = f"{reasons[row - 1]}; {field}: {reason}" if row - 1 in reasons else f"{field}: {reason}"
            rejected = batch.take(pa.array(sorted(reasons)))
            kept = [rejected.column(scorer.id_column)] if scorer.id_column else [_lenient(rejected.column(n), schema.field(n).type) for n in batch.schema.names]
            n = rejected.num_rows
            answers = [pa.nulls(n, f.type) for f in scorer.answer_fields]
            yield pa.RecordBatch.from_arrays([*kept, *answers, pa.array([reasons[i] for i in sorted(reasons)], pa.string())], schema=schema)


def _lenient(column: pa.Array, arrow_type: pa.DataType) -> pa.Array:
    """A rejected row's input value in the output's type; null where it is not one (`reject` names it)."""
    try:
        return column.cast(arrow_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        numbers = pc.fill_null(pc.match_substring_regex(column.cast(pa.string()), NUMBER), False)
        return pc.if_else(numbers, column.cast(pa.string()), pa.scalar(None, pa.string())).cast(arrow_type)


def ship_package(spark: Any, explain: bool = False) -> None:
    """model_store (and serving, whose Explainer --explain uses) as a zip on every executor's path
    (a no-op cost when they have it already)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # A SparkContext refuses a second file of the same name with other contents: one name per zip's contents
    path = os.path.join(tempfile.mkdtemp(prefix="model-store-"), "model_store_serving.zip" if explain else "model_store.zip")
    with zipfile.ZipFile(path, "w") as z:
        for package in ("model_store", "serving") if explain else ("model_store",):
            for name in sorted(os.listdir(os.path.join(root, package))):
                if name.endswith(".py"):
                    z.write(os.path.join(root, package, name), f"{package}/{name}")
    spark.sparkContext.addPyFile(path)


def score_dataframe(df: Any, bundle_bytes: bytes, *, range_check: str = "warn", id_column: str | None = None, explain: bool = False) -> Any:
    """A DataFrame of the model's features (and maybe an id column) -> the same rows scored (see the
    module doc); `explain` adds /explain's fields as the local run's --explain does."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    spark = df.sparkSession
    driver = explaining_scorer(bundle_from_bytes(bundle_bytes), range_check, id_column, explain)
    input_schema = to_arrow_schema(df.schema)
    driver.check_columns("the DataFrame", input_schema)
    out_schema = driver.output_schema(input_schema).append(pa.field(REJECT_COLUMN, pa.string()))
    ship_package(spark, explain)
    shipped = spark.sparkContext.broadcast(bundle_bytes)
    tag = driver.bundle.tag

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        yield from score_arrow(batches, _scorer(shipped.value, tag, range_check, id_column, explain), out_schema)

    return df.mapInArrow(score, from_arrow_schema(out_schema))


def read_input(spark: Any, uri: str) -> Any:
    """The CSV (header row, every column text: the Scorer checks it) or Parquet files at `uri`, as one DataFrame."""
    from .score import filesystem, input_files

    fs, path = filesystem(uri)
    files = input_files(fs, path)
    formats = {fmt for _, fmt, _ in files}
    if len(formats) > 1:
        raise ScoreError(f"{uri}: holds both CSV and Parquet files; Spark scores one format at a time")
    scheme = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    paths = [scheme + p if scheme else p for p, _, _ in files]
    if formats == {"csv"}:
        return spark.read.option("header", True).option("inferSchema", False).csv(paths)
    return spark.read.parquet(*paths)


def run_cli(args: argparse.Namespace) -> int:
    """`python -m model_store.score --spark`: read IN with Spark, write OUT (Parquet or CSV) and OUT/_rejects."""
    from pyspark import StorageLevel
    from pyspark.sql import SparkSession

    from .score import EXIT_TOO_MANY_REJECTS, load_model

    started = time.monotonic()
    bundle_bytes = load_model(args.model)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors' Python: this one, with pyarrow and xgboost
    # Local mode runs the executors inside the driver's JVM, whose default heap (1 GiB) is too small
    # for a few million rows in flight; a cluster's spark-submit settings win (getOrCreate keeps them).
    spark = SparkSession.builder.appName("model_store.score").config("spark.driver.memory", os.environ.get("XGB_SPARK_DRIVER_MEMORY", "3g")).getOrCreate()
    df = read_input(spark, args.input)
    scored = score_dataframe(df, bundle_bytes, range_check=args.range_check, id_column=args.id_column, explain=args.explain).persist(StorageLevel.MEMORY_AND_DISK)
    good = scored.filter(f"{REJECT_COLUMN} IS NULL").drop(REJECT_COLUMN)
    (good.write.mode("overwrite").option("header", True).csv(args.output) if args.format == "csv" else good.write.mode("overwrite").parquet(args.output))
    rejected = scored.filter(f"{REJECT_COLUMN} IS NOT NULL")
    rejected.write.mode("overwrite").parquet(args.output.rstrip("/") + "/_rejects")
    rows, rejects = scored.count(), rejected.count()
    scored.unpersist()
    seconds = time.monotonic() - started
    rate = rejects / rows if rows else 0.0
    print(f"scored {rows - rejects:,} of {rows:,} rows on Spark ({spark.sparkContext.master}) in {seconds:.1f} s "
          f"({rows / seconds:,.0f} rows/s); rejected {rejects:,} ({rate:.2%}) -> {args.output.rstrip('/')}/_rejects", flush=True)  # fmt: skip
    if rate > args.max_reject_rate:
        print(f"score: {rate:.2%} of the rows were rejected, more than --max-reject-rate {args.max_reject_rate:.2%}", file=sys.stderr)
        return EXIT_TOO_MANY_REJECTS
    return 0
