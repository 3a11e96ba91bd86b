"""Bring your own model, end to end: CSV -> train_export.py -> a real `bentoml serve` -> HTTP.

Three generated datasets beyond the default (tests/byom_datasets.py): binary with a categorical
column and missing values, multi-class with string labels and column names with spaces and
punctuation, and regression. One server per dataset, pinned to its model with MODEL_TAG; the models
are deleted afterwards so the default model is the store's latest again for the other tests.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys

import bentoml
import numpy as np
import pytest
import requests

from testkit import byom_datasets
import train_export
from testkit.probes import exposed, fuzz, without_request_ids
from testkit.servers import BENTOML, REPO, bentoml_serve
from testkit.waiting import wait_settled
from model_store import ModelSchema, load_bundle

DATASETS = {
    "binary": (byom_datasets.churn_binary, "churn"),
    "multiclass": (byom_datasets.flowers_multiclass, "species"),
    "regression": (byom_datasets.houses_regression, "price_k"),
}
ROUNDS = "30"


def csv_records(path, schema: ModelSchema) -> list[dict]:
    """The CSV's rows as the API's JSON records: numbers, category names, null for an empty cell."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [
        {f.name: None if row[f.name] == "" else row[f.name] if f.kind == "categorical" else float(row[f.name]) for f in schema.features}
        for row in rows
    ]


@pytest.fixture(scope="module", params=list(DATASETS))
def served(request, bentoml_home, tmp_path_factory):
    make, label = DATASETS[request.param]
    path = make(tmp_path_factory.mktemp("byom") / f"{request.param}.csv")
    result = subprocess.run([sys.executable, "train_export.py", "--data", str(path), "--label", label, "--rounds", ROUNDS],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    tag = str(bentoml.models.get("xgb_classifier:latest").tag)
    server = bentoml_serve({"MODEL_TAG": tag}, workers=1)
    try:
        server.start(timeout=120)
        yield request.param, tag, server.url, path
    finally:
        server.stop()
        bentoml.models.delete(tag)  # the default model is the latest again


def test_the_task_is_inferred_and_the_model_beats_the_prior(served):
    task, tag, _, _ = served
    bundle = load_bundle(tag)
    assert bundle.schema.task == task
    metrics = bundle.metadata["metrics"]
    if task == "regression":
        assert metrics["r2"] > 0.9, metrics
    else:
        assert metrics["accuracy"] > metrics["prior_accuracy"] + 0.15 and metrics["log_loss"] < metrics["prior_log_loss"], metrics


def test_served_predictions_equal_the_in_process_models(served):
    task, tag, url, path = served
    bundle = load_bundle(tag)
    records = csv_records(path, bundle.schema)[:200]
    # The in-process model through XGBoost's own public predict (DMatrix with the categorical types),
    # not the service's DensePredictor: this checks the codes reach the C API as XGBoost means them.
    rows = bundle.encode(records)
    expected = bundle.booster.predict(train_export.dmatrix(bundle.margin_input(rows), None, bundle.schema))
    batch = requests.post(f"{url}/predict_batch", json={"instances": records}, timeout=60)
    assert batch.status_code == 200, batch.text
    answers = without_request_ids(batch.json())["predictions"] + [requests.post(f"{url}/predict", json=r, timeout=30).json() for r in records[:10]]
    expected = np.concatenate([expected, expected[:10]])
    if task == "regression":
        assert all(a.keys() == {"prediction", "model_version", "features_used"} for a in answers)
        np.testing.assert_allclose([a["prediction"] for a in answers], expected, rtol=1e-6, atol=1e-6)
        # Counted and summed in the metrics (this test's requests come first on this server).
        assert exposed(url, "xgb_prediction_value_count") == len(answers)
        assert exposed(url, "xgb_prediction_value_sum") == pytest.approx(float(np.sum(expected)), rel=1e-5)
        assert exposed(url, 'xgb_predictions_total{predicted_class=""}') == len(answers)
        return
    proba = np.column_stack([1 - expected, expected]) if task == "binary" else expected
    names = bundle.schema.class_names
    for answer, p in zip(answers, proba):
        assert list(answer) == ["predicted_class", "confidence", "model_version", "features_used", "probabilities", "predicted_label"]
        np.testing.assert_allclose(answer["probabilities"], p, atol=1e-6)
        assert answer["predicted_class"] == int(np.argmax(p)) and answer["predicted_label"] == names[int(np.argmax(p))]
        assert answer["features_used"] == bundle.schema.n_features and answer["model_version"] == bundle.version
    # Counted by class name in the metrics (this test's requests come first on this server).
    counted = {name: exposed(url, f'xgb_predictions_total{{predicted_class="{name}"}}') for name in bundle.schema.class_names}
    assert sum(counted.values()) == len(answers) and counted[bundle.schema.class_names[int(np.argmax(proba[0]))]] > 0


def test_openapi_and_metadata_list_the_models_fields(served):
    task, tag, url, path = served
    schema = load_bundle(tag).schema
    spec = requests.get(f"{url}/docs.json", timeout=10).json()
    record = spec["components"]["schemas"]["Record"]
    assert list(record["properties"]) == list(schema.feature_names) and sorted(record["required"]) == sorted(schema.feature_names)
    assert spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["example"] == schema.example
    for f in schema.features:
        prop = record["properties"][f.name]
        assert prop.get("nullable", False) == f.nullable and "anyOf" not in prop, prop  # OpenAPI 3.0's spelling
        assert prop["type"] == ("string" if f.kind == "categorical" else "number"), prop
        if f.kind == "categorical":
            assert prop["enum"] == list(f.categories) + ([None] if f.nullable else []), prop
    assert "/metadata" in spec["paths"]
    meta = requests.get(f"{url}/metadata", timeout=10).json()
    assert meta["tag"] == tag and meta["task"] == task and meta["created"].startswith("20")
    assert [f["name"] for f in meta["features"]] == list(schema.feature_names)
    assert [(f["kind"], f["categories"], f["nullable"]) for f in meta["features"]] == [(f.kind, list(f.categories), f.nullable) for f in schema.features]
    assert meta["class_names"] == list(schema.class_names) and meta["example"] == schema.example
    assert meta["data_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert {"xgboost-cpu", "numpy", "bentoml"} <= meta["library_versions"].keys() and meta["metrics"]["test_rows"] > 0
    shown = json.loads(subprocess.run([BENTOML, "models", "get", tag, "-o", "json"], capture_output=True, text=True, check=True).stdout)
    stored = shown["metadata"]
    assert stored["schema"]["task"] == task and [f["name"] for f in stored["schema"]["features"]] == list(schema.feature_names)
    assert stored["data_sha256"] == meta["data_sha256"] and stored["metrics"] == meta["metrics"] and "training_params" in stored


def test_explanations_are_exact_treeshap_for_every_task(served):
    """/explain on binary (categories, nulls), multi-class and regression models: XGBoost's own
    pred_contribs on the same input, adding up to the margin, with each value as the client sent it."""
    task, tag, url, path = served
    bundle = load_bundle(tag)
    schema = bundle.schema
    records = csv_records(path, schema)[:60]
    response = requests.post(f"{url}/explain_batch?top={schema.n_features}", json={"instances": records}, timeout=120)
    assert response.status_code == 200, response.text[:500]
    answers = response.json()["explanations"]
    data = train_export.dmatrix(bundle.margin_input(bundle.encode(records)), None, schema)
    margins = bundle.booster.predict(data, output_margin=True)
    contribs = bundle.booster.predict(data, pred_contribs=True)
    for i, (record, answer) in enumerate(zip(records, answers)):
        values = answer["contributions"]
        assert list(values) == list(schema.feature_names)
        # To 1e-4, or float32's precision for a regression value in the hundreds (XGBoost computes in float32).
        assert answer["base_value"] + sum(values.values()) == pytest.approx(answer["margin"], abs=1e-4, rel=1e-6)
        assert {t["feature"]: t["value"] for t in answer["top"]} == record  # category names, null for missing
        if task == "regression":
            expected_margin, expected = margins[i], contribs[i]
            assert answer["explained_class"] is None and answer["prediction"]["prediction"] == pytest.approx(float(margins[i]), rel=1e-5)
        elif task == "binary":  # XGBoost explains class 1's log-odds; class 0's are their negatives
            sign = 1.0 if answer["prediction"]["predicted_class"] == 1 else -1.0
            expected_margin, expected = sign * margins[i], sign * contribs[i]
            assert answer["explained_class"] == answer["prediction"]["predicted_class"] and answer["margin"] >= 0
        else:
            cls = answer["explained_class"]
            expected_margin, expected = margins[i, cls], contribs[i, cls]
            assert cls == answer["prediction"]["predicted_class"]
        assert answer["margin"] == pytest.approx(float(expected_margin), abs=1e-5, rel=1e-6)
        np.testing.assert_allclose(list(values.values()), expected[:-1], atol=1e-5, rtol=1e-6)
    if task != "regression":
        other = schema.class_names[1 - answers[0]["explained_class"] if task == "binary" else (answers[0]["explained_class"] + 1) % schema.n_classes]
        chosen = requests.post(f"{url}/explain?class={other}", json=records[0], timeout=30).json()
        assert chosen["explained_class"] == schema.class_names.index(other)
        assert chosen["base_value"] + sum(chosen["contributions"].values()) == pytest.approx(chosen["margin"], abs=1e-4)
    else:
        refused = requests.post(f"{url}/explain?class=0", json=records[0], timeout=30)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "class"]


def test_predicted_records_are_counted_in_the_models_drift_bins(served):
    """Every feature's bins, categories and missing values included, count each predicted record once."""
    _, tag, url, path = served
    schema = load_bundle(tag).schema
    records = csv_records(path, schema)[:80]

    def bins() -> dict[tuple[str, str], float]:
        text = requests.get(f"{url}/metrics", timeout=10).text
        found = re.findall(r'^xgb_feature_bin_total\{bin="([^"]*)",feature="([^"]*)"\} (\S+)$', text, re.M)
        return {(feature, bin_): float(value) for bin_, feature, value in found}

    def settled() -> dict[tuple[str, str], float]:
        # Counted per batch and exported within about a second, later on a loaded box.
        return wait_settled(bins, 30, "the drift bins")

    before = settled()
    assert requests.post(f"{url}/predict_batch", json={"instances": records}, timeout=60).status_code == 200
    after = settled()
    assert after != before, "the batch was not counted"
    added = {key: value - before.get(key, 0.0) for key, value in after.items()}
    for f in schema.features:
        per_bin = {b: n for (feature, b), n in added.items() if feature == f.name and n}
        assert sum(per_bin.values()) == len(records), (f.name, per_bin)
        sent = [r[f.name] for r in records]
        assert per_bin.get("(missing)", 0) == sent.count(None), f.name
        if f.kind == "categorical":
            assert {b: n for b, n in per_bin.items() if b != "(missing)"} == {c: sent.count(c) for c in f.categories if c in sent}


def _post(url: str, record: dict) -> requests.Response:
    return requests.post(f"{url}/predict", json=record, timeout=30)


def test_bad_input_is_a_422_naming_the_field(served):
    _, tag, url, _ = served
    schema = load_bundle(tag).schema
    example = schema.example
    first = schema.feature_names[0]
    missing = _post(url, {k: v for k, v in example.items() if k != first})
    assert missing.status_code == 422 and [first] in [d["loc"] for d in missing.json()["detail"]]
    unknown = _post(url, {**example, "no such/field": 1})
    assert unknown.status_code == 422 and ["no such/field"] in [d["loc"] for d in unknown.json()["detail"]]
    numeric = next(f for f in schema.features if f.kind != "categorical")
    wrong_type = _post(url, {**example, numeric.name: "12"})
    assert wrong_type.status_code == 422 and wrong_type.json()["detail"][0]["loc"] == [numeric.name]
    for f in schema.features:
        answer = _post(url, {**example, f.name: None})
        if f.nullable:
            assert answer.status_code == 200, (f.name, answer.text)
        else:
            assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == [f.name], (f.name, answer.text)
        if f.kind == "categorical":
            bad = _post(url, {**example, f.name: "not-a-category"})
            assert bad.status_code == 422, bad.text
            detail = bad.json()["detail"][0]
            assert detail["loc"] == [f.name] and all(repr(c) in detail["msg"] for c in f.categories), detail
    batch = requests.post(f"{url}/predict_batch", json={"instances": [example, {**example, numeric.name: "x"}]}, timeout=30)
    assert batch.status_code == 422 and batch.json()["detail"][0]["loc"] == ["instances", 1, numeric.name]


def test_the_readmes_example_csv_is_the_binary_dataset(tmp_path):
    """docs/examples/churn.csv (the README's worked example) is what this suite trains and serves."""
    assert (REPO / "docs" / "examples" / "churn.csv").read_bytes() == byom_datasets.churn_binary(tmp_path / "churn.csv").read_bytes()


def test_locust_load_tests_the_users_model_without_failures(served, tmp_path):
    """The load test reads the served model's /metadata: its records and answer checks fit any model."""
    _, _, url, _ = served
    result = subprocess.run([sys.executable, "-m", "loadtest.stress", "quick", "--host", url, "--rate", "20", "--duration", "4",
                             "--reports", str(tmp_path), "--slo-p99-ms", "5000"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {row["Name"]: row for row in csv.DictReader((tmp_path / "quick_stats.csv").read_text().splitlines())}
    assert int(rows["/predict"]["Request Count"]) > 20 and int(rows["/predict_batch"]["Request Count"]) > 0
    assert rows["Aggregated"]["Failure Count"] == "0"


def test_fuzzing_the_users_model_finds_no_server_errors_and_no_schema_violations(served, tmp_path):
    _, _, url, _ = served
    fuzz(url, tmp_path, max_examples=25)


def test_make_train_passes_a_csv_and_its_label_to_train_export():
    def command(*variables: str) -> str:
        out = subprocess.run(["make", "-n", "--no-print-directory", "train", *variables], cwd=REPO, capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[-1]

    assert command().endswith("train_export.py")  # the embedded default dataset, as before
    assert command("DATA=my data.csv", "LABEL=the label", "TASK=regression").endswith(
        "train_export.py --data 'my data.csv' --label 'the label' --task regression"
    )
    assert command("DATA=d.csv", "LABEL=y", "TRAIN_ARGS=--early-stopping 10").endswith("--task auto --early-stopping 10")
