"""Batch scoring (model_store/score.py), local processes: the real CLI on real files.

Answers are compared byte for byte (orjson) with a real `bentoml serve`'s /predict_batch for the
default model, and with the service's own Contract in process for users' models with categories,
missing values, named classes and regression (trained into a private store of their own).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from model_store import dataset
from model_store.bundle import BOOSTER_FILE, bundle_from_bytes, read_manifest
from model_store.scoring import answer_fields
from testkit import byom_datasets
from testkit.scoring import ROWS, answers, bad_csv, default_bundle, feature_files, output, records, score_cli, served_answers  # noqa: F401  (fixtures)
from testkit.servers import REPO, environment

def test_local_scoring_answers_exactly_as_predict_batch(live_server, default_bundle, feature_files, tmp_path):
    batch, csv_path, parquet_path = feature_files
    fields = [f.name for f in answer_fields(bundle_from_bytes(default_bundle.read_bytes()))]
    expected = served_answers(live_server, batch)
    for path in (csv_path, parquet_path):
        out = tmp_path / path.suffix[1:]
        result = score_cli("--input", str(path), "--output", str(out), "--id-column", "customer_id", "--workers", "2")
        assert result.returncode == 0, result.stderr
        assert f"scored {ROWS:,} of {ROWS:,} rows" in result.stdout, result.stdout
        table = output(out)
        assert table.column("customer_id").to_pylist() == [f"c{i:04d}" for i in range(ROWS)], f"{path.name}: rows out of order or lost"
        assert table.schema.names == ["customer_id", *fields]
        assert answers(table, fields) == expected, f"{path.name}: answers differ from /predict_batch's"
        assert not list((out / "_tmp").iterdir()), "a temporary file was left behind"


def test_without_an_id_column_the_input_columns_are_written_with_the_answers(default_bundle, feature_files, tmp_path):
    batch, csv_path, _ = feature_files
    features = tmp_path / "features.csv"
    pacsv.write_csv(pacsv.read_csv(csv_path).drop_columns(["customer_id"]), features)
    result = score_cli("--input", str(features), "--output", str(tmp_path / "out"), "--model", str(default_bundle), "--format", "csv")
    assert result.returncode == 0, result.stderr
    (part,) = [p for p in (tmp_path / "out").glob("*.csv") if not p.name.startswith("_")]
    rows = list(csv.DictReader(part.open()))
    assert [float(rows[7][n]) for n in dataset.FEATURE_NAMES] == [batch[7][n] for n in dataset.FEATURE_NAMES]
    assert json.loads(rows[7]["probabilities"]) and rows[7]["model_version"] == bundle_from_bytes(default_bundle.read_bytes()).version


def test_bad_rows_go_to_the_rejects_file_with_their_row_field_and_reason(default_bundle, tmp_path):
    path = bad_csv(tmp_path)
    out = tmp_path / "out"
    result = score_cli("--input", str(path), "--output", str(out), "--model", str(default_bundle), "--range-check", "reject")
    assert result.returncode == 1, result.stderr
    assert "rejected 5 (10.00%)" in result.stdout and "--max-reject-rate" in result.stderr
    rejects = list(csv.DictReader((out / "_rejects.csv").open()))
    assert [(int(r["row"]), r["field"]) for r in rejects] == [(3, "feat1"), (9, "feat3"), (12, "feat5"), (20, "feat6"), (31, "feat1")]
    reasons = [r["reason"] for r in rejects]
    assert "'abc' is not a finite number" in reasons[0] and "required" in reasons[1] and "not a finite number" in reasons[2]
    assert reasons[4] == "value -7 is out of range: must be between 0 and 120"
    assert output(out).num_rows == 45
    # Allowed a 10 % reject rate, the same run succeeds; with the range check at "warn" the -7 is scored and counted.
    again = score_cli("--input", str(path), "--output", str(tmp_path / "warn"), "--model", str(default_bundle), "--max-reject-rate", "0.1")
    assert again.returncode == 0, again.stderr
    assert "rejected 4 (8.00%)" in again.stdout and "feat1 1" in again.stdout, again.stdout


def test_rows_are_numbered_within_their_file_when_a_csv_is_cut_into_parts(default_bundle, tmp_path):
    path = bad_csv(tmp_path)
    out = tmp_path / "out"
    result = score_cli("--input", str(path), "--output", str(out), "--model", str(default_bundle), "--part-bytes", "1500",
                       "--max-reject-rate", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    parts = int(result.stdout.split(" part(s)")[0].rsplit(" ", 1)[1])
    assert parts >= 5, result.stdout
    assert [int(r["row"]) for r in csv.DictReader((out / "_rejects.csv").open())] == [3, 9, 12, 20]
    assert output(out).num_rows == 46


def test_a_header_without_a_feature_or_with_unknown_columns_is_refused_before_scoring(default_bundle, tmp_path):
    path = tmp_path / "wrong.csv"
    names = [n for n in dataset.FEATURE_NAMES if n != "feat7"] + ["colour", "size"]
    path.write_text(",".join(names) + "\n" + ",".join(["1"] * len(names)) + "\n")
    result = score_cli("--input", str(path), "--output", str(tmp_path / "out"), "--model", str(default_bundle))
    assert result.returncode == 2
    assert "missing 'feat7'" in result.stderr and "unknown 'colour', 'size'" in result.stderr and str(path) in result.stderr
    assert not list((tmp_path / "out").glob("*.parquet")) if (tmp_path / "out").exists() else True


def test_a_corrupt_parquet_part_fails_with_its_path(default_bundle, feature_files, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(feature_files[2].read_bytes())
    (folder / "b.parquet").write_bytes(feature_files[2].read_bytes()[:-100])
    result = score_cli("--input", str(folder), "--output", str(tmp_path / "out"), "--model", str(default_bundle), "--id-column", "customer_id")
    assert result.returncode == 2
    assert str(folder / "b.parquet") in result.stderr and "Parquet" in result.stderr


def renamed(bundle: Path, tag: str, to: Path, booster: bytes | None = None) -> Path:
    """The same model under another tag: what a new model version looks like to the resume check
    (with `booster`, its booster file replaced by those bytes)."""
    with zipfile.ZipFile(bundle) as z:
        files = {name: z.read(name) for name in z.namelist()}
    manifest = json.loads(files["bundle.json"])
    manifest["tag"] = tag
    files["bundle.json"] = json.dumps(manifest).encode()
    if booster is not None:
        files[BOOSTER_FILE] = booster
    with zipfile.ZipFile(to, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return to


def test_a_rerun_skips_parts_written_for_the_same_input_and_model_version(default_bundle, feature_files, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.parquet").write_bytes(feature_files[2].read_bytes())
    out = tmp_path / "out"
    args = ["--input", str(folder), "--output", str(out), "--id-column", "customer_id"]
    first = score_cli(*args, "--model", str(default_bundle))
    assert first.returncode == 0 and "2 part(s), 0 already done" in first.stdout, first.stdout + first.stderr
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    again = score_cli(*args, "--model", str(default_bundle))
    assert "2 part(s), 2 already done" in again.stdout, again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == written
    os.utime(folder / "b.parquet", ns=(1, 1))  # the input changed
    changed = score_cli(*args, "--model", str(default_bundle))
    assert "2 part(s), 1 already done" in changed.stdout, changed.stdout
    same_tag = read_manifest(default_bundle.read_bytes()).tag
    broken = renamed(default_bundle, same_tag, tmp_path / "broken.bundle", booster=b"not a booster")
    refused = score_cli(*args, "--model", str(broken))
    assert refused.returncode == 2 and "not an exported model bundle" in refused.stderr, "every part done: the model is still checked"
    newer = score_cli(*args, "--model", str(renamed(default_bundle, "xgb_classifier:newer", tmp_path / "newer.bundle")))
    assert "2 part(s), 0 already done" in newer.stdout, newer.stdout
    assert set(output(out).column("model_version").to_pylist()) == {"newer"}


def test_explain_adds_the_fields_explain_batch_answers(live_server, default_bundle, feature_files, tmp_path):
    batch, _, parquet_path = feature_files
    result = score_cli("--input", str(parquet_path), "--output", str(tmp_path / "out"), "--model", str(default_bundle),
                       "--id-column", "customer_id", "--explain")  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = output(tmp_path / "out").slice(0, 20)
    expected = [json.loads(e) for e in served_answers(live_server, batch[:20], "/explain_batch", "explanations")]
    for row, explanation in zip(table.to_pylist(), expected):
        assert orjson.dumps(row["contributions"]) == orjson.dumps(explanation["contributions"])
        assert (row["explained_class"], row["base_value"], row["margin"]) == (
            explanation["explained_class"], explanation["base_value"], explanation["margin"])


# -- users' models: categories, missing values, named classes, regression ------------------------

USER_MODELS = {"binary": (byom_datasets.churn_binary, "churn"), "regression": (byom_datasets.houses_regression, "price_k")}


@pytest.fixture(scope="module", params=list(USER_MODELS))
def user_model(request, tmp_path_factory):
    """A model trained on a user's CSV into a private store (the session store keeps its latest), exported."""
    make, label = USER_MODELS[request.param]
    folder = tmp_path_factory.mktemp(f"user-{request.param}")
    data = make(folder / "data.csv")
    env = {"BENTOML_HOME": str(folder / "home")}
    trained = subprocess.run([sys.executable, "train_export.py", "--data", str(data), "--label", label, "--rounds", "20"],
                             cwd=REPO, capture_output=True, text=True, env=environment(env))  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    exported = score_cli("--export-model", str(folder / "model.bundle"), env=env)
    assert exported.returncode == 0, exported.stderr
    features = folder / "features.csv"
    pacsv.write_csv(pacsv.read_csv(data, convert_options=pacsv.ConvertOptions(strings_can_be_null=True)).drop_columns([label]), features)
    return folder / "model.bundle", data, features


def contract_answers(bundle_path: Path, records_: list[dict]) -> list[bytes]:
    """What the service answers for these records: its Contract parses them, its answer() answers."""
    from serving.contract import Contract, predicted
    from serving.settings import Settings

    bundle = bundle_from_bytes(bundle_path.read_bytes())
    contract = Contract(bundle.schema, Settings())
    rows = contract.parse_batch(orjson.dumps({"instances": records_}))
    if not bundle.schema.is_classification:
        return [orjson.dumps(b) for b in contract.value_bodies(bundle.predict(rows), bundle.version)]
    proba = bundle.predict_proba(rows)
    classes, confidence = predicted(proba)
    return [orjson.dumps(b) for b in contract.class_bodies(proba, classes, confidence, bundle.version)]


def test_users_models_are_scored_as_the_service_answers(user_model, tmp_path):
    bundle_path, data, features = user_model
    from test_byom import csv_records

    bundle = bundle_from_bytes(bundle_path.read_bytes())
    result = score_cli("--input", str(features), "--output", str(tmp_path / "out"), "--model", str(bundle_path))
    assert result.returncode == 0, result.stderr
    table = output(tmp_path / "out")
    # /predict's JSON key order: predicted_label comes last in the body
    body_order = [f.name for f in answer_fields(bundle)]
    expected = contract_answers(bundle_path, csv_records(data, bundle.schema))
    assert answers(table, body_order) == expected
    categorical = [f for f in bundle.schema.features if f.kind == "categorical"]
    assert table.column(categorical[0].name).to_pylist()[:5] == [r[categorical[0].name] for r in csv_records(data, bundle.schema)[:5]]


def test_a_category_the_model_does_not_know_is_rejected(user_model, tmp_path):
    bundle_path, data, features = user_model
    bundle = bundle_from_bytes(bundle_path.read_bytes())
    (category,) = [f for f in bundle.schema.features if f.kind == "categorical"][:1]
    table = pacsv.read_csv(features, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    values = table.column(category.name).to_pylist()
    values[4] = "platinum"
    path = tmp_path / "unknown.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index(category.name), category.name, pa.array(values)), path)
    result = score_cli("--input", str(path), "--output", str(tmp_path / "out"), "--model", str(bundle_path), "--max-reject-rate", "0.01")
    assert result.returncode == 0, result.stderr
    (reject,) = list(csv.DictReader((tmp_path / "out" / "_rejects.csv").open()))
    assert (reject["row"], reject["field"], reject["value"]) == ("5", category.name, "platinum")
    assert "'platinum' is not one of" in reject["reason"]


def test_s3_input_and_output_through_a_real_s3_endpoint(default_bundle, feature_files, tmp_path):
    """moto's server mode: a real HTTP S3 endpoint that pyarrow's S3FileSystem talks to (AWS_ENDPOINT_URL)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from loadtest.bench_servers import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="tables")
        s3.upload_file(str(feature_files[1]), "tables", "in/day=1/features.csv")
        result = score_cli("--input", "s3://tables/in/", "--output", "s3://tables/out", "--model", str(default_bundle),
                           "--id-column", "customer_id", env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="tables", Prefix="out/")["Contents"])
        (part,) = [k for k in keys if k.endswith(".parquet") and "/_" not in k]
        local = tmp_path / "part.parquet"
        s3.download_file("tables", part, str(local))
        assert pq.read_table(local).column("customer_id").to_pylist() == [f"c{i:04d}" for i in range(ROWS)]
        assert "out/_rejects.csv" in keys and not [k for k in keys if "/_tmp/" in k and not k.endswith("/")]
    finally:
        server.stop()


def test_the_docs_state_the_codes_defaults_and_goal():
    from loadtest import bench_score
    from model_store import score

    doc = " ".join((REPO / "docs/batch-scoring.md").read_text().split())
    assert f"~{score.PART_BYTES >> 20} MiB parts" in doc and f"(default {score.PART_BYTES >> 20} MiB)" in doc
    assert f"{score.BLOCK_BYTES >> 20} MiB blocks / {score.PARQUET_BATCH_ROWS // 1024}k-row batches" in doc
    assert f">= {bench_score.MIN_ROWS_PER_S:,} rows/s" in doc and f"<= {bench_score.MAX_RSS_BYTES >> 30} GiB peak RSS" in doc
