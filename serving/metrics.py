"""The service's own Prometheus metrics (BentoML's request and batching metrics come for free).

`bentoml serve` gives every worker PROMETHEUS_MULTIPROC_DIR in its environment, so these
prometheus_client metrics are multiprocess: each worker writes its own series and /metrics,
answered by any worker, sums them.
"""

from __future__ import annotations

import os

import numpy as np
import prometheus_client as prom

from model_store.schema import FEATURE_NAMES

predictions = prom.Counter(
    name="xgb_predictions_total", documentation="Predictions served, by predicted class", labelnames=["predicted_class"]
)
confidence = prom.Histogram(
    name="xgb_prediction_confidence",
    documentation="Probability of the predicted class",
    buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
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
resident_memory = prom.Gauge(
    name="xgb_process_resident_memory_bytes",
    documentation="Resident memory of the serving workers, summed",
    multiprocess_mode="livesum",
)
cpu_seconds = prom.Gauge(
    name="xgb_process_cpu_seconds_total",
    documentation="CPU seconds used by the serving workers, summed (a replaced worker's seconds stay in the sum)",
    multiprocess_mode="sum",
)


def publish_model(tag: str, version: str, prior: list[float], class_names: tuple[str, ...]) -> None:
    model_info.labels(model_tag=tag, model_version=version).set(1)
    for name, share in zip(class_names, prior):
        class_prior.labels(predicted_class=name).set(share)


def observe_predictions(classes: np.ndarray, confidences: np.ndarray, class_names: tuple[str, ...]) -> None:
    for cls, count in enumerate(np.bincount(classes, minlength=len(class_names)).tolist()):
        if count:
            predictions.labels(predicted_class=class_names[cls]).inc(count)
    observe_many(confidence, confidences)


def observe_many(histogram: prom.Histogram, values: np.ndarray) -> None:
    """histogram.observe() for every value, with one write per bucket instead of per value.

    A 1,000-record batch would otherwise cost 1,000 multiprocess file writes (~4 ms). Uses
    prometheus_client's Histogram fields (_upper_bounds, _buckets, _sum), which observe() itself
    uses; tests/test_metrics.py checks the result equals observe() value by value.
    """
    if len(values) == 1:
        histogram.observe(float(values[0]))
        return
    bucket_of = np.searchsorted(np.asarray(histogram._upper_bounds), values, side="left")
    for bucket, count in enumerate(np.bincount(bucket_of, minlength=len(histogram._upper_bounds)).tolist()):
        if count:
            histogram._buckets[bucket].inc(count)
    histogram._sum.inc(float(values.sum()))


def observe_out_of_range(mask: np.ndarray) -> None:
    for j in np.flatnonzero(mask.any(axis=0)).tolist():
        out_of_range.labels(feature=FEATURE_NAMES[j]).inc(int(mask[:, j].sum()))


def sample_process() -> None:
    """Refresh this worker's memory and CPU gauges (called every few seconds)."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        resident_pages = int(f.read().split()[1])
    resident_memory.set(resident_pages * os.sysconf("SC_PAGE_SIZE"))
    t = os.times()
    cpu_seconds.set(t.user + t.system)
