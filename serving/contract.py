"""The HTTP contract: request validation and response bodies, built from model_store's schema.

Validation is pydantic-core parsing the JSON bytes directly (strict: numbers only, finite,
every feature required, unknown fields refused), so malformed or ambiguous input never reaches
the model. Every failure becomes one error type, InputError, which names the field and the problem.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any

import numpy as np
import orjson
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import Annotated, TypedDict

from model_store.schema import FEATURE_NAMES, FEATURES, N_FEATURES

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

# The seed's flat record: {"feat1": 55.0, ..., "feat36": 0.0}.
Record = TypedDict("Record", {name: float for name in FEATURE_NAMES})  # type: ignore[misc]
Record.__pydantic_config__ = _STRICT  # type: ignore[attr-defined]

_record_values = operator.itemgetter(*FEATURE_NAMES)
_MINIMUM = np.array([f.minimum for f in FEATURES])
_MAXIMUM = np.array([f.maximum for f in FEATURES])
_BINARY = np.array([f.kind == "binary" for f in FEATURES])


class InputError(Exception):
    """A request the service refuses: status code, a summary, and per-field details."""

    def __init__(self, status: int, error: str, detail: list[dict[str, Any]] | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail or []

    def body(self) -> bytes:
        return orjson.dumps({"error": self.error, "detail": self.detail})


def _details(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    return [
        {"loc": [*prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)[:50]
    ]


def _raise_for(exc: ValidationError) -> None:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        raise InputError(400, f"malformed JSON: {errors[0]['ctx'].get('error', 'invalid JSON')}") from None
    details = _details(exc)
    fields = ", ".join(".".join(map(str, d["loc"])) or "body" for d in details[:5])
    more = f" and {len(errors) - 5} more (see detail)" if len(errors) > 5 else ""
    raise InputError(422, f"invalid input: {len(errors)} problem(s) at {fields}{more}", details) from None


def make_batch_adapter(max_records: int) -> TypeAdapter:
    batch = TypedDict("BatchRequest", {"instances": Annotated[list[Record], Field(min_length=1, max_length=max_records)]})  # type: ignore[misc]
    batch.__pydantic_config__ = _STRICT  # type: ignore[attr-defined]
    return TypeAdapter(batch)


_record_adapter = TypeAdapter(Record)


def parse_record(body: bytes) -> np.ndarray:
    """One JSON record -> a (1, 36) float64 row."""
    try:
        record = _record_adapter.validate_json(body)
    except ValidationError as exc:
        _raise_for(exc)
    return np.array([_record_values(record)], dtype=np.float64)


def parse_batch(body: bytes, adapter: TypeAdapter, max_records: int) -> np.ndarray:
    """{"instances": [record, ...]} -> an (n, 36) float64 array, in request order."""
    rows = _parse_well_formed_batch(body, max_records)
    if rows is not None:
        return rows
    try:
        request = adapter.validate_json(body)
    except ValidationError as exc:
        _raise_for(exc)
    return np.array([_record_values(r) for r in request["instances"]], dtype=np.float64).reshape(-1, N_FEATURES)


_FEATURE_KEYS = frozenset(FEATURE_NAMES)
_NUMBER_TYPES = {float, int}


def _parse_well_formed_batch(body: bytes, max_records: int) -> np.ndarray | None:
    """The common case at half pydantic's cost: orjson, then checks that only accept what the strict
    validator accepts. Anything unusual returns None, and the validator decides and explains."""
    try:
        request = orjson.loads(body)
        instances = request["instances"]
        if type(request) is not dict or len(request) != 1 or type(instances) is not list:
            return None
        if not 1 <= len(instances) <= max_records or not all(r.keys() == _FEATURE_KEYS for r in instances):
            return None
        values = [_record_values(r) for r in instances]
        # bool is an int subclass and numpy would turn "55" into 55.0: check the exact types.
        if not set(map(type, itertools.chain.from_iterable(values))) <= _NUMBER_TYPES:
            return None
        rows = np.array(values, dtype=np.float64)
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError, OverflowError, ValueError):
        return None
    return rows if np.isfinite(rows).all() else None


def out_of_range(rows: np.ndarray) -> np.ndarray:
    """Boolean mask, same shape as rows: values outside the schema's allowed range."""
    outside = (rows < _MINIMUM) | (rows > _MAXIMUM)
    outside |= _BINARY & (rows != 0.0) & (rows != 1.0)
    return outside


def range_error(rows: np.ndarray, mask: np.ndarray, batch: bool) -> InputError:
    details = []
    for i, j in zip(*np.nonzero(mask)):
        f = FEATURES[j]
        allowed = "0 or 1" if f.kind == "binary" else f"between {f.minimum:g} and {f.maximum:g}"
        loc = ["instances", int(i), f.name] if batch else [f.name]
        details.append({"loc": loc, "msg": f"value {rows[i, j]:g} is out of range: must be {allowed}", "type": "out_of_range"})
        if len(details) == 50:
            break
    fields = ", ".join(".".join(map(str, d["loc"])) for d in details[:5])
    return InputError(422, f"out-of-range input at {fields}", details)


def predicted(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predicted class of each row and its probability (the seed's `confidence`)."""
    classes = proba.argmax(axis=1)
    return classes, proba[np.arange(len(proba)), classes]


def prediction_bodies(proba: np.ndarray, classes: np.ndarray, confidence: np.ndarray, model_version: str) -> list[dict[str, Any]]:
    """The seed's response for each row, plus the per-class probabilities."""
    return [
        {
            "predicted_class": int(c),
            "confidence": float(conf),
            "model_version": model_version,
            "features_used": N_FEATURES,
            "probabilities": p,
        }
        for c, conf, p in zip(classes.tolist(), np.round(confidence.astype(np.float64), 6).tolist(), np.round(proba.astype(np.float64), 6).tolist())
    ]
