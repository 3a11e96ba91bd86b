"""Security defaults: optional API key, CORS off unless configured, no internals in any response."""

from __future__ import annotations

import pytest
import requests

from loadtest.traffic import ServedModel
from model_store.dataset import EXAMPLE_RECORD

KEY = "s3cr3t-key-for-tests"


@pytest.fixture(scope="module")
def keyed_server(server_factory):
    return server_factory({"XGB_API_KEY": KEY, "XGB_CORS_ORIGINS": "https://app.example.com"}, workers=1)


def test_no_key_is_needed_by_default(app_client):
    assert app_client.post("/predict", json=EXAMPLE_RECORD, timeout=10).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY + "x"}, {"X-API-Key": ""}])
def test_a_missing_or_wrong_key_is_401_json(keyed_server, headers):
    for path, body in (("/predict", EXAMPLE_RECORD), ("/predict_batch", {"instances": [EXAMPLE_RECORD]})):
        response = requests.post(f"{keyed_server.url}{path}", json=body, headers=headers, timeout=10)
        assert response.status_code == 401
        assert "API key" in response.json()["error"]
        assert response.headers["www-authenticate"] == "API-Key"
    card = requests.get(f"{keyed_server.url}/metadata", headers=headers, timeout=10)
    assert card.status_code == 401 and "API key" in card.json()["error"], "the model card needs the key too"
    assert card.headers["www-authenticate"] == "API-Key"


def test_the_model_card_is_read_with_the_key_and_the_contract_without(keyed_server, monkeypatch):
    card = requests.get(f"{keyed_server.url}/metadata", headers={"X-API-Key": KEY}, timeout=10)
    assert card.status_code == 200 and card.json()["example"] == EXAMPLE_RECORD
    spec = requests.get(f"{keyed_server.url}/docs.json", timeout=10)
    assert spec.status_code == 200, "the documented contract stays readable"
    assert spec.json()["paths"]["/metadata"]["get"]["security"] == [{"ApiKey": []}]
    monkeypatch.setenv("XGB_API_KEY", KEY)  # the load tests' client reads the card with the service's key
    assert ServedModel.fetch(keyed_server.url).schema.example == EXAMPLE_RECORD


def test_the_right_key_is_accepted_and_probes_stay_open(keyed_server):
    response = requests.post(f"{keyed_server.url}/predict", json=EXAMPLE_RECORD, headers={"X-API-Key": KEY}, timeout=10)
    assert response.status_code == 200
    for probe in ("/healthz", "/livez", "/readyz", "/metrics"):
        assert requests.get(f"{keyed_server.url}{probe}", timeout=10).status_code == 200


def test_cors_is_off_by_default(app_client):
    response = app_client.post("/predict", json=EXAMPLE_RECORD, headers={"Origin": "https://evil.example.com"}, timeout=10
    )
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_only_the_configured_origins(keyed_server):
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-api-key"}
    response = requests.options(f"{keyed_server.url}/predict", headers=preflight, timeout=10)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    response = requests.post(
        f"{keyed_server.url}/predict", json=EXAMPLE_RECORD, headers={"Origin": "https://app.example.com", "X-API-Key": KEY}, timeout=10
    )
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    other = requests.options(f"{keyed_server.url}/predict", headers={**preflight, "Origin": "https://evil.example.com"}, timeout=10)
    assert other.headers.get("access-control-allow-origin") != "https://evil.example.com"


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", "/predict", b"\x00\x01garbage"),
        ("POST", "/predict_batch", b'{"instances": [{"feat1": {"$gt": 1}}]}'),
        ("GET", "/../../etc/passwd", None),
        ("GET", "/no/such/route", None),
        ("POST", "/predict_rows", b"[[1, 2, 3]]"),
        ("DELETE", "/predict", None),
    ],
)
def test_no_response_reveals_internals(live_server, method, path, body):
    response = requests.request(method, f"{live_server}{path}", data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert 400 <= response.status_code < 500
    for leak in ("Traceback", "File \"", "/work/", "site-packages", ".py", "bentoml._internal"):
        assert leak not in response.text, f"{leak!r} leaked in {response.text[:300]!r}"
