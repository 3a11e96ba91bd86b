"""Settings from the environment: parsed by pydantic-settings, errors naming the variable, the value and what is allowed."""

from __future__ import annotations

import os

import pytest

from serving.settings import Settings, SettingsError, load

pytestmark = pytest.mark.fast


@pytest.fixture
def env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("XGB_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_every_variable_sets_its_field(env):
    values = {
        "XGB_WORKERS": ("3", 3), "XGB_RANGE_CHECK": ("reject", "reject"), "XGB_MAX_BATCH_RECORDS": ("10", 10),
        "XGB_MAX_PREDICT_BYTES": ("1000", 1000), "XGB_MAX_BATCH_BYTES": ("2000", 2000), "XGB_MAX_INFLIGHT": ("7", 7),
        "XGB_BATCH_MAX_SIZE": ("16", 16), "XGB_BATCH_MAX_LATENCY_MS": ("50", 50), "XGB_BATCH_THREADS": ("2", 2),
        "XGB_BATCH_QUEUE": ("0", 0), "XGB_EXPLAIN_THREADS": ("3", 3), "XGB_EXPLAIN_QUEUE": ("10", 10), "XGB_REQUEST_TIMEOUT_S": ("2.5", 2.5),
        "XGB_HEADER_TIMEOUT_S": ("1.5", 1.5), "XGB_IDLE_TIMEOUT_S": ("4", 4.0), "XGB_REUSEPORT": ("0", False), "XGB_DRIFT": ("0", False),
        "XGB_TRACE_SAMPLE": ("0.25", 0.25),
        "XGB_API_KEY": ("s3cret", "s3cret"), "XGB_CORS_ORIGINS": (" https://a.example , https://b.example,", ("https://a.example", "https://b.example")),
        "XGB_CANDIDATE_TAG": ("xgb_classifier:abc", "xgb_classifier:abc"), "XGB_CANDIDATE_MODE": ("canary", "canary"),
        "XGB_CANDIDATE_PERCENT": ("2.5", 2.5), "XGB_SHADOW_MIN_AGREEMENT": ("0.75", 0.75),
        "XGB_CAPTURE": ("5", 5.0), "XGB_CAPTURE_URI": ("s3://bucket/prefix", "s3://bucket/prefix"), "XGB_CAPTURE_FLUSH_SECONDS": ("2", 2.0),
        "XGB_CAPTURE_FLUSH_ROWS": ("100", 100), "XGB_CAPTURE_QUEUE_RECORDS": ("1000", 1000),
    }  # fmt: skip
    assert set(values) == set(Settings.variables()), "every variable is tested"
    for name, (raw, _) in values.items():
        env.setenv(name, raw)
    settings = load()
    for name, (_, parsed) in values.items():
        assert getattr(settings, Settings.variables()[name]) == parsed, name


def test_an_empty_variable_means_the_default(env):
    env.setenv("XGB_MAX_INFLIGHT", "")
    env.setenv("XGB_RANGE_CHECK", "")
    assert (load().max_inflight, load().range_check) == (128, "warn")


@pytest.mark.parametrize(
    "name,raw,allowed",
    [
        ("XGB_MAX_INFLIGHT", "abc", "allowed: an integer >= 1"),
        ("XGB_MAX_INFLIGHT", "0", "allowed: an integer >= 1"),
        ("XGB_BATCH_THREADS", "100", "allowed: an integer >= 1 and <= 64"),
        ("XGB_REQUEST_TIMEOUT_S", "-1", "allowed: a number > 0"),
        ("XGB_HEADER_TIMEOUT_S", "0", "allowed: a number > 0 and <= 3600"),
        ("XGB_IDLE_TIMEOUT_S", "forever", "allowed: a number > 0 and <= 3600"),
        ("XGB_RANGE_CHECK", "maybe", "allowed: one of warn, reject, off"),
        ("XGB_REUSEPORT", "perhaps", "allowed: 1 or 0 (or true/false)"),
        ("XGB_WORKERS", "-2", "allowed: an integer >= 0"),
        ("XGB_CANDIDATE_MODE", "blue-green", "allowed: one of shadow, canary"),
        ("XGB_CANDIDATE_PERCENT", "150", "allowed: a number >= 0 and <= 100"),
        ("XGB_SHADOW_MIN_AGREEMENT", "90", "allowed: a number >= 0 and <= 1"),
        ("XGB_TRACE_SAMPLE", "5", "allowed: a number >= 0 and <= 1"),
    ],
)
def test_a_bad_value_is_one_line_naming_variable_value_and_allowed_range(env, name, raw, allowed):
    env.setenv(name, raw)
    with pytest.raises(SettingsError) as refused:
        load()
    message = str(refused.value)
    assert message.startswith(f"{name}={raw!r} is invalid (") and message.endswith(allowed), message
    assert "\n" not in message


def test_every_bad_variable_is_named_at_once(env):
    env.setenv("XGB_MAX_INFLIGHT", "x")
    env.setenv("XGB_BATCH_QUEUE", "-1")
    message = str(pytest.raises(SettingsError, load).value)
    assert "XGB_MAX_INFLIGHT='x'" in message and "XGB_BATCH_QUEUE='-1'" in message
