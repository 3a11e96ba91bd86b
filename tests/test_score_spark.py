"""Batch scoring on Spark (model_store/score_spark.py), in local mode with a real pyspark on Debian's JDK.

One SparkSession (local[2]) for the module. The answers must be byte for byte those of the local
run (model_store/score.py) and of a real `bentoml serve`'s /predict_batch.
"""

from __future__ import annotations

import os
import sys

import pyarrow.parquet as pq
import pytest

from model_store.bundle import bundle_from_bytes
from model_store.scoring import answer_fields, explain_fields
from testkit.scoring import answers, bad_csv, default_bundle, feature_files, output, score_cli, served_answers  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (SparkSession.builder.master("local[2]").appName("test_score_spark").config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2").getOrCreate())  # fmt: skip
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_answers_exactly_as_the_local_run_and_predict_batch(spark, live_server, default_bundle, feature_files, tmp_path):
    from model_store.score_spark import score_dataframe

    batch, csv_path, parquet_path = feature_files
    bundle_bytes = default_bundle.read_bytes()
    fields = [f.name for f in answer_fields(bundle_from_bytes(bundle_bytes))]
    local = score_cli("--input", str(parquet_path), "--output", str(tmp_path / "local"), "--model", str(default_bundle), "--id-column", "customer_id")
    assert local.returncode == 0, local.stderr
    expected = served_answers(live_server, batch)
    assert answers(output(tmp_path / "local"), fields) == expected
    for df in (spark.read.parquet(str(parquet_path)), spark.read.option("header", True).csv(str(csv_path))):
        scored = score_dataframe(df.repartition(3), bundle_bytes, id_column="customer_id").orderBy("customer_id").toArrow()
        assert scored.column("reject").null_count == scored.num_rows
        assert scored.column("customer_id").to_pylist() == [f"c{i:04d}" for i in range(len(batch))]
        assert answers(scored, fields) == expected, "Spark's answers differ from /predict_batch's"


def test_spark_explains_exactly_as_the_local_run(spark, default_bundle, feature_files, tmp_path):
    from model_store.score_spark import score_dataframe

    _, _, parquet_path = feature_files
    few = tmp_path / "few.parquet"  # TreeSHAP costs ~3 ms a row: a few rows are enough to compare
    pq.write_table(pq.read_table(parquet_path).slice(0, 40), few)
    bundle_bytes = default_bundle.read_bytes()
    bundle = bundle_from_bytes(bundle_bytes)
    fields = [f.name for f in answer_fields(bundle) + explain_fields(bundle.schema)]
    local = score_cli("--input", str(few), "--output", str(tmp_path / "local"), "--model", str(default_bundle), "--id-column", "customer_id", "--explain")
    assert local.returncode == 0, local.stderr
    expected = answers(output(tmp_path / "local"), fields)
    scored = score_dataframe(spark.read.parquet(str(few)).repartition(2), bundle_bytes, id_column="customer_id", explain=True)
    scored = scored.orderBy("customer_id").toArrow()
    assert scored.schema.names == ["customer_id", *fields, "reject"]
    assert answers(scored, fields) == expected, "Spark's explanations differ from the local run's"


def test_the_cli_on_spark_writes_the_scored_rows_and_the_rejects(spark, default_bundle, tmp_path, capsys):
    from model_store.score import main

    out = tmp_path / "out"
    code = main(["--input", str(bad_csv(tmp_path)), "--output", str(out), "--model", str(default_bundle), "--spark", "--range-check", "reject"])
    assert code == 1, "5 of 50 rows rejected is above the default --max-reject-rate 0"
    assert "scored 45 of 50 rows on Spark" in capsys.readouterr().out
    assert pq.read_table(out, ignore_prefixes=["_", "."]).num_rows == 45
    rejects = pq.read_table(out / "_rejects", ignore_prefixes=["_", "."]).column("reject").to_pylist()
    assert sorted(r.split(":")[0] for r in rejects) == ["feat1", "feat1", "feat3", "feat5", "feat6"]
    assert "feat1: value -7 is out of range: must be between 0 and 120" in rejects
    assert all(";" not in r for r in rejects), "each of these rows fails on one field"


def test_a_spark_reject_names_every_field_that_failed(default_bundle, tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from model_store.score_spark import REJECT_COLUMN, score_arrow
    from model_store.scoring import Scorer

    path = bad_csv(tmp_path)
    lines = path.read_text().splitlines()
    cells = lines[3].split(",")  # row 3 (feat1 'abc') loses feat3 too
    cells[2] = ""
    lines[3] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={n: pa.string() for n in lines[0].split(",")}, null_values=[""], strings_can_be_null=True))  # as Spark reads a CSV
    scorer = Scorer(bundle_from_bytes(default_bundle.read_bytes()), "reject")
    schema = scorer.output_schema(table.schema).append(pa.field(REJECT_COLUMN, pa.string()))
    scored = pa.Table.from_batches(list(score_arrow(table.to_batches(), scorer, schema)))
    rejects = [r for r in scored.column(REJECT_COLUMN).to_pylist() if r]
    assert len(rejects) == 5
    assert "feat1: 'abc' is not a finite number; feat3: 'feat3' is required" in rejects[0]
