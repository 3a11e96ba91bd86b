"""Every kind of bad input gets a 4xx JSON error naming the field and the problem, never a 500."""

from __future__ import annotations

import json

import pytest
import requests

from model_store.dataset import EXAMPLE_RECORD

JSON = {"Content-Type": "application/json"}


def with_value(field: str, raw: str) -> bytes:
    """The seed's example with one value replaced by raw JSON text (NaN, 1e999, ... are not valid Python JSON)."""
    body = json.dumps({**EXAMPLE_RECORD, field: "__RAW__"})
    return body.replace('"__RAW__"', raw).encode()


def without(field: str) -> bytes:
    return json.dumps({k: v for k, v in EXAMPLE_RECORD.items() if k != field}).encode()


CASES = {
    # name: (body, status, field named in the error or None)
    "missing field": (without("feat7"), 422, "feat7"),
    "unknown field": (json.dumps({**EXAMPLE_RECORD, "feat37": 1.0}).encode(), 422, "feat37"),
    "string number": (with_value("feat3", '"6750"'), 422, "feat3"),
    "boolean": (with_value("feat11", "true"), 422, "feat11"),
    "null": (with_value("feat2", "null"), 422, "feat2"),
    "NaN": (with_value("feat1", "NaN"), 422, "feat1"),
    "Infinity": (with_value("feat1", "Infinity"), 422, "feat1"),
    "-Infinity": (with_value("feat4", "-Infinity"), 422, "feat4"),
    "overflow 1e999": (with_value("feat3", "1e999"), 422, "feat3"),
    "nested object": (with_value("feat5", '{"a": 1}'), 422, "feat5"),
    "list value": (with_value("feat5", "[1, 2]"), 422, "feat5"),
    "malformed JSON": (b'{"feat1": 55.0,', 400, None),
    "empty body": (b"", 400, None),
    "array body": (b"[1, 2, 3]", 422, None),
    "string body": (b'"hello"', 422, None),
    "deeply nested junk": (b"[" * 100_00 + b"]" * 100_00, 400, None),
    "non-UTF-8 bytes": (b'{"feat1": "\xff\xfe"}', 400, None),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_single_record_is_refused_with_json(live_server, name):
    body, status, field = CASES[name]
    response = requests.post(f"{live_server}/predict", data=body, headers=JSON, timeout=10)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"], "the error must say what is wrong"
    if field is not None:
        assert field in error["error"]
        assert any(field in d["loc"] for d in error["detail"]), error
    assert "Traceback" not in response.text and "/work/" not in response.text and ".py" not in response.text


def test_all_problems_are_listed_not_just_the_first(live_server):
    body = json.dumps({**{k: v for k, v in EXAMPLE_RECORD.items() if k != "feat9"}, "feat1": "x", "extra": 1})
    error = requests.post(f"{live_server}/predict", data=body, headers=JSON, timeout=10).json()
    named = {d["loc"][-1] for d in error["detail"]}
    assert {"feat1", "feat9", "extra"} <= named


def test_integers_are_numbers_too(live_server):
    body = {k: int(v) for k, v in EXAMPLE_RECORD.items()}
    assert requests.post(f"{live_server}/predict", json=body, timeout=10).status_code == 200


def test_wrong_content_type_is_415(live_server):
    response = requests.post(
        f"{live_server}/predict", data=json.dumps(EXAMPLE_RECORD), headers={"Content-Type": "text/plain"}, timeout=10
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


@pytest.mark.parametrize("path,size", [("/predict", 70 * 1024), ("/predict_batch", 9 * 1024 * 1024)])
def test_oversize_body_is_413(live_server, path, size):
    body = b'{"pad": "' + b"x" * size + b'"}'
    response = requests.post(f"{live_server}{path}", data=body, headers=JSON, timeout=30)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]


def test_oversize_body_without_content_length_is_413(live_server):
    def chunks():
        for _ in range(80):
            yield b"x" * 1024

    response = requests.post(f"{live_server}/predict", data=chunks(), headers=JSON, timeout=30)
    assert response.status_code == 413


def test_get_on_predict_is_405(live_server):
    response = requests.get(f"{live_server}/predict", timeout=10)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "body,status,named",
    [
        ({"instances": []}, 422, "instances"),
        ({"instances": [EXAMPLE_RECORD] * 5001}, 422, "instances"),
        ({"records": [EXAMPLE_RECORD]}, 422, "records"),
        ({"instances": [EXAMPLE_RECORD, {**EXAMPLE_RECORD, "feat2": "two"}]}, 422, "instances.1.feat2"),
        ({"instances": EXAMPLE_RECORD}, 422, "instances"),
    ],
    ids=["empty", "over the maximum", "wrong key", "bad record names its index", "not a list"],
)
def test_bad_batch_is_refused(live_server, body, status, named):
    response = requests.post(f"{live_server}/predict_batch", json=body, timeout=30)
    assert response.status_code == status, response.text[:300]
    assert named in response.json()["error"]


def exposed(url: str, series: str) -> float:
    """The value of one series in the service's /metrics (0 before it exists)."""
    lines = [l for l in requests.get(f"{url}/metrics", timeout=10).text.splitlines() if l.startswith(series + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


OUT_OF_RANGE_FEAT1 = 'xgb_input_out_of_range_total{feature="feat1"}'
RECORDS_CHECKED = "xgb_input_records_checked_total"  # the out-of-range ratio's denominator


def test_out_of_range_is_counted_by_default(live_server):
    before = exposed(live_server, OUT_OF_RANGE_FEAT1), exposed(live_server, RECORDS_CHECKED)
    response = requests.post(f"{live_server}/predict", json={**EXAMPLE_RECORD, "feat1": 500.0}, timeout=10)
    assert response.status_code == 200
    assert exposed(live_server, OUT_OF_RANGE_FEAT1) == before[0] + 1
    assert exposed(live_server, RECORDS_CHECKED) >= before[1] + 1  # other tests may predict meanwhile


def test_out_of_range_is_refused_when_configured(server_factory):
    server = server_factory({"XGB_RANGE_CHECK": "reject"}, workers=1)
    response = requests.post(f"{server.url}/predict", json={**EXAMPLE_RECORD, "feat1": 500.0, "feat12": 0.5}, timeout=10)
    assert response.status_code == 422
    error = response.json()
    assert {d["loc"][0] for d in error["detail"]} == {"feat1", "feat12"}
    assert "between 0 and 120" in error["detail"][0]["msg"] and "0 or 1" in error["detail"][1]["msg"]
    # A refused batch counts its records as checked: 1 of 3 out of range, not 1 per refused request.
    batch = {"instances": [EXAMPLE_RECORD, {**EXAMPLE_RECORD, "feat1": 500.0}, EXAMPLE_RECORD]}
    assert requests.post(f"{server.url}/predict_batch", json=batch, timeout=10).status_code == 422
    assert (exposed(server.url, OUT_OF_RANGE_FEAT1), exposed(server.url, RECORDS_CHECKED)) == (2, 4)
    assert requests.post(f"{server.url}/predict", json=EXAMPLE_RECORD, timeout=10).status_code == 200
