"""Capture in process: request ids, the Parquet records' types from the schema, drops, settings."""

from __future__ import annotations

import json
import os
import re
import types

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest

from model_store import captured
from model_store.schema import Feature, ModelSchema
from serving import capture, metrics, request_ids
from serving.rollout import Scored
from serving.settings import Settings, SettingsError, load

pytestmark = pytest.mark.fast

SCHEMA = ModelSchema(
    task="binary",
    features=(Feature("amount", "continuous", 0, 100, nullable=True), Feature("is member", "binary", 0, 1),
              Feature("plan", "categorical", categories=("basic", "plus", "premium"), nullable=True)),  # fmt: skip
    class_names=("no", "yes"),
    example={"amount": 1.0, "is member": 0.0, "plan": "basic"},
)
PRIMARY = types.SimpleNamespace(schema=SCHEMA, version="v1")


def scope(*headers: tuple[bytes, bytes]) -> dict:
    return {"headers": list(headers)}


def test_a_valid_client_request_id_is_kept_and_an_invalid_one_replaced():
    kept = scope((b"x-request-id", b"order-42:retry.1_a"))
    assert request_ids.assign(kept) == "order-42:retry.1_a" and request_ids.of(kept) == "order-42:retry.1_a"
    assert request_ids.with_header(kept, None) == [(b"x-request-id", b"order-42:retry.1_a")]
    for bad in (b"", b"has space", b"x" * 129, "é".encode(), b"a/b"):
        new = request_ids.assign(scope((b"x-request-id", bad)))
        assert len(new) >= 24 and re.fullmatch("[0-9a-f]+", new) and new != bad.decode("latin-1"), bad
    first, second = request_ids.assign(scope()), request_ids.assign(scope())
    assert first != second, "a new id per request"
    answers = request_ids.label_records("r1", [{"a": 1}, {"a": 2}])
    assert [a["request_id"] for a in answers] == ["r1-0", "r1-1"] == [request_ids.record_id("r1", i) for i in range(2)]


def settings(tmp_path, **values) -> Settings:
    return Settings(capture=100, capture_uri=str(tmp_path / "capture"), **values)


def rows() -> np.ndarray:
    # amount null in row 1, plan null in row 2; "plan" codes 2 and 0
    return np.array([[12.5, 1.0, 2.0], [np.nan, 0.0, 0.0], [99.0, 1.0, np.nan]])


def answers(n: int) -> list[dict]:
    return [{"predicted_class": i % 2, "predicted_label": "no", "confidence": 0.75, "model_version": "v1", "features_used": 3,
             "probabilities": [0.25, 0.75]} for i in range(n)]  # fmt: skip


def scores(n: int) -> Scored:
    """A model call's outputs for n records: class 1 at 0.75 (as answers() answers, in the batch path's form)."""
    return Scored(np.tile([0.25, 0.75], (n, 1)), np.ones(n, dtype=np.int64), [])


def test_captured_records_are_typed_from_the_schema_and_partitioned(tmp_path):
    writer = capture.Capture(settings(tmp_path), PRIMARY, None, None)
    writer.record_answer("one", rows()[:1], orjson.dumps(answers(1)[0]))
    writer.record_scores("many", rows(), scores(3), "v1")
    writer.record_explanations("explained", rows()[1:2], [{"prediction": answers(1)[0], "margin": 1.0}], batch=False)
    assert writer.flush() == 5
    files = [os.path.relpath(os.path.join(d, f), tmp_path / "capture") for d, _, fs in os.walk(tmp_path / "capture") for f in fs]
    assert len(files) == 1 and files[0].startswith("model_version=v1/hour=") and files[0].endswith(".parquet"), files
    frame = pd.read_parquet(tmp_path / "capture")  # pandas, hive partitions and all
    assert list(frame["request_id"]) == ["one", "many-0", "many-1", "many-2", "explained"]
    assert str(frame["amount"].dtype) == "float64" and frame["amount"].isna().tolist() == [False, False, True, False, True]
    assert frame["is member"].tolist() == [True, True, False, True, False]
    assert isinstance(frame["plan"].dtype, pd.CategoricalDtype) and list(frame["plan"].cat.categories) == ["basic", "plus", "premium"]
    assert frame["plan"].tolist()[:3] == ["premium", "premium", "basic"] and pd.isna(frame["plan"][3])
    assert set(frame["role"]) == {"primary"} and set(frame["model_version"]) == {"v1"}
    assert frame["probabilities"].map(list).tolist() == [[0.25, 0.75]] * 5
    assert frame["predicted_class"].tolist() == [0, 1, 1, 1, 0] and frame["confidence"].tolist() == [0.75] * 5
    table = pq.read_table(os.path.join(tmp_path / "capture", files[0]))
    assert table.schema.equals(captured.arrow_schema(SCHEMA)), table.schema
    assert str(table.schema.field("plan").type) == "dictionary<values=string, indices=int16, ordered=0>"


def test_the_writer_hands_arrow_each_feature_without_a_copy_and_keeps_statistics_for_selecting_records(tmp_path):
    parts = [rows(), rows()[::-1]]
    columns = capture._columns(parts)
    assert columns.flags.c_contiguous and columns.shape == (SCHEMA.n_features, 6)
    assert np.array_equal(columns, np.concatenate(parts).T, equal_nan=True)
    amount = captured.feature_arrays(SCHEMA, columns)[0]
    assert amount.buffers()[1].address == columns[0].ctypes.data, "the feature's values were copied"
    writer = capture.Capture(settings(tmp_path), PRIMARY, None, None)
    writer.record_scores("many", rows(), scores(3), "v1")
    assert writer.flush() == 3
    (path,) = (tmp_path / "capture").rglob("*.parquet")
    group = pq.read_metadata(path).row_group(0)
    with_statistics = {group.column(i).path_in_schema for i in range(group.num_columns) if group.column(i).is_stats_set}
    assert with_statistics == {"request_id", "timestamp"}, with_statistics


def test_a_capturing_worker_keeps_freed_memory_for_reuse_and_says_when_it_cannot(caplog):
    import pyarrow as pa

    assert capture.keep_freed_memory() is True  # glibc, as on this machine and in the image
    assert pa.default_memory_pool().backend_name == "system", "Arrow's buffers come from the tuned malloc"
    with caplog.at_level("WARNING", logger="xgb_service"):
        assert capture.keep_freed_memory("libno-such-allocator.so") is False
    assert "cannot tune the allocator" in caplog.text


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_every_route_captures_exactly_the_answer_it_sent(tmp_path, task):
    """/predict's answers are parsed back from their JSON, /predict_batch's rebuilt from the model's
    outputs: both must give, in float32, what a client decoding the answer gets."""
    from model_store.answers import predicted
    from serving.contract import Contract

    features = (Feature("x", "continuous"), Feature("y", "continuous"))
    classes = ("a", "b", "c") if task == "multiclass" else ()
    schema = ModelSchema(task=task, features=features, class_names=classes, example={"x": 0.0, "y": 0.0})
    model = types.SimpleNamespace(schema=schema, version="v7")
    contract = Contract(schema, Settings())
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(200, 2))
    if task == "multiclass":
        outputs = rng.dirichlet([0.3, 0.3, 0.3], size=200)  # near-ties and tiny probabilities round differently
        found, confidence = predicted(outputs)
        bodies = contract.class_bodies(outputs, found, confidence, "v7")
    else:
        outputs, found = rng.normal(scale=1e4, size=200).astype(np.float32), None
        bodies = contract.value_bodies(outputs, "v7")
    writer = capture.Capture(settings(tmp_path), model, None, None)
    for i in range(100):
        writer.record_answer(f"one-{i}", rows[i : i + 1], orjson.dumps(bodies[i]))
    writer.record_scores("many", rows[100:], Scored(outputs[100:], None if found is None else found[100:], bodies[100:]), "v7")
    assert writer.flush() == 200
    table = pq.read_table(tmp_path / "capture").sort_by("timestamp")
    sent = [json.loads(orjson.dumps(body)) for body in bodies]  # as a client decodes them
    if task == "multiclass":
        assert table.column("predicted_class").to_pylist() == [b["predicted_class"] for b in sent]
        assert np.array_equal(table.column("confidence").to_numpy(), np.float32([b["confidence"] for b in sent]))
        assert np.array_equal(np.stack(table.column("probabilities").to_numpy(zero_copy_only=False)), np.float32([b["probabilities"] for b in sent]))
    else:
        assert np.array_equal(table.column("prediction").to_numpy(), np.float32([b["prediction"] for b in sent]))
    assert np.array_equal(np.column_stack([table.column("x").to_numpy(), table.column("y").to_numpy()]), rows)


def test_a_full_queue_and_a_failing_sink_drop_and_count_records_without_raising(tmp_path):
    writer = capture.Capture(settings(tmp_path, capture_queue_records=4), PRIMARY, None, None)
    full = metrics.capture_dropped.labels(reason="queue_full")
    failed = metrics.capture_dropped.labels(reason="sink_error")
    before_full, before_failed = full._value.get(), failed._value.get()
    writer.record_scores("a", rows(), scores(3), "v1")
    writer.record_scores("b", rows(), scores(3), "v1")  # 6 > 4: dropped whole
    assert full._value.get() - before_full == 3 and writer.pending_records == 3

    def broken(key: str, data: bytes) -> None:
        raise OSError("disk full")

    writer.sink.write = broken
    assert writer.flush() == 0 and failed._value.get() - before_failed == 3 and writer.pending_records == 0


def test_sampling_keeps_about_the_share(tmp_path):
    writer = capture.Capture(settings(tmp_path).model_copy(update={"capture": 10.0}), PRIMARY, None, None)
    for i in range(2000):
        writer.record_answer(f"r{i}", rows()[:1], orjson.dumps(answers(1)[0]))
    writer.record_scores("big", np.repeat(rows(), 1000, axis=0), scores(3000), "v1")
    kept = writer.flush()
    assert 300 < kept < 700, kept  # 10 % of 5,000 records


def test_close_writes_what_is_pending_once(tmp_path):
    writer = capture.Capture(settings(tmp_path, capture_flush_seconds=3600), PRIMARY, None, None)
    writer.start()
    writer.record_scores("x", rows(), scores(3), "v1")
    writer.close()
    assert pd.read_parquet(tmp_path / "capture")["request_id"].tolist() == ["x-0", "x-1", "x-2"]


@pytest.fixture
def env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("XGB_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_capture_settings_are_checked_and_named(env, tmp_path):
    assert load().capture == 0
    env.setenv("XGB_CAPTURE", "off")
    assert load().capture == 0
    env.setenv("XGB_CAPTURE", "12.5")
    with pytest.raises(SettingsError, match=r"XGB_CAPTURE_URI=.*set XGB_CAPTURE_URI"):
        load()
    env.setenv("XGB_CAPTURE_URI", "gs://bucket/x")
    with pytest.raises(SettingsError, match=r"XGB_CAPTURE_URI='gs://bucket/x' is invalid .*s3://bucket/prefix"):
        load()
    env.setenv("XGB_CAPTURE_URI", "s3:///prefix")
    with pytest.raises(SettingsError, match="names its bucket"):
        load()
    env.setenv("XGB_CAPTURE_URI", str(tmp_path))
    assert (load().capture, load().capture_uri) == (12.5, str(tmp_path))
    env.setenv("XGB_CAPTURE", "150")
    with pytest.raises(SettingsError, match=r"XGB_CAPTURE='150' is invalid .*allowed: off, or a percent from 0 to 100"):
        load()
    env.setenv("XGB_CAPTURE", "100")
    env.setenv("XGB_CAPTURE_FLUSH_SECONDS", "0")
    with pytest.raises(SettingsError, match="XGB_CAPTURE_FLUSH_SECONDS"):
        load()


def test_an_unwritable_directory_or_a_feature_named_like_a_capture_column_stops_the_start(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(captured.CaptureError, match="XGB_CAPTURE_URI=.*not writable"):
        capture.start(Settings(capture=100, capture_uri=str(tmp_path / "file" / "sub")), PRIMARY, None, None)
    clash = types.SimpleNamespace(schema=ModelSchema("regression", (Feature("timestamp", "continuous"),), (), {"timestamp": 0.0}), version="v")
    with pytest.raises(captured.CaptureError, match="feature 'timestamp'"):
        capture.start(Settings(capture=100, capture_uri=str(tmp_path)), clash, None, None)
    assert capture.start(Settings(), PRIMARY, None, None) is None, "off: no Capture, the request path tests for None"


def test_the_cors_options_expose_the_request_id():
    from serving.fastpath import cors_options

    options = cors_options(Settings(cors_origins=("https://a.example",)))
    assert options["expose_headers"] == ["X-Request-ID"] and "X-Request-ID" in options["allow_headers"], json.dumps(options)


def test_the_openapi_document_declares_the_request_id_header():
    from model_store import dataset
    from serving.contract import Contract
    from serving.openapi import build

    doc = build(Contract(dataset.SCHEMA, Settings()), Settings(), ["v1"])
    for path in ("/predict", "/predict_batch", "/explain", "/explain_batch"):
        operation = doc["paths"][path]["post"]
        assert any(p["name"] == "X-Request-ID" and p["in"] == "header" for p in operation["parameters"]), path
        assert operation["responses"]["200"]["headers"]["X-Request-ID"]["required"] is True, path
    schemas = doc["components"]["schemas"]
    assert schemas["BatchResponse"]["properties"]["predictions"]["items"]["$ref"].endswith("/BatchPrediction")
    assert "request_id" in schemas["BatchPrediction"]["required"], "a batch answer's records carry request_id"
    assert "request_id" not in schemas["Prediction"]["properties"], "/predict's answer is unchanged (the id is the header)"
    assert "request_id" in schemas["BatchExplanation"]["required"]
