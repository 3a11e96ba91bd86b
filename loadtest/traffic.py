"""What the load test sends and how it judges the answers.

Request bodies are drawn from the feature schema's own distribution (model_store.dataset), so the
load looks like the training data, and are serialised once up front: the load generator shares
the machine's cores with the service, and re-encoding JSON on every request would cost it rate.

The checks return None for a good answer and a short reason otherwise: a 200 whose body does not
have the contract's shape is a failure, not a success.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from model_store.dataset import sample_records
from model_store.dataset import EXAMPLE_RECORD, N_CLASSES, N_FEATURES

# Enough distinct records that the service never sees a short repeating cycle.
POOL_SIZE = 5_000
# Probabilities are rounded to 6 decimals by the service, so their sum may be off by a few 1e-6.
PROBABILITY_SUM_TOLERANCE = 1e-3


class RequestPool:
    """Pre-encoded /predict and /predict_batch bodies, drawn at random."""

    def __init__(self, seed: int | None = None, size: int = POOL_SIZE) -> None:
        self.rng = np.random.default_rng(seed)
        self.records = sample_records(self.rng, size)
        self.bodies = [orjson.dumps(r) for r in self.records]

    def record_body(self) -> bytes:
        return self.bodies[self.rng.integers(len(self.bodies))]

    def batch_body(self, size: int) -> bytes:
        picks = self.rng.integers(len(self.records), size=size)
        return orjson.dumps({"instances": [self.records[i] for i in picks]})


EXAMPLE_BODY = orjson.dumps(EXAMPLE_RECORD)


def check_prediction(result: Any) -> str | None:
    """Why one prediction object breaks the contract, or None if it is well-formed."""
    if not isinstance(result, dict):
        return f"prediction is a {type(result).__name__}, not an object"
    cls, confidence, probabilities = result.get("predicted_class"), result.get("confidence"), result.get("probabilities")
    if not isinstance(cls, int) or isinstance(cls, bool) or not 0 <= cls < N_CLASSES:
        return f"predicted_class {cls!r} is not a class index 0..{N_CLASSES - 1}"
    if not _is_probability(confidence):
        return f"confidence {confidence!r} is not a probability"
    if not isinstance(result.get("model_version"), str) or not result["model_version"]:
        return f"model_version {result.get('model_version')!r} is not a non-empty string"
    if result.get("features_used") != N_FEATURES:
        return f"features_used is {result.get('features_used')!r}, expected {N_FEATURES}"
    if not isinstance(probabilities, list) or len(probabilities) != N_CLASSES or not all(map(_is_probability, probabilities)):
        return f"probabilities {probabilities!r} are not {N_CLASSES} probabilities"
    if abs(sum(probabilities) - 1.0) > PROBABILITY_SUM_TOLERANCE:
        return f"probabilities sum to {sum(probabilities):.6f}, not 1"
    if probabilities[cls] != max(probabilities) or not math.isclose(confidence, probabilities[cls], abs_tol=1e-6):
        return f"predicted_class {cls} / confidence {confidence} disagree with probabilities {probabilities}"
    return None


def check_batch(body: Any, expected_count: int) -> str | None:
    """Why a /predict_batch answer breaks the contract, or None."""
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(predictions, list):
        return "no 'predictions' list in the answer"
    if len(predictions) != expected_count:
        return f"{len(predictions)} predictions for {expected_count} instances"
    for i, result in enumerate(predictions):
        if reason := check_prediction(result):
            return f"predictions[{i}]: {reason}"
    return None


def _is_probability(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
