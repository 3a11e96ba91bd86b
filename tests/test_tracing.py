"""Traces from a real `bentoml serve` to a real OTLP gRPC receiver run here (TraceService from
opentelemetry-proto, the service the ADOT collector's otlp receiver implements): span names and
attributes, W3C traceparent's trace id kept, the sample rate honoured."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests

from loadtest.otlp_receiver import Receiver
from model_store.dataset import sample_records as dataset_records
from testkit.waiting import wait_settled

TRACE_ID = "5f3c2a1b" + "9e8d7c6b5a493827" + "16050403"
PARENT_SPAN = "a1b2c3d4e5f60718"


@pytest.fixture(scope="module")
def receiver():
    collected = Receiver().start()
    yield collected
    collected.stop()


def sample_records(n: int) -> list[dict]:
    return dataset_records(np.random.default_rng(7), n)


def post(url: str, path: str, payload, headers: dict | None = None) -> requests.Response:
    return requests.post(url + path, data=json.dumps(payload), timeout=30,
                         headers={"content-type": "application/json", **(headers or {})})


def by_trace(spans: list[dict], trace_id: str) -> dict[str, dict]:
    return {s["name"]: s for s in spans if s["trace_id"] == trace_id}


def test_every_route_is_traced_with_its_steps_at_rate_one(server_factory, receiver):
    server = server_factory({"XGB_TRACE_SAMPLE": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                             "OTEL_BSP_SCHEDULE_DELAY": "200"})
    records = sample_records(3)
    calls = {"/predict": records[0], "/predict_batch": {"instances": records}, "/explain": records[0],
             "/explain_batch": {"instances": records[:2]}}
    for path, payload in calls.items():
        assert post(server.url, path, payload).status_code == 200, path
    assert post(server.url, "/predict", {"nonsense": 1}).status_code == 422
    spans = receiver.wait(lambda got: sum(s["name"].startswith("POST /") for s in got) >= 5)
    roots = [s for s in spans if s["name"].startswith("POST /") and not s["parent"]]
    assert {s["name"] for s in roots} == {f"POST {path}" for path in calls}
    expected_steps = {"/predict": {"validate", "batch wait"}, "/predict_batch": {"validate", "batch wait", "model call"},
                      "/explain": {"validate", "model call"}, "/explain_batch": {"validate", "model call"}}
    for path, steps in expected_steps.items():
        root = next(s for s in roots if s["name"] == f"POST {path}" and s["attributes"]["http.response.status_code"] == 200)
        children = {s["name"]: s for s in spans if s["parent"] == root["span_id"]}
        assert set(children) == steps, (path, set(children))
        assert all(c["trace_id"] == root["trace_id"] for c in children.values())
        assert root["attributes"]["http.route"] == path and root["resource"]["service.name"] == "xgb-service"
        # An X-Ray trace id starts with the epoch seconds it was made at.
        assert abs(int(root["trace_id"][:8], 16) - time.time()) < 600, root["trace_id"]
    batch = next(s for s in roots if s["name"] == "POST /predict_batch")
    assert batch["attributes"]["records"] == 3
    rejected = [s for s in roots if s["attributes"]["http.response.status_code"] == 422]
    assert len(rejected) == 1 and rejected[0]["name"] == "POST /predict"


def test_traceparent_keeps_its_trace_and_the_rate_is_honoured(server_factory, receiver):
    server = server_factory({"XGB_TRACE_SAMPLE": "0.2", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                             "OTEL_BSP_SCHEDULE_DELAY": "200"})
    record = sample_records(1)[0]
    sampled = post(server.url, "/predict", record, {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN}-01"})
    unsampled_id = TRACE_ID[::-1]
    unsampled = post(server.url, "/predict", record, {"traceparent": f"00-{unsampled_id}-{PARENT_SPAN}-00"})
    assert sampled.status_code == unsampled.status_code == 200
    spans = receiver.wait(lambda got: "POST /predict" in by_trace(got, TRACE_ID))
    root = by_trace(spans, TRACE_ID)["POST /predict"]
    assert root["parent"] == PARENT_SPAN, "the caller's span is the parent"
    assert set(by_trace(spans, TRACE_ID)) == {"POST /predict", "validate", "batch wait"}

    before = {s["trace_id"] for s in receiver.spans}
    requests_sent = 1000
    with requests.Session() as session:
        for _ in range(requests_sent):
            assert session.post(server.url + "/predict", data=json.dumps(record), timeout=30,
                                headers={"content-type": "application/json"}).status_code == 200
    def sampled_roots() -> list[dict]:
        with receiver.lock:
            return [s for s in receiver.spans if s["name"] == "POST /predict" and not s["parent"] and s["trace_id"] not in before]

    # The batch processor exports every 5 s at most (its schedule delay): a loaded box can take
    # longer than one delay.
    time.sleep(3)
    wait_settled(lambda: len(sampled_roots()), 40, "the sampled spans", interval=2)
    new_roots = sampled_roots()
    with receiver.lock:
        assert unsampled_id not in {s["trace_id"] for s in receiver.spans}, "an unsampled traceparent is not traced"
    # Binomial(1000, 0.2): mean 200, sd 12.6; 150..250 is about 4 sd either side.
    assert 150 <= len(new_roots) <= 250, len(new_roots)


def test_rate_zero_exports_nothing(server_factory, receiver):
    server = server_factory({"XGB_TRACE_SAMPLE": "0", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
    record = sample_records(1)[0]
    count_before = len(receiver.spans)
    trace_id = "6a" * 16
    for _ in range(50):
        assert post(server.url, "/predict", record, {"traceparent": f"00-{trace_id}-{PARENT_SPAN}-01"}).status_code == 200
    time.sleep(2)
    assert trace_id not in {s["trace_id"] for s in receiver.spans[count_before:]}


@pytest.mark.fast
def test_without_a_collector_to_export_to_tracing_is_off():
    """A laptop's `make serve` has no collector: no exporter retrying a closed port, no spans."""
    from serving import tracing

    assert tracing.from_rate(0.01, environ={}) is None
    assert tracing.from_rate(0, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317"}) is None
    told = tracing.from_rate(0.01, environ={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1"})
    assert isinstance(told, tracing.Tracing) and told.rate == 0.01
    told.provider.shutdown()
