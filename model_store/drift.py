"""The drift reference: what the training data looked like, and the bins served records are counted in.

At training, `reference()` describes every feature of the training matrix:
  continuous   10 quantile bins between the training minimum and maximum (edges and the share
               in each); values below the minimum, above the maximum, and missing ones have bins
               of their own (share 0 in training unless the training data had them)
  binary /     the share of each value; a value the schema does not know ("(other)") and missing
  categorical  values have bins of their own
plus the share of each predicted class on the held-out data. It is stored in the model's metadata
under REFERENCE_KEY, so a model carries the baseline it is compared with.

At serving, `Binner` puts a batch of rows into those bins with a handful of numpy operations over
the whole (rows x features) matrix: no per-record and no per-feature Python.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

REFERENCE_KEY = "drift_reference"
QUANTILE_BINS = 10
MISSING, OTHER = "(missing)", "(other)"
COUNT_CHUNK_ROWS = 2048
GROUPED_FROM_ROWS = 64  # below it, one comparison over all features is quicker than two


def reference(
    x_train: np.ndarray, features: Sequence[Any], held_out_classes: np.ndarray | None = None, class_names: Sequence[str] = ()
) -> dict[str, Any]:
    """The reference distribution of `x_train` (raw feature values, categories as their codes, NaN
    for missing) for the schema's `features`, and the held-out predicted-class shares."""
    x_train = np.asarray(x_train, dtype=np.float64)
    described = [_describe(x_train[:, j], feature) for j, feature in enumerate(features)]
    binner = Binner({"features": described})
    counts = binner.counts(x_train)
    for entry, (start, stop) in zip(described, binner.spans):
        entry["shares"] = np.round(counts[start:stop] / len(x_train), 6).tolist()
    shares: dict[str, float] = {}
    if held_out_classes is not None and len(class_names):
        per_class = np.bincount(np.asarray(held_out_classes, dtype=np.int64), minlength=len(class_names)) / len(held_out_classes)
        shares = {name: round(float(s), 6) for name, s in zip(class_names, per_class)}
    return {"quantile_bins": QUANTILE_BINS, "features": described, "predicted_class_shares": shares}


def _describe(column: np.ndarray, feature: Any) -> dict[str, Any]:
    kind = feature.kind
    if kind == "continuous":
        present = column[~np.isnan(column)]
        if not len(present):
            raise ValueError(f"feature {feature.name!r} has no values in the training data")
        lo, hi = float(present.min()), float(present.max())
        inner = np.unique(np.quantile(present, np.linspace(0, 1, QUANTILE_BINS + 1)[1:-1]))
        edges = [lo, *(float(e) for e in inner if lo < e < hi), hi]
        return {"name": feature.name, "kind": kind, "edges": edges, "bins": _interval_labels(edges)}
    if kind == "binary":
        values, labels = [0.0, 1.0], ["0", "1"]
    elif kind == "categorical":
        labels = [str(c) for c in feature.categories]
        values = [float(code) for code in range(len(labels))]  # the codes the contract encodes them as
    else:
        raise ValueError(f"feature {feature.name!r} has unknown kind {kind!r}")
    if {OTHER, MISSING} & set(labels):
        raise ValueError(f"feature {feature.name!r} has a category named {OTHER!r} or {MISSING!r}, which drift bins reserve")
    return {"name": feature.name, "kind": kind, "values": values, "bins": [*labels, OTHER, MISSING]}


def _interval_labels(edges: list[float]) -> list[str]:
    """"[18, 27)" ... "[88, 95]", then "<18", ">95", "(missing)"; precise enough to be distinct."""
    for digits in (4, 6, 10, 17):
        fmt = [f"{e:.{digits}g}" for e in edges]
        labels = [f"[{a}, {b})" for a, b in zip(fmt[:-2], fmt[1:-1])] + [f"[{fmt[-2]}, {fmt[-1]}]", f"<{fmt[0]}", f">{fmt[-1]}", MISSING]
        if len(set(labels)) == len(labels):
            return labels
    raise ValueError(f"bin edges {edges} cannot be told apart")  # unreachable: edges are distinct floats


class Binner:
    """Counts rows into a reference's bins, all features at once.

    Bins are numbered across features (feature after feature, in schema order); `labels[i]` is
    bin i's (feature, bin) and `shares[i]` its training share. For each feature the regular bins
    come first (intervals or values), then (continuous) below-minimum, above-maximum, missing, or
    (binary/categorical) other, missing.
    """

    def __init__(self, ref: dict[str, Any], feature_names: Iterable[str] | None = None) -> None:
        entries = ref["features"]
        if feature_names is not None and [e["name"] for e in entries] != list(feature_names):
            raise ValueError("the drift reference's features differ from the model's schema")
        self.labels = [(e["name"], label) for e in entries for label in e["bins"]]
        self.shares = np.array([s for e in entries for s in e.get("shares", [0.0] * len(e["bins"]))])
        sizes = [len(e["bins"]) for e in entries]
        self.offsets = np.cumsum([0, *sizes[:-1]])
        self.spans = [(int(o), int(o) + n) for o, n in zip(self.offsets, sizes)]
        self.n_bins = int(sum(sizes))
        n, width = len(entries), max(max(len(e.get("edges", e.get("values", []))) for e in entries), 2)
        # Upper edges a value must reach to move up one bin, padded with +inf (never reached).
        self.steps = np.full((n, width), np.inf)
        self.lo = np.full(n, -np.inf)
        self.hi = np.full(n, np.inf)
        self.values = np.full((n, width), np.nan)  # discrete features: the known values, by bin
        self.discrete = np.zeros(n, dtype=bool)
        self.below = np.zeros(n, dtype=np.int64)  # local bin of "<min" (continuous) or "(other)" (discrete)
        self.above = np.zeros(n, dtype=np.int64)
        for j, e in enumerate(entries):
            if "edges" in e:
                edges = e["edges"]
                self.lo[j], self.hi[j] = edges[0], edges[-1]
                self.steps[j, : len(edges) - 2] = edges[1:-1]
                self.below[j], self.above[j] = len(edges) - 1, len(edges)
            else:
                values = e["values"]
                self.discrete[j] = True
                self.values[j, : len(values)] = values
                self.steps[j, : len(values) - 1] = values[1:]
                self.below[j] = self.above[j] = len(values)
        self.missing = np.array(sizes) - 1
        self._columns = np.arange(n)
        # For large batches, features with few steps (binary, most categoricals) are compared apart
        # from those with many: large batches bin several times faster (docs/performance.md).
        steps = np.isfinite(self.steps).sum(axis=1)
        few = steps <= 2
        self._groups = [(columns, self.steps[columns, : max(1, int(steps[columns].max()))])
                        for columns in (np.flatnonzero(few), np.flatnonzero(~few)) if len(columns)]  # fmt: skip

    def bins(self, rows: np.ndarray) -> np.ndarray:
        """The global bin number of every value, shape (n, features)."""
        if len(rows) < GROUPED_FROM_ROWS:
            local = (rows[:, :, None] >= self.steps).sum(axis=2)
        else:
            local = np.empty(rows.shape, dtype=np.int64)
            for columns, steps in self._groups:
                local[:, columns] = (rows[:, columns, None] >= steps).sum(axis=2)
        unknown = self.discrete & (rows != self.values[self._columns, np.minimum(local, self.values.shape[1] - 1)])
        local = np.where((rows < self.lo) | unknown, self.below, local)
        local = np.where(rows > self.hi, self.above, local)
        local = np.where(np.isnan(rows), self.missing, local)
        return local + self.offsets

    def counts(self, rows: np.ndarray) -> np.ndarray:
        """How many values of `rows` fall in each bin, shape (n_bins,)."""
        if len(rows) <= COUNT_CHUNK_ROWS:
            return np.bincount(self.bins(rows).ravel(), minlength=self.n_bins)
        # In chunks: bins() makes (rows x features x edges) temporaries; past a few thousand rows
        # they leave the CPU cache and binning a second's rows at once took twice as long.
        return sum(self.counts(rows[i : i + COUNT_CHUNK_ROWS]) for i in range(0, len(rows), COUNT_CHUNK_ROWS))
