"""What the load test sends and how it judges the answers, for whichever model the service serves.

Everything model-specific comes from the served model's GET /metadata (ServedModel.fetch): the
feature names and kinds, the example record, the task and class names. Request bodies are drawn
from the features' stored ranges and categories; for the default model, from its training data's
own generator (model_store.dataset), so the load looks like the training data. Bodies are
serialised once up front: the load generator shares the machine's cores with the service, and
re-encoding JSON on every request would cost it rate.

The checks return None for a good answer and a short reason otherwise: a 200 whose body does not
have the contract's shape is a failure, not a success.
"""

from __future__ import annotations

import math
import os
import urllib.request
from typing import Any

import numpy as np
import orjson

from model_store import ModelSchema, dataset

# Enough distinct records that the service never sees a short repeating cycle.
POOL_SIZE = 5_000
# Probabilities are rounded to 6 decimals by the service, so their sum may be off by a few 1e-6.
PROBABILITY_SUM_TOLERANCE = 1e-3
# Share of null values sent for a feature that accepts null.
MISSING_SHARE = 0.05


class ServedModel:
    """The served model as GET /metadata describes it, and the checks of its answers."""

    def __init__(self, card: dict[str, Any]) -> None:
        self.card = card
        self.schema = ModelSchema.from_dict(card)
        self.example_body = orjson.dumps(self.schema.example)

    @classmethod
    def fetch(cls, base_url: str, timeout: float = 10.0) -> "ServedModel":
        # With an API key the card needs it too: the same variable the service and the locustfile read.
        headers = {"X-API-Key": os.environ["XGB_API_KEY"]} if os.environ.get("XGB_API_KEY") else {}
        with urllib.request.urlopen(urllib.request.Request(f"{base_url.rstrip('/')}/metadata", headers=headers), timeout=timeout) as response:
            return cls(orjson.loads(response.read()))

    def sample_records(self, rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
        """n records the model accepts: the default model's from its data generator, any other's
        uniformly from each feature's stored range or categories (a missing value now and then)."""
        if self.schema.features == dataset.SCHEMA.features:
            return dataset.sample_records(rng, n)
        columns = {}
        for f in self.schema.features:
            if f.kind == "categorical":
                values = [f.categories[i] for i in rng.integers(len(f.categories), size=n)]
            elif f.kind == "binary":
                values = rng.integers(0, 2, n).astype(float).tolist()
            else:
                example = self.schema.example[f.name] or 0.0
                lo = f.minimum if f.minimum is not None else example - 1.0
                hi = f.maximum if f.maximum is not None else example + 1.0
                values = np.round(rng.uniform(lo, hi, n), 4).tolist()
            if f.nullable:
                values = [None if missing else v for v, missing in zip(values, rng.random(n) < MISSING_SHARE)]
            columns[f.name] = values
        return [dict(zip(columns, row)) for row in zip(*columns.values())]

    def check_prediction(self, result: Any) -> str | None:
        """Why one prediction object breaks the contract, or None if it is well-formed."""
        if not isinstance(result, dict):
            return f"prediction is a {type(result).__name__}, not an object"
        if self.schema.is_classification:
            reason = self._check_class(result)
        else:
            value = result.get("prediction")
            finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            reason = None if finite else f"prediction {value!r} is not a finite number"
        if reason:
            return reason
        if not isinstance(result.get("model_version"), str) or not result["model_version"]:
            return f"model_version {result.get('model_version')!r} is not a non-empty string"
        if result.get("features_used") != self.schema.n_features:
            return f"features_used is {result.get('features_used')!r}, expected {self.schema.n_features}"
        return None

    def _check_class(self, result: dict[str, Any]) -> str | None:
        n_classes = self.schema.n_classes
        cls, confidence, probabilities = result.get("predicted_class"), result.get("confidence"), result.get("probabilities")
        if not isinstance(cls, int) or isinstance(cls, bool) or not 0 <= cls < n_classes:
            return f"predicted_class {cls!r} is not a class index 0..{n_classes - 1}"
        if not _is_probability(confidence):
            return f"confidence {confidence!r} is not a probability"
        if not isinstance(probabilities, list) or len(probabilities) != n_classes or not all(map(_is_probability, probabilities)):
            return f"probabilities {probabilities!r} are not {n_classes} probabilities"
        if abs(sum(probabilities) - 1.0) > PROBABILITY_SUM_TOLERANCE:
            return f"probabilities sum to {sum(probabilities):.6f}, not 1"
        if probabilities[cls] != max(probabilities) or not math.isclose(confidence, probabilities[cls], abs_tol=1e-6):
            return f"predicted_class {cls} / confidence {confidence} disagree with probabilities {probabilities}"
        if not self.schema.has_default_class_names and result.get("predicted_label") != self.schema.class_names[cls]:
            return f"predicted_label {result.get('predicted_label')!r} is not class {cls}'s name {self.schema.class_names[cls]!r}"
        return None

    def check_batch(self, body: Any, expected_count: int) -> str | None:
        """Why a /predict_batch answer breaks the contract, or None."""
        predictions = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(predictions, list):
            return "no 'predictions' list in the answer"
        if len(predictions) != expected_count:
            return f"{len(predictions)} predictions for {expected_count} instances"
        for i, result in enumerate(predictions):
            if reason := self.check_prediction(result):
                return f"predictions[{i}]: {reason}"
        return None


class RequestPool:
    """Pre-encoded /predict and /predict_batch bodies for the served model, drawn at random."""

    def __init__(self, model: ServedModel, seed: int | None = None, size: int = POOL_SIZE) -> None:
        self.rng = np.random.default_rng(seed)
        self.records = model.sample_records(self.rng, size)
        self.bodies = [orjson.dumps(r) for r in self.records]

    def record_body(self) -> bytes:
        return self.bodies[self.rng.integers(len(self.bodies))]

    def batch_body(self, size: int) -> bytes:
        picks = self.rng.integers(len(self.records), size=size)
        return orjson.dumps({"instances": [self.records[i] for i in picks]})


def _is_probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
