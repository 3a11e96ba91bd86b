"""The seed's API contract against a real `bentoml serve` process."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from model_store import load_bundle
from model_store.dataset import EXAMPLE_RECORD, FEATURE_NAMES, SCHEMA, sample_records

CLASS_NAMES = SCHEMA.class_names

SEED_KEYS = {"predicted_class", "confidence", "model_version", "features_used"}


def predict(client, record: dict):
    """POST /predict through `client`: app_client (in process) or live_client (a real server)."""
    return client.post("/predict", json=record, timeout=10)


def test_seed_example_gets_the_seed_response_shape(live_client):
    response = predict(live_client, EXAMPLE_RECORD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert SEED_KEYS <= body.keys()
    assert isinstance(body["predicted_class"], int) and body["predicted_class"] in range(len(CLASS_NAMES))
    assert body["features_used"] == 36
    assert body["model_version"] == load_bundle().version
    assert len(body["probabilities"]) == len(CLASS_NAMES)
    assert sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert body["confidence"] == pytest.approx(max(body["probabilities"]), abs=1e-6)
    assert body["predicted_class"] == int(np.argmax(body["probabilities"]))


def test_predictions_equal_the_in_process_model(app_client):
    records = sample_records(np.random.default_rng(7), 25)
    expected = load_bundle().predict_proba(np.array([[r[f] for f in FEATURE_NAMES] for r in records]))
    for record, want in zip(records, expected):
        got = predict(app_client, record).json()
        np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
        assert got["predicted_class"] == int(np.argmax(want))


def test_batch_answers_in_request_order(live_client):
    records = sample_records(np.random.default_rng(11), 60)
    response = live_client.post("/predict_batch", json={"instances": records}, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(records)
    singles = [predict(live_client, r).json() for r in records]
    assert [p["probabilities"] for p in predictions] == [s["probabilities"] for s in singles]
    assert len({p["predicted_class"] for p in predictions}) > 1, "sampled records should not all get one class"


def test_batch_of_the_documented_maximum_is_accepted(app_client):
    records = sample_records(np.random.default_rng(3), 5000)
    response = app_client.post("/predict_batch", json={"instances": records}, timeout=60)
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["predictions"]) == 5000


@pytest.mark.parametrize(
    "path,status",
    [("/healthz", 200), ("/livez", 200), ("/readyz", 200), ("/metrics", 200), ("/docs.json", 200), ("/", 200)],
)
def test_probes_docs_and_metrics_answer(live_server, path, status):
    response = requests.get(f"{live_server}{path}", timeout=10)
    assert response.status_code == status
    assert response.headers["x-content-type-options"] == "nosniff"


def test_openapi_documents_both_prediction_routes_with_the_feature_schema(app_client):
    spec = app_client.get("/docs.json", timeout=10).json()
    assert {"/predict", "/predict_batch", "/healthz", "/livez", "/readyz", "/metrics"} <= spec["paths"].keys()
    record = spec["components"]["schemas"]["Record"]
    assert list(record["properties"]) == list(FEATURE_NAMES)
    assert sorted(record["required"]) == sorted(FEATURE_NAMES)
    assert record["additionalProperties"] is False
    assert "/predict_rows" not in spec["paths"], "the internal batching API must not be documented"


def test_metadata_describes_the_default_model_from_the_store(app_client):
    meta = app_client.get("/metadata", timeout=10).json()
    bundle = load_bundle()
    assert meta["tag"] == bundle.tag and meta["version"] == bundle.version and meta["task"] == "multiclass"
    assert [f["name"] for f in meta["features"]] == list(FEATURE_NAMES) and meta["class_names"] == list(CLASS_NAMES)
    assert meta["features"][0] == {"name": "feat1", "kind": "continuous", "minimum": 0, "maximum": 120, "categories": [],
                                   "nullable": False, "description": "age in years"}  # fmt: skip
    assert meta["example"] == EXAMPLE_RECORD and meta["metrics"] == bundle.metadata["metrics"]
    assert meta["data_sha256"] == bundle.metadata["data_sha256"] and meta["created"] == bundle.created
    spec = app_client.get("/docs.json", timeout=10).json()
    assert spec["paths"]["/metadata"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ModelCard")


def test_internal_batching_api_is_not_reachable(app_client):
    response = app_client.post("/predict_rows", json=[[float("1")] * 36], timeout=10)
    assert response.status_code == 404


def test_metrics_expose_bentoml_and_model_series(live_client):
    predict(live_client, EXAMPLE_RECORD)
    text = live_client.get("/metrics", timeout=10).text
    for name in (
        "bentoml_service_request_total",
        "bentoml_service_request_duration_seconds_bucket",
        "bentoml_service_adaptive_batch_size_bucket",
        "xgb_predictions_total",
        "xgb_prediction_confidence_bucket",
        "xgb_model_info",
        "xgb_class_prior",
        "xgb_process_resident_memory_bytes",
    ):
        assert f"\n{name}" in text, f"{name} missing from /metrics"
    assert f'model_version="{load_bundle().version}"' in text


def _request_series(url: str) -> dict[tuple[str, str, str], float]:
    """BentoML's request metrics for the prediction routes: (metric, endpoint, status) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    series = {}
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=10).text):
        for s in family.samples:
            if s.name in ("bentoml_service_request_total", "bentoml_service_request_duration_seconds_count", "bentoml_service_request_in_progress"):
                if s.labels.get("endpoint") in ("/predict", "/predict_batch"):
                    series[(s.name, s.labels["endpoint"], s.labels.get("http_response_code", ""))] = s.value
    return series


def test_prediction_requests_are_counted_in_bentoml_request_metrics(live_client):
    # The prediction routes are answered in front of BentoML's middlewares: the dashboards and
    # alerts read BentoML's request series, so they must count and time every answer, by status.
    before = _request_series(live_client.base_url)
    for _ in range(3):
        assert predict(live_client, EXAMPLE_RECORD).status_code == 200
    assert predict(live_client, {**EXAMPLE_RECORD, "feat1": "x"}).status_code == 422
    assert live_client.get("/predict", timeout=10).status_code == 405
    assert live_client.post("/predict_batch", json={"instances": [EXAMPLE_RECORD]}, timeout=10).status_code == 200
    after = _request_series(live_client.base_url)

    def grew(metric: str, endpoint: str, status: str) -> float:
        return after.get((metric, endpoint, status), 0) - before.get((metric, endpoint, status), 0)

    for metric in ("bentoml_service_request_total", "bentoml_service_request_duration_seconds_count"):
        assert grew(metric, "/predict", "200") == 3, metric
        assert grew(metric, "/predict", "422") == 1, metric
        assert grew(metric, "/predict", "405") == 1, metric
        assert grew(metric, "/predict_batch", "200") == 1, metric
    assert after[("bentoml_service_request_in_progress", "/predict", "")] == 0, "in-progress must return to 0"
