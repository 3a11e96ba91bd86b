"""The HTTP contract of one model: request validation and answer bodies, built from its stored schema.

A Contract is built once per served model at start-up. Validation is pydantic-core parsing the
JSON bytes directly (strict: numbers only, finite, every feature required, unknown fields refused,
a category from the stored list, null only where the training data had missing values), so
malformed or ambiguous input never reaches the model. Every failure becomes one error type,
InputError, which names the field and the problem.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, Callable, Literal, Optional

import numpy as np
import orjson
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import Annotated, TypedDict

from model_store.answers import RangeCheck, allowed, class_columns, predicted, value_column  # noqa: F401  (predicted, allowed: used from here too)
from model_store.bundle import encode
from model_store.schema import Feature, ModelSchema

from .errors import InputError  # noqa: F401  (serving.contract.InputError: where the contract's callers import it)
from .settings import Settings

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
_NUMBER_TYPES = {float, int}


def _typed_dict(name: str, fields: dict[str, Any]) -> Any:
    typed = TypedDict(name, fields)  # type: ignore[misc]  # functional form: any string is a key
    typed.__pydantic_config__ = _STRICT  # type: ignore[attr-defined]
    return typed


def _field_type(feature: Feature) -> Any:
    kind: Any = Literal[feature.categories] if feature.kind == "categorical" else float  # type: ignore[valid-type]
    return Optional[kind] if feature.nullable else kind


def _values_getter(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    if len(names) == 1:  # itemgetter of one key returns the value, not a 1-tuple
        (name,) = names
        return lambda record: (record[name],)
    return operator.itemgetter(*names)


def _details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)[:50]
    ]


def _colons(body: bytes) -> int:
    # bytes.count is a byte-at-a-time loop: numpy's vectorised compare is ~6x faster on a batch
    if len(body) < 4096:
        return body.count(b":")
    return int(np.count_nonzero(np.frombuffer(body, np.uint8) == ord(":")))


def _repeated_names(body: bytes, batch: bool) -> list[dict[str, Any]]:
    """The fields a JSON object in the body names more than once (Contract.refuse_repeated_names).
    A record is placed by where it sits in the instances the parsers keep (the last ones given)."""
    import json

    repeated: dict[int, tuple[dict[str, Any], list[str]]] = {}

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        names = [name for name, _ in items]
        if len(obj) < len(names):
            repeated[id(obj)] = (obj, list(dict.fromkeys(n for n in names if names.count(n) > 1)))
        return obj

    outer = json.loads(body, object_pairs_hook=pairs)
    where = {id(outer): []}
    if batch and type(outer) is dict and type(outer.get("instances")) is list:
        where.update((id(record), ["instances", i]) for i, record in enumerate(outer["instances"]))
    return [{"loc": [*where[key], name], "msg": "given more than once: a field may appear once", "type": "repeated_field"}
            for key, (_, names) in repeated.items() if key in where for name in names]


def _invalid_input(details: list[dict[str, Any]], problems: int) -> InputError:
    """The 422 for input that parsed but breaks the contract: the summary names the first five fields."""
    fields = ", ".join(".".join(map(str, d["loc"])) or "body" for d in details[:5])
    more = f" and {problems - 5} more (see detail)" if problems > 5 else ""
    return InputError(422, f"invalid input: {problems} problem(s) at {fields}{more}", details[:50])


_NOT_UTF8 = {b"\xef\xbb\xbf": "starts with a UTF-8 byte order mark (EF BB BF): send the JSON without it",
             b"\xff\xfe": "is UTF-16 (it starts with FF FE): send UTF-8", b"\xfe\xff": "is UTF-16 (it starts with FE FF): send UTF-8"}


def _raise_for(exc: ValidationError, body: bytes) -> None:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        # Windows tools write a BOM or UTF-16; "expected value at column 1" alone would not say so.
        hint = next((f"; the body {why}" for mark, why in _NOT_UTF8.items() if body.startswith(mark)), "")
        raise InputError(400, f"malformed JSON: {errors[0]['ctx'].get('error', 'invalid JSON')}{hint}") from None
    raise _invalid_input(_details(exc), len(errors)) from None


class Contract:
    """One model's request types, parsers, range check and answer bodies."""

    def __init__(self, schema: ModelSchema, settings: Settings) -> None:
        self.schema = schema
        self.max_records = settings.max_batch_records
        names = schema.feature_names
        self.record_type = _typed_dict("Record", {f.name: _field_type(f) for f in schema.features})
        self.batch_type = _typed_dict(
            "BatchRequest", {"instances": Annotated[list[self.record_type], Field(min_length=1, max_length=self.max_records)]}
        )
        self.record_adapter = TypeAdapter(self.record_type)
        self.batch_adapter = TypeAdapter(self.batch_type)
        self.prediction_type = self._prediction_type()
        # A batch's records carry their own request_id (serving/request_ids.py), so each is addressable.
        self.batch_prediction_type = _typed_dict("BatchPrediction", {**self.prediction_type.__annotations__, "request_id": str})
        self.batch_response_type = _typed_dict("BatchResponse", {"predictions": list[self.batch_prediction_type]})
        self._values = _values_getter(names)
        self._keys = frozenset(names)
        self._name_colons = sum(name.count(":") for name in names)
        self._range = RangeCheck(schema)
        self._labels = None if schema.has_default_class_names else list(schema.class_names)
        self._float_rows = schema.records_are_float_rows  # the fast parser applies

    # -- requests ----------------------------------------------------------------------------

    def parse_record(self, body: bytes) -> np.ndarray:
        """One JSON record -> a (1, n_features) float64 row."""
        try:
            record = self.record_adapter.validate_json(body)
        except ValidationError as exc:
            _raise_for(exc, body)
        self.refuse_repeated_names(body, [record], outer_names=0)
        if self._float_rows:
            return np.array([self._values(record)], dtype=np.float64)
        return encode(self.schema, [record])

    def parse_batch(self, body: bytes) -> np.ndarray:
        """{"instances": [record, ...]} -> an (n, n_features) float64 array, in request order."""
        rows = self._parse_well_formed_batch(body) if self._float_rows else None
        if rows is not None:
            return rows
        try:
            request = self.batch_adapter.validate_json(body)
        except ValidationError as exc:
            _raise_for(exc, body)
        self.refuse_repeated_names(body, request["instances"], outer_names=1)
        return encode(self.schema, request["instances"])

    def _parse_well_formed_batch(self, body: bytes) -> np.ndarray | None:
        """The common case at half pydantic's cost: orjson, then checks that only accept what the strict
        validator accepts. Anything unusual returns None, and the validator decides and explains."""
        try:
            request = orjson.loads(body)
            instances = request["instances"]
            if type(request) is not dict or len(request) != 1 or type(instances) is not list:
                return None
            if not 1 <= len(instances) <= self.max_records or not all(r.keys() == self._keys for r in instances):
                return None
            values = [self._values(r) for r in instances]
            # bool is an int subclass and numpy would turn "55" into 55.0: check the exact types.
            if not set(map(type, itertools.chain.from_iterable(values))) <= _NUMBER_TYPES:
                return None
            if not self._no_repeated_names(body, instances, outer_names=1):
                return None  # maybe a field given twice: the validator's path finds it
            rows = np.array(values, dtype=np.float64)
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError, OverflowError, ValueError):
            return None
        return rows if np.isfinite(rows).all() else None

    def refuse_repeated_names(self, body: bytes, records: list[dict[str, Any]], outer_names: int) -> None:
        """422 when an object in the body names a field twice: every JSON parser here keeps the last
        value, so the model would silently get one of two."""
        if self._no_repeated_names(body, records, outer_names):
            return
        details = _repeated_names(body, batch=outer_names > 0)
        if details:
            raise _invalid_input(details, len(details))

    def _no_repeated_names(self, body: bytes, records: list[dict[str, Any]], outer_names: int) -> bool:
        """True when the body surely names no field twice (validated records: every feature once).
        Each name in the text is followed by a colon outside any string; the other colons are in
        the names and string values themselves. A body with other colons, or with an escape (one
        may hide a colon, \\u003a), is parsed again to look (_repeated_names)."""
        expected = outer_names + len(records) * (len(self._keys) + self._name_colons)
        if not self._float_rows:
            expected += sum(v.count(":") for r in records for v in r.values() if type(v) is str)
        return _colons(body) == expected and body.find(b"\\") < 0

    # -- range check -------------------------------------------------------------------------

    def out_of_range(self, rows: np.ndarray) -> np.ndarray:
        """Boolean mask, same shape as rows: values outside the schema's allowed range (missing ones are not)."""
        return self._range.out_of_range(rows)

    def range_error(self, rows: np.ndarray, mask: np.ndarray, batch: bool) -> InputError:
        details = []
        for i, j in zip(*np.nonzero(mask)):
            f = self.schema.features[j]
            loc = ["instances", int(i), f.name] if batch else [f.name]
            details.append({"loc": loc, "msg": f"value {rows[i, j]:g} is out of range: must be {allowed(f)}", "type": "out_of_range"})
            if len(details) == 50:
                break
        fields = ", ".join(".".join(map(str, d["loc"])) for d in details[:5])
        return InputError(422, f"out-of-range input at {fields}", details)

    # -- answers -----------------------------------------------------------------------------

    def class_bodies(self, proba: np.ndarray, classes: np.ndarray, confidence: np.ndarray, model_version: str) -> list[dict[str, Any]]:
        """The seed's answer for each row plus the per-class probabilities (and the class's name
        when the names are not just "0".."k-1")."""
        n_features = self.schema.n_features
        confidence, proba = class_columns(proba, confidence)
        bodies = [
            {"predicted_class": c, "confidence": conf, "model_version": model_version, "features_used": n_features, "probabilities": p}
            for c, conf, p in zip(classes.tolist(), confidence.tolist(), proba.tolist())
        ]
        if self._labels is not None:
            for body in bodies:
                body["predicted_label"] = self._labels[body["predicted_class"]]
        return bodies

    def value_bodies(self, values: np.ndarray, model_version: str) -> list[dict[str, Any]]:
        """Regression answers, each value float32's shortest decimal (model_store.answers.value_column)."""
        shortest = value_column(values).tolist()
        n_features = self.schema.n_features
        return [{"prediction": v, "model_version": model_version, "features_used": n_features} for v in shortest]

    def _prediction_type(self) -> Any:
        if not self.schema.is_classification:
            return _typed_dict("Prediction", {"prediction": float, "model_version": str, "features_used": int})
        fields: dict[str, Any] = {"predicted_class": int}
        if not self.schema.has_default_class_names:
            fields["predicted_label"] = Literal[self.schema.class_names]  # type: ignore[valid-type]
        fields.update(confidence=float, model_version=str, features_used=int, probabilities=list[float])
        return _typed_dict("Prediction", fields)

