"""The service's own Prometheus metrics (BentoML's request and batching metrics come for free).

`bentoml serve` gives every worker PROMETHEUS_MULTIPROC_DIR in its environment, so these
prometheus_client metrics are multiprocess: each worker writes its own series and /metrics,
answered by any worker, sums them.

| reach (prometheus_client 0.26.0, the lock's pin) | used by        | checked at start (check_internals) | public fallback                 |
|--------------------------------------------------|----------------|------------------------------------|---------------------------------|
| Histogram child's _upper_bounds, _buckets, _sum  | observe_many() | each is there, one bucket per bound, with .inc | observe() per value   |
| Summary's _count, _sum                           | observe_values() | each is there, with .inc         | observe() per value             |

Both write what observe() itself writes, once per batch instead of once per value (one
multiprocess file write each: docs/performance.md); tests/test_metrics.py checks the result equals
observe() value by value, and that the fallback gives the same.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from typing import Any, Callable

import numpy as np
import prometheus_client as prom
import prometheus_client.multiprocess

from model_store.drift import Binner

PROMETHEUS_CLIENT_VERSION = "0.26.0"

# BentoML's request-duration buckets (service.py passes them to BentoML's `metrics.duration`
# config). BentoML's default starts at 5 ms, while /predict takes well under that (docs/performance.md):
# p50 and p95 would be interpolated inside the first bucket. Sub-millisecond to the 30 s request timeout; 0.05 is the
# latency SLO's threshold (monitoring/slo.md), so the SLO's good-event count is exact.
REQUEST_DURATION_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015,
                            0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # fmt: skip

predictions = prom.Counter(
    name="xgb_predictions_total", documentation="Predictions served, by predicted class", labelnames=["predicted_class"]
)
prediction_value = prom.Summary(
    name="xgb_prediction_value",
    documentation="Regression predictions: their count and sum (the served mean is sum / count)",
)
confidence = prom.Histogram(
    name="xgb_prediction_confidence",
    documentation="Probability of the predicted class",
    buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
records_checked = prom.Counter(
    name="xgb_input_records_checked_total",
    documentation="Records whose values were checked against the feature schema's ranges",
)
out_of_range = prom.Counter(
    name="xgb_input_out_of_range_total",
    documentation="Input values outside the feature schema's allowed range, by feature",
    labelnames=["feature"],
)
rejected = prom.Counter(
    name="xgb_rejected_requests_total", documentation="Requests refused before the model, by reason", labelnames=["reason"]
)
model_info = prom.Gauge(
    name="xgb_model_info",
    documentation="The served model (value 1)",
    labelnames=["model_tag", "model_version"],
    multiprocess_mode="max",
)
class_prior = prom.Gauge(
    name="xgb_class_prior",
    documentation="Share of each class in the model's training labels",
    labelnames=["predicted_class"],
    multiprocess_mode="max",
)
class_reference = prom.Gauge(
    name="xgb_class_reference_ratio",
    documentation="Share of each predicted class on the model's held-out data at training (what class drift compares with)",
    labelnames=["predicted_class"],
    multiprocess_mode="max",
)
feature_bins = prom.Counter(
    name="xgb_feature_bin_total",
    documentation="Predicted records by feature and the training-distribution bin its value fell in",
    labelnames=["feature", "bin"],
)
feature_reference = prom.Gauge(
    name="xgb_feature_reference_ratio",
    documentation="Share of the training data in each feature's bin (what feature drift compares with)",
    labelnames=["feature", "bin"],
    multiprocess_mode="max",
)
resident_memory = prom.Gauge(
    name="xgb_process_resident_memory_bytes",
    documentation="Resident memory of the serving workers, summed",
    multiprocess_mode="livesum",
)
# A counter: a replaced worker's seconds stay in the sum (its file is kept), so rate() is exact.
cpu_seconds = prom.Counter(name="xgb_process_cpu_seconds_total", documentation="CPU seconds used by the serving workers")
# By worker index: each series starts at 1, so a worker that starts after the first scrape is not
# counted as a restart; a replaced worker takes its index over and counts 2, 3, ...
worker_starts = prom.Counter(
    name="xgb_worker_starts_total",
    documentation="Serving worker processes started, by worker index (a replaced worker counts again)",
    labelnames=["worker_index"],
)
_cpu_seconds_counted = 0.0

# A candidate model next to the primary (serving/rollout.py). Only touched when XGB_CANDIDATE_TAG is set.
_ROLE = ["role", "model_version"]
_PAIR = ["primary_version", "candidate_version"]
rollout_info = prom.Gauge(
    name="xgb_rollout_info",
    documentation="The loaded models (role primary|candidate) and the candidate's mode (value 1)",
    labelnames=["role", "model_tag", "model_version", "mode"],
    multiprocess_mode="max",
)
rollout_predictions = prom.Counter(
    name="xgb_rollout_predictions_total",
    documentation="Records predicted per model (role, version) and predicted class, shadow predictions included",
    labelnames=[*_ROLE, "predicted_class"],
)
model_latency = prom.Histogram(
    name="xgb_model_latency_seconds",
    documentation="Time of one model call (a batch), per model (role, version)",
    labelnames=_ROLE,
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
shadow_records = prom.Counter(
    name="xgb_shadow_records_total", documentation="Records scored by both models in shadow mode", labelnames=_PAIR
)
shadow_agreed = prom.Counter(
    name="xgb_shadow_agreed_total",
    documentation="Shadow records both models gave the same predicted class (classification)",
    labelnames=_PAIR,
)
shadow_difference = prom.Histogram(
    name="xgb_shadow_abs_difference",
    documentation="Per shadow record: mean absolute difference of the class probabilities (regression: of the predictions)",
    labelnames=_PAIR,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
shadow_skipped = prom.Counter(
    name="xgb_shadow_skipped_total", documentation="Records not shadow-scored because the candidate's backlog was full"
)
shadow_min_agreement = prom.Gauge(
    name="xgb_shadow_min_agreement",
    documentation="XGB_SHADOW_MIN_AGREEMENT: the shadow agreement below which XGBShadowDisagreement fires",
    multiprocess_mode="max",
)


def publish_model(tag: str, version: str, prior: list[float], class_names: tuple[str, ...]) -> None:
    model_info.labels(model_tag=tag, model_version=version).set(1)
    for name, share in zip(class_names, prior):
        class_prior.labels(predicted_class=name).set(share)


# Rows a worker keeps for drift binning between flushes before it bins them on the spot.
MAX_KEPT_DRIFT_ROWS = 200_000


class FeatureDrift:
    """Counts predicted records into the model's drift bins (xgb_feature_bin_total).

    observe() runs once per predicted batch and only keeps the rows; flush() (every second, off the
    event loop) bins everything kept since the last flush in one vectorised call and moves the sums
    into the counters, one counter write per bin that changed. Binning a second's rows at once costs
    a fraction of binning each small batch as it is predicted, and none of it is on a request's path.
    """

    def __init__(self, binner: Binner) -> None:
        self.binner = binner
        for (feature, bin_), share in zip(binner.labels, binner.shares.tolist()):
            feature_reference.labels(feature=feature, bin=bin_).set(share)
        # Created up front, so every bin is exported from 0 and Prometheus sees each first increase.
        self.counters = [feature_bins.labels(feature=feature, bin=bin_) for feature, bin_ in binner.labels]
        self.kept: list[np.ndarray] = []
        self.kept_rows = 0
        self.lock = threading.Lock()  # /predict_batch observes from a worker thread

    def observe(self, rows: np.ndarray) -> None:
        with self.lock:
            self.kept.append(rows)
            self.kept_rows += len(rows)
            if self.kept_rows < MAX_KEPT_DRIFT_ROWS:
                return
            kept, self.kept, self.kept_rows = self.kept, [], 0
        self._count(kept)  # a flush is overdue: bin here rather than hold more memory

    def flush(self) -> None:
        with self.lock:
            kept, self.kept, self.kept_rows = self.kept, [], 0
        if kept:
            self._count(kept)

    def _count(self, kept: list[np.ndarray]) -> None:
        counts = self.binner.counts(np.concatenate(kept) if len(kept) > 1 else kept[0])
        for i in np.flatnonzero(counts).tolist():
            self.counters[i].inc(int(counts[i]))


def publish_class_reference(shares: dict[str, float]) -> None:
    for name, share in shares.items():
        class_reference.labels(predicted_class=name).set(share)


def count_by_class(counter: Callable[[str], Any], classes: np.ndarray, class_names: tuple[str, ...]) -> None:
    """counter(class name).inc(records predicted that class), once per class present in the batch."""
    for cls, count in enumerate(np.bincount(classes, minlength=len(class_names)).tolist()):
        if count:
            counter(class_names[cls]).inc(count)


def observe_predictions(classes: np.ndarray, confidences: np.ndarray, class_names: tuple[str, ...]) -> None:
    count_by_class(lambda name: predictions.labels(predicted_class=name), classes, class_names)
    observe_many(confidence, confidences)


def observe_values(values: np.ndarray) -> None:
    """A regression model's predictions: counted (no class: an empty predicted_class) and summed.

    Once per batch through the Summary's own _count and _sum (what observe() increments), not one
    multiprocess file write per value."""
    predictions.labels(predicted_class="").inc(len(values))
    if not FAST_OBSERVE:
        for value in values.tolist():
            prediction_value.observe(value)
        return
    prediction_value._count.inc(len(values))
    prediction_value._sum.inc(float(values.sum()))


def observe_model(role: str, model, classes: np.ndarray | None, records: int, seconds: float) -> None:
    """One model call of a rollout: its predictions per class and its latency, by role and version."""
    model_latency.labels(role=role, model_version=model.version).observe(seconds)
    if classes is None:
        rollout_predictions.labels(role=role, model_version=model.version, predicted_class="").inc(records)
        return
    count_by_class(lambda name: rollout_predictions.labels(role=role, model_version=model.version, predicted_class=name),
                   classes, model.class_names)  # fmt: skip


def observe_shadow(pair: dict[str, str], records: int, agreed: int | None, abs_difference: np.ndarray) -> None:
    shadow_records.labels(**pair).inc(records)
    if agreed is not None:
        shadow_agreed.labels(**pair).inc(agreed)
    observe_many(shadow_difference.labels(**pair), abs_difference)


def observe_many(histogram: prom.Histogram, values: np.ndarray) -> None:
    """histogram.observe() for every value, with one write per bucket instead of per value.

    A 1,000-record batch would otherwise cost 1,000 multiprocess file writes. Uses prometheus_client's
    Histogram fields (_upper_bounds, _buckets, _sum), which observe() itself uses (the table above).
    """
    if len(values) == 1 or not FAST_OBSERVE:
        for value in values.tolist():
            histogram.observe(value)
        return
    bucket_of = np.searchsorted(np.asarray(histogram._upper_bounds), values, side="left")
    for bucket, count in enumerate(np.bincount(bucket_of, minlength=len(histogram._upper_bounds)).tolist()):
        if count:
            histogram._buckets[bucket].inc(count)
    histogram._sum.inc(float(values.sum()))


def observe_out_of_range(mask: np.ndarray, feature_names: tuple[str, ...]) -> None:
    """Count the records checked (the out-of-range ratio's denominator) and each feature's violations."""
    records_checked.inc(mask.shape[0])
    for j in np.flatnonzero(mask.any(axis=0)).tolist():
        out_of_range.labels(feature=feature_names[j]).inc(int(mask[:, j].sum()))


def sample_process() -> None:
    """Refresh this worker's memory and CPU metrics (called every few seconds)."""
    global _cpu_seconds_counted
    with open(f"/proc/{os.getpid()}/statm") as f:
        resident_pages = int(f.read().split()[1])
    resident_memory.set(resident_pages * os.sysconf("SC_PAGE_SIZE"))
    t = os.times()
    cpu_seconds.inc(t.user + t.system - _cpu_seconds_counted)
    _cpu_seconds_counted = t.user + t.system
    forget_dead_workers()


def forget_dead_workers() -> None:
    """Drop the live gauges (memory, BentoML's in-progress requests) of workers that are gone.

    A worker that exits cleanly removes them itself; a SIGKILLed or OOM-killed one cannot, and its
    last values would stay in every `livesum` until the server restarts. Counters stay: they are
    meant to keep a dead worker's share.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid = int(path.rsplit("_", 1)[1].removesuffix(".db"))
        if not os.path.exists(f"/proc/{pid}"):
            try:
                prometheus_client.multiprocess.mark_process_dead(pid, directory)
            except FileNotFoundError:  # another worker got there first
                pass


class PrometheusInternalsChanged(RuntimeError):
    """prometheus_client's metrics no longer hold the fields observe_many and observe_values write."""


def check_internals(histogram: Any = None, summary: Any = None) -> None:
    """Raise PrometheusInternalsChanged naming the field observe_many/observe_values need and do not find."""
    histogram = confidence if histogram is None else histogram
    summary = prediction_value if summary is None else summary
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    if not isinstance(bounds, list) or not isinstance(buckets, list) or len(bounds) != len(buckets):
        raise PrometheusInternalsChanged("a Histogram has no _upper_bounds/_buckets of one bucket per bound")
    fields = {"Histogram._sum": getattr(histogram, "_sum", None), "Summary._count": getattr(summary, "_count", None),
              "Summary._sum": getattr(summary, "_sum", None), "Histogram._buckets[0]": buckets[0] if buckets else None}  # fmt: skip
    missing = [name for name, field in fields.items() if not callable(getattr(field, "inc", None))]
    if missing:
        raise PrometheusInternalsChanged(f"no {', '.join(missing)} with .inc()")


def _fast_observe_usable() -> bool:
    try:
        check_internals()
    except PrometheusInternalsChanged as exc:
        logging.getLogger("xgb_service").warning("%s: observing value by value (update serving/metrics.py)", exc)
        return False
    return True


# Checked once, when the service imports this module (each worker, at start).
FAST_OBSERVE = _fast_observe_usable()
# Capture of answered records (serving/capture.py). Only touched when XGB_CAPTURE is on.
capture_records = prom.Counter(name="xgb_capture_records_total", documentation="Captured records written to the capture sink")
capture_bytes = prom.Counter(name="xgb_capture_bytes_total", documentation="Bytes of Parquet written to the capture sink")
capture_dropped = prom.Counter(
    name="xgb_capture_dropped_total",
    documentation="Records not captured: queue_full (the worker's capture queue was full), sink_error (writing failed)",
    labelnames=["reason"],
)
