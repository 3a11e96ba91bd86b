"""/explain and /explain_batch against a real `bentoml serve`: exact TreeSHAP values from XGBoost's
pred_contribs, checked against the model in-process; the same validation as /predict; the query
parameters; the batch limit; overload answered with 503 while /predict keeps answering."""

from __future__ import annotations

import itertools
import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from testkit.probes import meanwhile
from test_validation import CASES, JSON

from model_store import Feature, ModelSchema, load_bundle
from model_store.bundle import DensePredictor, ModelBundle, import_xgboost
from model_store.dataset import sample_records
from serving.contract import Contract
from serving.explain import Explainer
from serving.settings import Settings

MAX_EXPLAIN_RECORDS = 1000


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


def explain_batch(client, records: list[dict], query: str = "") -> list[dict]:
    """POST /explain_batch through `client` (app_client or live_client); the explanations."""
    response = client.post(f"/explain_batch{query}", json={"instances": records}, timeout=120)
    assert response.status_code == 200, response.text[:500]
    explanations = response.json()["explanations"]
    for i, explanation in enumerate(explanations):  # each record's own id: <the request's X-Request-ID>-<index>
        assert explanation.pop("request_id") == f"{response.headers['x-request-id']}-{i}", explanation
    return explanations


def in_process(bundle, records: list[dict], **kwargs) -> np.ndarray:
    xgb = import_xgboost()
    data = xgb.DMatrix(bundle.margin_input(bundle.encode(records)), nthread=1)
    return bundle.booster.predict(data, validate_features=False, **kwargs)


def test_explanations_are_xgboost_exact_treeshap_and_add_up_to_the_margin(app_client, bundle):
    records = sample_records(np.random.default_rng(21), 40)
    answers = explain_batch(app_client, records)
    names = list(bundle.schema.feature_names)
    exact = in_process(bundle, records, pred_contribs=True)  # (rows, classes, features + 1)
    saabas = in_process(bundle, records, pred_contribs=True, approx_contribs=True)
    margins = in_process(bundle, records, output_margin=True)
    predictions = app_client.post("/predict_batch", json={"instances": records}, timeout=30).json()["predictions"]
    for i, (record, answer, prediction) in enumerate(zip(records, answers, predictions)):
        cls = answer["explained_class"]
        # Batch records carry their own request id (<the request's>-<index>); the embedded prediction does not.
        assert prediction.pop("request_id").endswith(f"-{i}")
        assert answer["prediction"] == prediction and cls == prediction["predicted_class"]  # the predicted class by default
        assert answer["model_version"] == bundle.version
        contributions = answer["contributions"]
        assert list(contributions) == names
        assert answer["base_value"] + sum(contributions.values()) == pytest.approx(answer["margin"], abs=1e-4)
        assert answer["margin"] == pytest.approx(float(margins[i, cls]), abs=1e-5)
        np.testing.assert_allclose(list(contributions.values()), exact[i, cls, :-1], atol=1e-5)
        assert answer["base_value"] == pytest.approx(float(exact[i, cls, -1]), abs=1e-5)
        top = answer["top"]
        assert [t["feature"] for t in top] == sorted(names, key=lambda n: -abs(contributions[n]))[:5]
        assert all(t["value"] == record[t["feature"]] and t["contribution"] == contributions[t["feature"]] for t in top)
    # Saabas attributions (approx_contribs) differ from TreeSHAP's: the answers are the exact ones.
    chosen = [a["explained_class"] for a in answers]
    assert np.abs(saabas[np.arange(40), chosen, :-1] - exact[np.arange(40), chosen, :-1]).max() > 1e-3


def test_explanations_are_the_exact_shapley_values_of_the_trees():
    """Path-dependent TreeSHAP is the Shapley value of v(S) = the trees' output when the features
    outside S are integrated out with the training cover at each split. Computed here by brute force
    over every subset for a small model with interactions, it is what Explainer answers; Saabas
    (approx_contribs) is not."""
    xgb = import_xgboost()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    y = x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2]) + 0.5 * x[:, 3] * (x[:, 0] > 0)
    booster = xgb.train({"max_depth": 3, "eta": 0.3, "nthread": 1}, xgb.DMatrix(x, label=y), 8)
    names = ("a", "b", "c", "d")
    schema = ModelSchema(task="regression", features=tuple(Feature(n, "continuous") for n in names), class_names=(),
                         example=dict(zip(names, x[0].tolist())))  # fmt: skip
    bundle = ModelBundle("tiny:v1", booster, np.zeros(4), np.ones(4), schema, {}, DensePredictor(booster))
    explainer = Explainer(bundle, Contract(schema, Settings()))
    trees = [json.loads(t) for t in booster.get_dump(dump_format="json", with_stats=True)]

    def tree_value(node: dict, row: np.ndarray, known: set[int]) -> float:
        if "leaf" in node:
            return node["leaf"]
        children = {c["nodeid"]: c for c in node["children"]}
        feature = int(node["split"][1:])
        if feature in known:
            return tree_value(children[node["yes"] if row[feature] < node["split_condition"] else node["no"]], row, known)
        return sum(children[c]["cover"] * tree_value(children[c], row, known) for c in (node["yes"], node["no"])) / node["cover"]

    rows = x[:5]
    answers = explainer.explain(rows, top=4)
    saabas = booster.predict(xgb.DMatrix(rows), pred_contribs=True, approx_contribs=True)
    n = len(names)
    for row, answer, approx in zip(rows.astype(np.float32), answers, saabas):  # XGBoost compares float32 values
        v = {known: sum(tree_value(t, row, set(known)) for t in trees) for k in range(n + 1) for known in itertools.combinations(range(n), k)}
        shapley = [
            sum(math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n) * (v[tuple(sorted((*s, i)))] - v[s])
                for s in v if i not in s)
            for i in range(n)
        ]  # fmt: skip
        got = [answer["contributions"][name] for name in names]
        np.testing.assert_allclose(got, shapley, atol=2e-5)
        assert answer["base_value"] - answer["margin"] + v[tuple(range(n))] == pytest.approx(v[()], abs=2e-5)  # base = v(∅) + base score
        assert np.abs(approx[:-1] - shapley).max() > 1e-3


def test_concurrent_single_explanations_equal_the_batch_ones(app_client):
    """Concurrent requests are explained together (one call per class and top): each still gets its own."""
    records = sample_records(np.random.default_rng(22), 24)
    queries = ["", "?class=0", "?top=2"] * 8
    expected = [explain_batch(app_client, [r], q)[0] for r, q in zip(records, queries)]
    with ThreadPoolExecutor(12) as pool:
        singles = list(pool.map(lambda rq: app_client.post(f"/explain{rq[1]}", json=rq[0], timeout=60).json(), zip(records, queries)))
    assert singles == expected


def test_class_by_name_or_index_and_top(live_client, bundle):
    record = sample_records(np.random.default_rng(23), 1)
    names = list(bundle.schema.feature_names)
    margins = in_process(bundle, record, output_margin=True)[0]
    default = explain_batch(live_client, record)[0]
    (one,) = explain_batch(live_client, record, "?top=1")[0]["top"]
    assert one == default["top"][0]
    for cls, name in enumerate(bundle.schema.class_names):
        by_name, by_index = (explain_batch(live_client, record, f"?class={c}&top={len(names)}")[0] for c in (name, cls))
        assert by_name == by_index and by_name["explained_class"] == cls
        assert by_name["margin"] == pytest.approx(float(margins[cls]), abs=1e-5)
        assert by_name["base_value"] + sum(by_name["contributions"].values()) == pytest.approx(by_name["margin"], abs=1e-4)
        magnitudes = [abs(t["contribution"]) for t in by_name["top"]]
        assert len(magnitudes) == len(names) and magnitudes == sorted(magnitudes, reverse=True)


def test_extreme_values_are_explained_as_they_are_predicted(app_client):
    record = sample_records(np.random.default_rng(28), 1)[0]
    for value in (1e308, -1e308, 1e39):
        extreme = {**record, next(iter(record)): value}
        explained = app_client.post("/explain", json=extreme, timeout=30)
        assert explained.status_code == 200, explained.text
        answer = explained.json()
        assert answer["prediction"] == app_client.post("/predict", json=extreme, timeout=30).json()
        assert answer["base_value"] + sum(answer["contributions"].values()) == pytest.approx(answer["margin"], abs=1e-4)


@pytest.mark.parametrize(
    "query,parameter",
    [("?class=9", "class"), ("?class=cat", "class"), ("?class=-1", "class"), ("?top=0", "top"), ("?top=37", "top"),
     ("?top=two", "top"), ("?top=", "top"), ("?colour=red", "colour"), ("?top=3&top=4", "top")],
)  # fmt: skip
def test_a_bad_query_parameter_is_a_422_naming_it(app_client, bundle, query, parameter):
    record = sample_records(np.random.default_rng(24), 1)[0]
    for path, body in (("/explain", record), ("/explain_batch", {"instances": [record]})):
        response = app_client.post(f"{path}{query}", json=body, timeout=30)
        assert response.status_code == 422, response.text
        error = response.json()
        assert f"'{parameter}'" in error["error"] and error["detail"][0]["loc"] == ["query", parameter]


@pytest.mark.parametrize("name", CASES)
def test_explain_refuses_what_predict_refuses_the_same_way(app_client, name):
    body = CASES[name][0]
    predict = app_client.post("/predict", data=body, headers=JSON, timeout=10)
    explain = app_client.post("/explain", data=body, headers=JSON, timeout=10)
    assert (explain.status_code, explain.json()) == (predict.status_code, predict.json())


@pytest.mark.parametrize("n", [0, MAX_EXPLAIN_RECORDS + 1])
def test_explain_batch_size_is_limited(app_client, n):
    records = sample_records(np.random.default_rng(25), n)
    response = app_client.post("/explain_batch", json={"instances": records}, timeout=30)
    assert response.status_code == 422, response.text[:300]
    assert "instances" in response.json()["error"] and response.json()["detail"][0]["loc"][0] == "instances"


def test_explain_batch_of_the_maximum_is_answered_in_order(app_client):
    records = sample_records(np.random.default_rng(26), MAX_EXPLAIN_RECORDS)
    answers = explain_batch(app_client, records)
    assert len(answers) == MAX_EXPLAIN_RECORDS
    assert [a["top"][0]["value"] for a in answers] == [r[a["top"][0]["feature"]] for r, a in zip(records, answers)]


def test_a_full_explain_pool_answers_503_while_predict_keeps_answering(server_factory):
    """One worker letting 599 records wait: of three concurrent 600-record batches one is explained
    and the others are refused at once with 503 + Retry-After; /predict answers throughout. (600
    records keep the first one explaining for seconds: with 200, a loaded box sent the third after
    the first was done, and it was explained too.)"""
    server = server_factory({"XGB_EXPLAIN_QUEUE": "599"}, workers=1)
    records = sample_records(np.random.default_rng(27), 600)
    with meanwhile(lambda session: session.post(f"{server.url}/predict", json=records[0], timeout=10)) as predicted:
        with ThreadPoolExecutor(3) as pool:
            batches = list(pool.map(lambda _: requests.post(f"{server.url}/explain_batch", json={"instances": records}, timeout=120), range(3)))
    assert sorted(r.status_code for r in batches) == [200, 503, 503], [r.text[:200] for r in batches]
    for refused in (r for r in batches if r.status_code == 503):
        assert refused.headers["retry-after"] == "1" and "overloaded" in refused.json()["error"]
    assert predicted and {status for status, _ in predicted} == {200}
