"""A candidate model next to the primary (serving/rollout.py), against real `bentoml serve` processes.

Two models of the default dataset, trained here with two seeds: the session's default model is the
primary, a second one (seed 7) the candidate. The candidate is deleted at the end, so the default
model is the store's latest again for the other tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import re
import time

import bentoml
import numpy as np
import pytest
import requests

from testkit.probes import samples, total, train_default_model
from model_store import load_bundle
from model_store.dataset import sample_records
from monitoring import check_dashboards, dashboards, localstack
from serving.rollout import Rollout, Shadow, schema_difference
from test_monitoring_live import new_ports, scalar, wait_for

CANDIDATE_SEED = "7"


@pytest.fixture(scope="module")
def models(bentoml_home, live_server):
    """(primary, candidate) bundles: the default model and one trained with another seed.

    The shared live server starts first: while the candidate exists it is the store's latest model,
    and a server started meanwhile without MODEL_TAG would serve it.
    """
    primary = load_bundle("xgb_classifier:latest")
    output = train_default_model("--seed", CANDIDATE_SEED)
    candidate = load_bundle(re.search(r"model\s+(xgb_classifier:\S+)", output).group(1))
    yield primary, candidate
    bentoml.models.delete(candidate.tag)


def rollout_server(server_factory, models, mode: str, **env: str):
    primary, candidate = models
    return server_factory(
        {"MODEL_TAG": primary.tag, "XGB_CANDIDATE_TAG": candidate.tag, "XGB_CANDIDATE_MODE": mode, **env}
    )


@pytest.fixture(scope="module")
def shadow_server(server_factory, models):
    return rollout_server(server_factory, models, "shadow")


def post_all(url: str, records: list[dict], headers: dict | None = None) -> list[dict]:
    """Each record to /predict from 16 concurrent clients (so the server batches them); answers in order."""
    def post(record: dict) -> dict:
        response = requests.post(f"{url}/predict", json=record, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(post, records))


def test_shadow_answers_come_from_the_primary_and_both_versions_are_measured(shadow_server, models):
    primary, candidate = models
    server = shadow_server
    before = samples(server.url)
    records = sample_records(np.random.default_rng(21), 300)
    singles = post_all(server.url, records[:200])
    batch = requests.post(f"{server.url}/predict_batch", json={"instances": records[200:]}, timeout=30).json()["predictions"]
    answers = singles + batch

    want = primary.predict_proba(primary.encode(records))
    assert {a["model_version"] for a in answers} == {primary.version}
    np.testing.assert_allclose([a["probabilities"] for a in answers], want, atol=1e-5)

    # Every record is scored by the candidate too, after its answer: wait for the workers to catch up.
    other = candidate.predict_proba(candidate.encode(records))
    deadline = time.monotonic() + 30

    def grew(name: str, **labels: str) -> float:
        return total(found, name, **labels) - total(before, name, **labels)

    while (found := samples(server.url)) and grew("xgb_shadow_records_total") < len(records):
        assert time.monotonic() < deadline, f"shadow records: {grew('xgb_shadow_records_total')}"
        time.sleep(0.5)
    pair = {"primary_version": primary.version, "candidate_version": candidate.version}
    assert grew("xgb_shadow_records_total", **pair) == len(records)
    agreed = int((want.argmax(axis=1) == other.argmax(axis=1)).sum())
    assert grew("xgb_shadow_agreed_total", **pair) == agreed
    assert 0 < agreed < len(records), "two seeds should mostly, not always, agree"
    assert grew("xgb_shadow_abs_difference_count", **pair) == len(records)
    mean_difference = grew("xgb_shadow_abs_difference_sum", **pair) / len(records)
    assert mean_difference == pytest.approx(np.abs(want - other).mean(), rel=1e-3)
    for role, model, proba in (("primary", primary, want), ("candidate", candidate, other)):
        per_class = np.bincount(proba.argmax(axis=1), minlength=len(model.class_names))
        for name, count in zip(model.class_names, per_class.tolist()):
            got = grew("xgb_rollout_predictions_total", role=role, model_version=model.version, predicted_class=name)
            assert got == count, (role, name)
        assert grew("xgb_model_latency_seconds_count", role=role, model_version=model.version) > 0
        assert total(found, "xgb_rollout_info", role=role, model_version=model.version, mode="shadow") == 1
    assert total(found, "xgb_shadow_min_agreement") == 0.6
    assert total(found, "xgb_shadow_skipped_total") == 0


def test_metadata_lists_the_loaded_models_and_the_mode(live_server, shadow_server, server_factory, models):
    primary, candidate = models
    alone = requests.get(f"{live_server}/metadata", timeout=10).json()["rollout"]
    assert alone["mode"] is None and alone["candidate_percent"] is None
    assert [m["role"] for m in alone["models"]] == ["primary"]
    shadow = requests.get(f"{shadow_server.url}/metadata", timeout=10).json()
    assert shadow["tag"] == primary.tag, "the card describes the primary"
    assert shadow["rollout"]["mode"] == "shadow" and shadow["rollout"]["candidate_percent"] is None
    assert [(m["role"], m["tag"]) for m in shadow["rollout"]["models"]] == [("primary", primary.tag), ("candidate", candidate.tag)]
    assert shadow["rollout"]["models"][1]["metrics"] == candidate.metadata["metrics"]
    canary = rollout_server(server_factory, models, "canary", XGB_CANDIDATE_PERCENT="25")
    assert requests.get(f"{canary.url}/metadata", timeout=10).json()["rollout"]["candidate_percent"] == 25


def test_shadow_scoring_waits_until_the_answers_are_written(models):
    """The dispatcher's order for one batch: the model call (which queues the shadow work), then
    each waiting request gets its answer. The requests must all resume before the candidate runs."""
    primary, candidate = models
    events: list[str] = []

    class Recording(Shadow):
        def compare(self, rows, outputs, classes) -> None:
            events.append(f"shadow {len(rows)}")

    async def one_batch() -> None:
        shadow = Recording(primary, candidate)
        shadow.start()
        loop = asyncio.get_running_loop()
        answered = [loop.create_future() for _ in range(8)]

        async def request(future) -> None:
            await future
            events.append("answer")

        requests_in_flight = [loop.create_task(request(f)) for f in answered]
        await asyncio.sleep(0)
        rows = primary.encode(sample_records(np.random.default_rng(1), 8))
        proba = primary.predict_proba(rows)
        shadow.submit(rows, proba, proba.argmax(axis=1))
        for future in answered:
            future.set_result(None)
        await asyncio.gather(*requests_in_flight)
        await asyncio.sleep(0.1)

    asyncio.run(one_batch())
    assert events == ["answer"] * 8 + ["shadow 8"]


def test_the_rollout_dashboard_row_has_data_in_shadow_mode(shadow_server, tmp_path):
    """Every query of the rollout row, run by a real Prometheus scraping a service in shadow mode."""
    stack = localstack.LocalStack(tmp_path, shadow_server.url.removeprefix("http://"), new_ports(), interval="1s")
    records = sample_records(np.random.default_rng(4), 100)
    with stack:
        wait_for(lambda: scalar(stack, 'count(up{job="xgb-service"} == 1)') == 1, 30, "the service to be scraped")
        for _ in range(2):  # two rounds: a rate needs a series that existed before the traffic
            post_all(shadow_server.url, records)
            time.sleep(3)
        panels = {p.title for p in dashboards.ROLLOUT.panels}
        results = [r for r in check_dashboards.evaluate(stack.prometheus_url) if r.panel in panels]
        assert {r.panel for r in results} == panels
        empty = [f"{r.panel}: {r.expr} {r.error}" for r in results if not r.has_data]
        assert not empty, "rollout queries without data:\n" + "\n".join(empty)


def test_canary_answers_from_both_models_at_about_the_set_share(server_factory, models):
    primary, candidate = models
    server = rollout_server(server_factory, models, "canary", XGB_CANDIDATE_PERCENT="50")
    records = sample_records(np.random.default_rng(5), 400)
    answers = post_all(server.url, records)
    by_version = {m.version: m.predict_proba(m.encode(records)) for m in models}
    versions = [a["model_version"] for a in answers]
    assert set(versions) == set(by_version)
    share = versions.count(candidate.version) / len(versions)
    assert 0.4 <= share <= 0.6, f"candidate answered {share:.0%} (set: 50%)"
    for i, answer in enumerate(answers):  # each answer is the named model's
        np.testing.assert_allclose(answer["probabilities"], by_version[answer["model_version"]][i], atol=1e-5)

    # /predict_batch: a whole request goes to one model, drawn at the same share.
    batch_versions = []
    for _ in range(40):
        response = requests.post(f"{server.url}/predict_batch", json={"instances": records[:3]}, timeout=30)
        assert response.status_code == 200, response.text
        (version,) = {p["model_version"] for p in response.json()["predictions"]}
        batch_versions.append(version)
    assert set(batch_versions) == set(by_version)

    found = samples(server.url)
    for model in models:
        answered = versions.count(model.version) + 3 * batch_versions.count(model.version)
        assert total(found, "xgb_rollout_predictions_total", model_version=model.version) == answered
    assert total(found, "xgb_shadow_records_total") == 0, "a canary is not shadow-scored"


@pytest.mark.parametrize("percent", [1, 10, 50, 90])
def test_the_canary_share_of_records_stays_within_one_batch_of_the_set_share(models, percent):
    primary, candidate = models
    rollout = Rollout(primary, candidate, "canary", percent, score=None)
    sizes = np.random.default_rng(percent).integers(1, 40, 2000).tolist()
    answered = total_records = 0
    for n in sizes:
        answered += n * rollout._canary_takes(n)
        total_records += n
        assert abs(answered - total_records * percent / 100) <= 40, (answered, total_records)
    assert 0 < answered < total_records


def test_a_version_header_pins_a_loaded_model_and_an_unknown_one_is_422(server_factory, models):
    primary, candidate = models
    server = rollout_server(server_factory, models, "canary", XGB_CANDIDATE_PERCENT="0")
    records = sample_records(np.random.default_rng(8), 20)
    for model in models:
        answers = post_all(server.url, records, headers={"X-Model-Version": model.version})
        assert {a["model_version"] for a in answers} == {model.version}
        np.testing.assert_allclose([a["probabilities"] for a in answers], model.predict_proba(model.encode(records)), atol=1e-5)
        response = requests.post(f"{server.url}/predict_batch", json={"instances": records}, headers={"X-Model-Version": model.version}, timeout=30)
        assert {p["model_version"] for p in response.json()["predictions"]} == {model.version}
        explained = requests.post(f"{server.url}/explain", json=records[0], headers={"X-Model-Version": model.version}, timeout=30)
        assert explained.status_code == 200, explained.text
        assert explained.json()["model_version"] == model.version
    assert {a["model_version"] for a in post_all(server.url, records)} == {primary.version}, "0 %: the primary answers"
    for path, body in (("/predict", records[0]), ("/predict_batch", {"instances": records}), ("/explain", records[0])):
        response = requests.post(f"{server.url}{path}", json=body, headers={"X-Model-Version": "nosuchversion"}, timeout=10)
        assert response.status_code == 422, response.text
        error = response.json()
        assert "nosuchversion" in error["error"] and primary.version in error["error"] and candidate.version in error["error"]
        assert error["detail"][0]["loc"] == ["header", "X-Model-Version"]
    spec = requests.get(f"{server.url}/docs.json", timeout=10).json()
    for path in ("/predict", "/predict_batch", "/explain", "/explain_batch"):
        (header,) = [p for p in spec["paths"][path]["post"]["parameters"] if p["in"] == "header" and p["name"] != "X-Request-ID"]
        assert header["name"] == "X-Model-Version" and not header["required"], f"{path}: {header}"
        assert header["schema"]["enum"] == [primary.version, candidate.version], f"{path} documents the loaded versions"


def test_a_candidate_with_another_schema_refuses_to_start_with_one_line(server_factory, models):
    primary, _ = models
    other = train_other_schema_model()
    try:
        server = server_factory({"MODEL_TAG": primary.tag, "XGB_CANDIDATE_TAG": other}, wait=False)
        assert server.proc.wait(120) != 0
        lines = server.log().strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in lines[0], lines[-40:]
        assert f"candidate {other!r} does not fit primary {primary.tag!r}: feature 1 ('feat1'): name 'feat1' vs 'a'" in lines[0], lines[0]
    finally:
        bentoml.models.delete(other)


def test_schema_difference_names_the_first_difference(models):
    primary, candidate = models
    assert schema_difference(primary, candidate) is None
    schema = primary.schema
    features = list(schema.features)

    def differs(**changes) -> str:
        return schema_difference(primary, dataclasses.replace(candidate, schema=dataclasses.replace(schema, **changes)))

    assert differs(task="regression", class_names=()) == "task multiclass vs regression"
    assert differs(class_names=("a", "b", "c", "d", "e")).startswith("class names ['0', '1', '2', '3', '4'] vs ['a'")
    renamed = [dataclasses.replace(features[2], name="amount"), *features[3:]]
    assert differs(features=tuple(features[:2] + renamed), example={**{f.name: schema.example[f.name] for f in features[:2]}, "amount": 1.0, **{f.name: schema.example[f.name] for f in features[3:]}}) == "feature 3 ('feat3'): name 'feat3' vs 'amount'"
    assert differs(features=tuple(features[:-1]), example={f.name: schema.example[f.name] for f in features[:-1]}) == "36 vs 35 features (first unmatched: 'feat36')"
    narrowed = dataclasses.replace(features[0], minimum=18.0, maximum=95.0, description="another range")
    assert differs(features=(narrowed, *features[1:])) is None, "ranges may move between retrainings"


def train_other_schema_model() -> str:
    """A five-class model on three features named a, b, c: a schema nothing else here has."""
    import xgboost as xgb
    from sklearn.preprocessing import StandardScaler

    from model_store import Feature, ModelSchema, save_bundle

    rng = np.random.default_rng(0)
    x, y = rng.random((300, 3)), rng.integers(0, 5, 300)
    booster = xgb.train({"objective": "multi:softprob", "num_class": 5}, xgb.DMatrix(x, label=y), 2)
    schema = ModelSchema("multiclass", tuple(Feature(n, "continuous", 0.0, 1.0) for n in "abc"), tuple("01234"), {"a": 0.5, "b": 0.5, "c": 0.5})
    return str(save_bundle(booster, StandardScaler().fit(x), schema=schema, labels={}, metadata={}).tag)
