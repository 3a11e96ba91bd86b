"""The drift reference and the per-batch binning (model_store/drift.py), and their counters.

The vectorised Binner is checked against a plain per-value implementation written from the
definition, on data with every kind of feature and every special case (below the training minimum,
above the maximum, unknown values, missing values).
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import prometheus_client as prom
import pytest
import requests
from testkit.probes import samples, total
from model_store import drift
from model_store.dataset import FEATURE_NAMES, sample_records
from serving import metrics

FEATURES = (
    SimpleNamespace(name="age", kind="continuous"),
    SimpleNamespace(name="children", kind="continuous"),  # few distinct values: quantiles repeat
    SimpleNamespace(name="flag", kind="binary"),
    SimpleNamespace(name="plan", kind="categorical", categories=("basic", "plus", "pro")),
    SimpleNamespace(name="constant", kind="continuous"),
)


def training_matrix(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.column_stack([
        rng.uniform(18, 90, n),
        rng.poisson(1.2, n).astype(float),
        (rng.random(n) < 0.3).astype(float),
        rng.choice(3, n, p=[0.5, 0.3, 0.2]).astype(float),
        np.full(n, 7.0),
    ])  # fmt: skip
    x[rng.random(n) < 0.05, 3] = np.nan  # a nullable categorical
    return x


def slow_bin(value: float, entry: dict) -> int:
    """The bin of one value, from the definition."""
    if math.isnan(value):
        return len(entry["bins"]) - 1
    if "edges" in entry:
        edges = entry["edges"]
        if value < edges[0]:
            return len(edges) - 1
        if value > edges[-1]:
            return len(edges)
        return next(i for i in range(len(edges) - 1) if value < edges[i + 1] or i == len(edges) - 2)
    values = entry["values"]
    return values.index(value) if value in values else len(values)


@pytest.fixture(scope="module")
def ref() -> dict:
    rng = np.random.default_rng(0)
    return drift.reference(training_matrix(rng, 5000), FEATURES, rng.choice(3, 1000, p=[0.6, 0.3, 0.1]), ("a", "b", "c"))


def test_reference_describes_each_kind_of_feature(ref):
    age, children, flag, plan, constant = ref["features"]
    lo, hi = age["edges"][0], age["edges"][-1]
    assert len(age["edges"]) == drift.QUANTILE_BINS + 1 and (lo, hi) == pytest.approx((18, 90), abs=0.1)
    assert age["bins"][0].startswith(f"[{lo:.4g}, ") and age["bins"][9].endswith(f", {hi:.4g}]")
    assert age["bins"][10:] == [f"<{lo:.4g}", f">{hi:.4g}", drift.MISSING]
    assert age["shares"][:10] == pytest.approx([0.1] * 10, abs=0.002) and age["shares"][10:] == [0, 0, 0]
    # Poisson counts: repeated quantiles collapse; every regular bin holds training data.
    assert children["edges"] == sorted(set(children["edges"])) and all(s > 0 for s in children["shares"][: len(children["edges"]) - 1])
    assert flag["bins"] == ["0", "1", drift.OTHER, drift.MISSING] and flag["shares"][1] == pytest.approx(0.3, abs=0.02)
    assert plan["bins"] == ["basic", "plus", "pro", drift.OTHER, drift.MISSING] and plan["shares"][4] == pytest.approx(0.05, abs=0.01)
    assert constant["edges"] == [7.0, 7.0] and constant["shares"] == [1.0, 0, 0, 0]
    for entry in ref["features"]:
        assert sum(entry["shares"]) == pytest.approx(1.0, abs=1e-5), entry["name"]
    assert ref["predicted_class_shares"] == pytest.approx({"a": 0.6, "b": 0.3, "c": 0.1}, abs=0.04)


@pytest.mark.parametrize("n", [drift.GROUPED_FROM_ROWS - 1, 400])  # both ways of comparing
def test_vectorised_bins_equal_the_definition(ref, n):
    rng = np.random.default_rng(1)
    rows = training_matrix(rng, n)
    rows[::7, 0] = rng.choice([-5.0, 17.9, 90.5, 200.0, np.nan], len(rows[::7]))  # below, above, missing
    rows[::5, 1] = rng.choice([-1.0, 50.0, 0.5, np.nan], len(rows[::5]))
    rows[::3, 2] = rng.choice([0.5, 2.0, -1.0, np.nan], len(rows[::3]))  # not 0/1: "(other)"
    rows[::4, 3] = rng.choice([3.0, 1.5, -1.0, np.nan], len(rows[::4]))  # unknown codes
    rows[::6, 4] = rng.choice([6.0, 8.0, 7.0], len(rows[::6]))
    binner = drift.Binner(ref, [f.name for f in FEATURES])
    got = binner.bins(rows)
    for j, entry in enumerate(ref["features"]):
        expected = [binner.spans[j][0] + slow_bin(v, entry) for v in rows[:, j]]
        assert got[:, j].tolist() == expected, entry["name"]
    counts = binner.counts(rows)
    assert counts.sum() == rows.size and counts.tolist() == np.bincount(got.ravel(), minlength=binner.n_bins).tolist()
    assert [label for _, label in binner.labels[: len(ref["features"][0]["bins"])]] == ref["features"][0]["bins"]


def test_training_shares_are_the_binner_counts_of_the_training_data():
    rng = np.random.default_rng(2)
    x = training_matrix(rng, 3000)
    ref = drift.reference(x, FEATURES)
    binner = drift.Binner(ref)
    assert binner.shares == pytest.approx(binner.counts(x) / len(x), abs=1e-6)


def test_a_reference_for_other_features_is_refused(ref):
    with pytest.raises(ValueError, match="differ from the model's schema"):
        drift.Binner(ref, ["age", "children", "flag", "plan", "renamed"])


def test_a_category_named_like_a_special_bin_is_refused():
    feature = SimpleNamespace(name="colour", kind="categorical", categories=("red", drift.MISSING))
    with pytest.raises(ValueError, match="colour"):
        drift.reference(np.zeros((10, 1)), [feature])


def test_feature_drift_counts_every_record_once_per_flush(ref):
    binner = drift.Binner(ref)
    counter = metrics.FeatureDrift(binner)
    rows = training_matrix(np.random.default_rng(3), 250)

    def exported() -> np.ndarray:
        return np.array([prom.REGISTRY.get_sample_value("xgb_feature_bin_total", {"feature": f, "bin": b}) for f, b in binner.labels])

    before = exported()
    counter.observe(rows[:100])
    counter.observe(rows[100:])
    assert (exported() == before).all()  # counted per batch, exported at the next flush
    counter.flush()
    assert (exported() - before).tolist() == binner.counts(rows).tolist()
    counter.flush()  # nothing new: nothing added
    assert (exported() - before).tolist() == binner.counts(rows).tolist()
    shares = [prom.REGISTRY.get_sample_value("xgb_feature_reference_ratio", {"feature": f, "bin": b}) for f, b in binner.labels]
    assert shares == pytest.approx(binner.shares.tolist())


@pytest.mark.parametrize("setting,counted", [(None, True), ("0", False)])
def test_xgb_drift_turns_feature_drift_counting_off_and_keeps_class_drift(server_factory, setting, counted):
    server = server_factory({"XGB_DRIFT": setting} if setting else None, workers=1)
    records = sample_records(np.random.default_rng(5), 50)
    assert requests.post(f"{server.url}/predict_batch", json={"instances": records}, timeout=30).status_code == 200
    deadline = time.monotonic() + 10
    while counted and total(samples(server.url), "xgb_feature_bin_total") < 50 * len(FEATURE_NAMES) and time.monotonic() < deadline:
        time.sleep(0.2)  # counted at the worker's next once-a-second flush
    time.sleep(0 if counted else 1.5)  # (off: a flush has passed, and still nothing)
    found = samples(server.url)
    assert total(found, "xgb_feature_bin_total") == (50 * len(FEATURE_NAMES) if counted else 0), "every value of every record, once"
    assert bool(found.get("xgb_feature_reference_ratio")) is counted
    assert total(found, "xgb_class_reference_ratio") == pytest.approx(1, abs=1e-3), "class drift stays either way"
    assert total(found, "xgb_predictions_total") == 50
    assert ("feature drift counting is off (XGB_DRIFT=0)" in server.log()) is not counted
