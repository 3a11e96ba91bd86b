"""Every reach into a library's internals is checked at start and has a public fallback that gives
the same answers (the tables in serving/bentoml_internals.py, serving/uvicorn_internals.py,
serving/metrics.py, model_store/bundle.py and model_store/stores.py)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import prometheus_client as prom
import pytest
import requests

from model_store import bundle
from model_store.dataset import EXAMPLE_RECORD
from serving import bentoml_internals, errors, metrics, pins, uvicorn_internals
from testkit.probes import without_request_ids
from testkit.transport import RecordingTransport

# -- version pins ------------------------------------------------------------------------------


@pytest.mark.fast
def test_the_installed_libraries_are_the_pinned_ones():
    assert pins.differences() == [], "a pinned library changed version: re-check the module named, then update its pin"


@pytest.mark.fast
def test_the_modules_pins_are_requirements_ins():
    from pathlib import Path

    pinned = dict(line.split("==", 1) for line in (Path(__file__).resolve().parent.parent / "requirements.in").read_text().split()
                  if "==" in line and not line.startswith("#"))  # fmt: skip
    for distribution in ("bentoml", "uvicorn", "starlette", "xgboost-cpu"):
        assert pins.PINS[distribution][0] == pinned[distribution], f"{distribution}: {pins.PINS[distribution][1]} and requirements.in disagree"


@pytest.mark.fast
def test_a_library_other_than_its_pin_is_named_with_the_module_to_recheck(caplog):
    found = pins.differences({"uvicorn": ("0.1.0", "serving/uvicorn_internals.py"), "no-such-dist": ("1.0", "x.py")})
    assert len(found) == 2
    assert "uvicorn 0.54.0 is installed, serving/uvicorn_internals.py was checked against 0.1.0" in found[0]
    assert "no-such-dist not installed" in found[1]


# -- XGBoost's C predict -----------------------------------------------------------------------


def _booster(objective: str, classes: int = 0):
    xgb = bundle.import_xgboost()
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 4))
    x[rng.random(x.shape) < 0.05] = np.nan
    if objective == "multi:softprob":
        y = (np.nan_to_num(x[:, 0]) > 0).astype(int) + (np.nan_to_num(x[:, 1]) > 0.5).astype(int)
    elif objective == "binary:logistic":
        y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 2]) > 0).astype(int)
    else:
        y = np.nan_to_num(x[:, 0]) * 3 + np.nan_to_num(x[:, 3])
    params = {"objective": objective, "max_depth": 3, **({"num_class": classes} if classes else {})}
    return xgb.train(params, xgb.DMatrix(x, label=y), 10), x


class _Broken:
    def __init__(self, booster):
        raise AttributeError("module 'xgboost.core' has no attribute '_LIB'")


class _Wrong(bundle.DensePredictor):
    def __call__(self, x):
        return super().__call__(x) + 1e-3


@pytest.mark.fast
@pytest.mark.parametrize("objective,classes", [("binary:logistic", 0), ("multi:softprob", 3), ("reg:squarederror", 0)])
def test_the_c_predict_is_checked_at_load_and_the_public_fallback_answers_the_same(objective, classes, caplog):
    booster, x = _booster(objective, classes)
    probe = x[:3]
    assert type(bundle.checked_predictor(booster, probe)) is bundle.DensePredictor
    fast = bundle.DensePredictor(booster)(x)
    for broken, said in ((_Broken, "failed (AttributeError"), (_Wrong, "answers differently from Booster.inplace_predict()")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="xgb_service"):
            fallback = bundle.checked_predictor(booster, probe, fast=broken)
        assert type(fallback) is bundle.InplacePredictor
        assert said in caplog.text
        got = fallback(x)
        assert got.shape == fast.shape and got.dtype == fast.dtype
        np.testing.assert_array_equal(got, fast)


def test_a_loaded_bundle_predicts_with_the_checked_c_predict(bentoml_home):
    loaded = bundle.load_bundle()
    assert type(loaded.predict_scaled) is bundle.DensePredictor


# -- BentoML's ModelStore: the home store published models are imported into -------------------


def test_a_model_only_the_home_store_holds_is_found_there(bentoml_home, tmp_path, monkeypatch):
    """Serving a built Bento, BentoML's store is the Bento's; stores.get() then finds a model
    imported into $BENTOML_HOME/models (here: another home than the serving store)."""
    import bentoml

    from model_store import stores

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    store = stores.home_store()
    assert store is not None and stores.home_path() == str(tmp_path / "models")
    with bentoml.models.create("reach_probe", **stores.home_store_argument()) as model:
        pass
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get(model.tag)  # not in the serving store
    assert stores.get(str(model.tag)).path == str(tmp_path / "models" / "reach_probe" / model.tag.version)
    assert stores.get("xgb_classifier:latest").tag == bentoml.models.get("xgb_classifier:latest").tag  # the serving store first
    with pytest.raises(bentoml.exceptions.NotFound):
        stores.get("reach_probe:nosuchversion")


def test_a_moved_model_store_falls_back_to_the_serving_store(bentoml_home, tmp_path, monkeypatch, caplog):
    import bentoml
    import bentoml._internal.models

    from model_store import stores

    class Moved:
        def __init__(self, path):
            raise TypeError("ModelStore.__init__() takes a filesystem")

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "moved"))
    monkeypatch.setattr(bentoml._internal.models, "ModelStore", Moved)
    with caplog.at_level(logging.WARNING, logger="xgb_service"):
        assert stores.home_store() is None
    assert "update model_store/stores.py" in caplog.text
    assert stores.home_store_argument() == {}
    assert stores.get("xgb_classifier:latest").tag == bentoml.models.get("xgb_classifier:latest").tag
    with pytest.raises(bentoml.exceptions.NotFound):
        stores.get("xgb_classifier:nosuchversion")


# -- prometheus_client's histogram fields ------------------------------------------------------


def _samples(metric):
    return [(s.name, s.labels.get("le"), round(s.value, 6)) for s in metric.collect()[0].samples if not s.name.endswith("_created")]


@pytest.mark.fast
@pytest.mark.parametrize("values", [[0.5], [0.2, 0.2000001, 0.95, 1.0, 0.33], list(np.random.default_rng(2).random(500))])
def test_observing_value_by_value_when_the_fields_moved_gives_the_same_metrics(values, monkeypatch):
    buckets = (0.2, 0.5, 0.9, 1.0)
    fast = prom.Histogram("h", "", buckets=buckets, registry=prom.CollectorRegistry())
    fallback = prom.Histogram("h", "", buckets=buckets, registry=prom.CollectorRegistry())
    metrics.observe_many(fast, np.asarray(values))
    monkeypatch.setattr(metrics, "FAST_OBSERVE", False)
    metrics.observe_many(fallback, np.asarray(values))
    assert _samples(fast) == _samples(fallback)


@pytest.mark.fast
def test_the_histogram_fields_are_checked(monkeypatch):
    metrics.check_internals()
    assert metrics.FAST_OBSERVE
    gutted = prom.Histogram("g", "", buckets=(1.0,), registry=prom.CollectorRegistry())
    del gutted._buckets
    with pytest.raises(metrics.PrometheusInternalsChanged, match="_upper_bounds/_buckets"):
        metrics.check_internals(histogram=gutted)
    summary = prom.Summary("s", "", registry=prom.CollectorRegistry())
    summary._count = None
    with pytest.raises(metrics.PrometheusInternalsChanged, match="Summary._count"):
        metrics.check_internals(summary=summary)


# -- BentoML's traffic metrics -----------------------------------------------------------------


@pytest.mark.fast
def test_bentoml_traffic_metrics_missing_a_metric_is_refused_naming_it():
    class Middleware:
        _is_setup = False

        def _setup(self):
            self._is_setup = True
            self.metrics_request_total = prom.Counter("t", "", ["endpoint"], registry=prom.CollectorRegistry())

    with pytest.raises(bentoml_internals.BentoMLInternalsChanged, match="metrics_request_duration, metrics_request_in_progress"):
        bentoml_internals.TrafficMetrics(Middleware())  # type: ignore[arg-type]
    with pytest.raises(bentoml_internals.BentoMLInternalsChanged, match="no _setup"):
        bentoml_internals.TrafficMetrics(object())  # type: ignore[arg-type]
    assert bentoml_internals.TrafficMetrics(None).started("/predict") > 0, "metrics off: nothing to check"


# -- uvicorn: slow headers ---------------------------------------------------------------------


async def _ok(scope, receive, send):
    await receive()
    await errors.respond(send, 200, b"{}")


def _protocol(header_timeout_s: float = 0.2, idle_timeout_s: float = 0.3, keep_alive_s: int = 1):
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    timeouts = []
    protocol_class = type("Bounded", (uvicorn_internals.BoundedHeaders,), {
        "header_timeout_s": header_timeout_s, "idle_timeout_s": idle_timeout_s, "on_timeout": staticmethod(lambda: timeouts.append(1))})  # fmt: skip
    config = Config(app=_ok, http="httptools", lifespan="off", log_config=None, proxy_headers=False, timeout_keep_alive=keep_alive_s)
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport, timeouts


@pytest.mark.fast
def test_headers_sent_a_byte_at_a_time_are_cut_at_the_header_timeout_with_a_408():
    async def run():
        protocol, transport, timeouts = _protocol(header_timeout_s=0.3)
        for byte in b"POST /predict HTTP/1.1\r\nHost: x\r\n":
            protocol.data_received(bytes([byte]))
            await asyncio.sleep(0.02)
            if transport.closed:
                break
        return transport, timeouts

    transport, timeouts = asyncio.run(run())
    assert transport.closed and timeouts == [1]
    assert transport.writes[0].startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"XGB_HEADER_TIMEOUT_S" in transport.writes[0]


@pytest.mark.fast
def test_a_silent_new_connection_is_closed_at_the_idle_timeout():
    async def run():
        protocol, transport, _ = _protocol(idle_timeout_s=0.1)
        await asyncio.sleep(0.3)
        return transport

    transport = asyncio.run(run())
    assert transport.closed and transport.writes == [], "closed without an answer: there was no request"


@pytest.mark.fast
def test_an_idle_keep_alive_connection_is_governed_by_the_keep_alive_timeout_not_the_header_timeout():
    request = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"

    async def run():
        protocol, transport, _ = _protocol(header_timeout_s=0.1, idle_timeout_s=0.1, keep_alive_s=1)
        protocol.data_received(request)
        for _ in range(20):
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)  # past the header and idle timeouts, within the keep-alive one
        open_after_half_a_second = not transport.closed
        protocol.data_received(request)  # a whole second request on the same connection
        for _ in range(20):
            await asyncio.sleep(0)
        answered_twice = sum(w.startswith(b"HTTP/1.1 200") for w in transport.writes)
        await asyncio.sleep(1.2)  # past uvicorn's keep-alive timeout
        return open_after_half_a_second, answered_twice, transport.closed

    open_after_half_a_second, answered_twice, closed_later = asyncio.run(run())
    assert open_after_half_a_second and answered_twice == 2
    assert closed_later, "uvicorn's keep-alive timeout still closes it"


@pytest.mark.fast
def test_uvicorn_is_as_bound_slow_headers_expects_and_the_fallback_is_uvicorns_own(monkeypatch, caplog):
    import uvicorn.protocols.http.auto as auto

    uvicorn_internals.check()
    monkeypatch.setattr(auto, "AutoHTTPProtocol", auto.AutoHTTPProtocol)  # restored after the test
    assert uvicorn_internals.bound_slow_headers(2.0, 3.0, lambda: None)
    assert auto.AutoHTTPProtocol is uvicorn_internals.BoundedHeaders
    assert (uvicorn_internals.BoundedHeaders.header_timeout_s, uvicorn_internals.BoundedHeaders.idle_timeout_s) == (2.0, 3.0)
    from uvicorn.protocols.http.h11_impl import H11Protocol

    monkeypatch.setattr(auto, "AutoHTTPProtocol", H11Protocol)
    with caplog.at_level(logging.WARNING, logger="xgb_service"):
        assert not uvicorn_internals.bound_slow_headers(2.0, 3.0, lambda: None)
    assert auto.AutoHTTPProtocol is H11Protocol, "unchanged"
    assert "slow-header connections are not bounded" in caplog.text


def _request_total(url: str, endpoint: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("bentoml_service_request_total{") and f'endpoint="{endpoint}"' in line and 'http_response_code="200"' in line)  # fmt: skip


def test_moved_bentoml_traffic_metrics_fall_back_to_bentomls_chain_with_the_same_answers(server_factory, live_server):
    moved = server_factory(workers=1, service=("tests.moved_traffic_metrics_service:XGBoostService",))
    assert "the prediction routes stay inside BentoML's middleware chain" in moved.log()
    assert "no _setup()/_is_setup" in moved.log()
    before = _request_total(moved.url, "/predict")
    for path, body in (("/predict", EXAMPLE_RECORD), ("/predict_batch", {"instances": [EXAMPLE_RECORD] * 3}),
                       ("/explain", EXAMPLE_RECORD), ("/predict", {**EXAMPLE_RECORD, "no_such_field": 1})):  # fmt: skip
        fallback = requests.post(f"{moved.url}{path}", json=body, timeout=30)
        fast = requests.post(f"{live_server}{path}", json=body, timeout=30)
        comparable = without_request_ids if path == "/predict_batch" else (lambda answer: answer)
        assert (fallback.status_code, comparable(fallback.json())) == (fast.status_code, comparable(fast.json())), path
    assert _request_total(moved.url, "/predict") == before + 1, "BentoML's chain counts the request the fast path no longer counts"
