"""The service's metric helpers agree with prometheus_client's own behaviour."""

from __future__ import annotations

import numpy as np
import prometheus_client as prom
import pytest

from serving.metrics import observe_many


@pytest.mark.parametrize("values", [[0.5], [0.2, 0.2000001, 0.95, 1.0, 0.33], list(np.random.default_rng(1).random(1000))])
def test_observe_many_equals_observing_one_by_one(values):
    buckets = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
    one_by_one = prom.Histogram("one", "", buckets=buckets, registry=prom.CollectorRegistry())
    bulk = prom.Histogram("bulk", "", buckets=buckets, registry=prom.CollectorRegistry())
    for v in values:
        one_by_one.observe(v)
    observe_many(bulk, np.asarray(values, dtype=np.float64))

    def samples(histogram):
        return [(s.name.split("_", 1)[1], s.labels.get("le"), round(s.value, 6)) for s in histogram.collect()[0].samples if not s.name.endswith("_created")]

    assert samples(bulk) == samples(one_by_one)
