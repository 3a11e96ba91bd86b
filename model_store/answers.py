"""A model's answer fields and range policy over whole arrays: one home for what /predict answers
(serving/contract.py turns these into JSON bodies) and what batch scoring writes (model_store/scoring.py),
so a row scored in a file gets exactly the numbers /predict_batch sends for it.
"""

from __future__ import annotations

import numpy as np

from .schema import Feature, ModelSchema

DECIMALS = 6  # confidence and probabilities are answered rounded to this many decimals


def predicted(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predicted class of each row and its probability (the seed's `confidence`)."""
    classes = proba.argmax(axis=1)
    return classes, proba[np.arange(len(proba)), classes]


def class_columns(proba: np.ndarray, confidence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """confidence and probabilities as answered: float64, rounded."""
    return np.round(confidence.astype(np.float64), DECIMALS), np.round(proba.astype(np.float64), DECIMALS)


def value_column(values: np.ndarray) -> np.ndarray:
    """Regression values as answered. XGBoost computes in float32: the value is float32's shortest
    decimal (12.3, not 12.300000190734863), as a float64, exactly the same number."""
    return values.astype(np.float32).astype(str).astype(np.float64)


class RangeCheck:
    """The schema's range policy over encoded rows: values outside a feature's allowed range."""

    def __init__(self, schema: ModelSchema) -> None:
        self._minimum = np.array([-np.inf if f.minimum is None or f.kind == "categorical" else f.minimum for f in schema.features])
        self._maximum = np.array([np.inf if f.maximum is None or f.kind == "categorical" else f.maximum for f in schema.features])
        self._binary = np.array([f.kind == "binary" for f in schema.features])

    def out_of_range(self, rows: np.ndarray) -> np.ndarray:
        """Boolean mask, same shape as rows: values outside the schema's allowed range (missing ones are not)."""
        outside = (rows < self._minimum) | (rows > self._maximum)
        outside |= self._binary & (rows != 0.0) & (rows != 1.0) & (rows == rows)
        return outside


def allowed(f: Feature) -> str:
    """What a feature accepts, in words (range errors, docs)."""
    if f.kind == "categorical":
        return "one of " + ", ".join(map(repr, f.categories))
    if f.kind == "binary":
        return "0 or 1"
    if f.minimum is not None and f.maximum is not None:
        return f"between {f.minimum:g} and {f.maximum:g}"
    if f.minimum is not None:
        return f"at least {f.minimum:g}"
    if f.maximum is not None:
        return f"at most {f.maximum:g}"
    return "any number"
