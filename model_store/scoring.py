"""Scoring Arrow record batches with /predict's contract: the one scoring function the local batch
runner (model_store/score.py) and Spark (model_store/score_spark.py) both call.

Every row is checked as /predict checks a record, column by column over Arrow/numpy: a number
feature takes a finite number (a CSV cell that parses as one), a categorical one a value from its
stored list, null only where the schema says nullable, and the range policy (XGB_RANGE_CHECK:
warn counts, reject refuses, off ignores). A row that fails goes to the rejects with its row
number, the field and the reason; the rest are predicted and get /predict's answer fields
(model_store/answers.py), in the order /predict's JSON has them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .answers import RangeCheck, allowed, class_columns, predicted, value_column
from .bundle import BundleManifest, ModelBundle
from .schema import Feature

RANGE_POLICIES = ("warn", "reject", "off")
REJECT_SCHEMA = pa.schema([("row", pa.int64()), ("field", pa.string()), ("reason", pa.string()), ("value", pa.string())])
# A CSV number cell /predict would take as a JSON number (Arrow's own float parser is laxer: "1.", ".5" pass it too, which is fine).
NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


class ScoreError(ValueError):
    """Input that cannot be scored at all (columns, types, corrupt files): the message names the path and the problem."""


@dataclasses.dataclass
class Scored:
    table: pa.Table  # the kept rows' columns (the input's, or the id column) and the answer fields
    rejects: list[tuple[int, str, str, str]]  # (row, field, reason, value), row 1-based within the scored input
    rows: int  # rows read, rejected ones included
    out_of_range: np.ndarray  # per feature: values outside the range, counted ("warn") or refused ("reject")


def feature_column_error(f: Feature, arrow_type: pa.DataType) -> str | None:
    """Why a column of this Arrow type cannot hold the feature at all, or None."""
    text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or (
        pa.types.is_dictionary(arrow_type) and pa.types.is_string(arrow_type.value_type))
    if pa.types.is_null(arrow_type):
        return None
    if f.kind == "categorical":
        return None if text else f"is {arrow_type}; feature {f.name!r} is categorical: it needs text ({allowed(f)})"
    numeric = pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)
    return None if numeric or text else f"is {arrow_type}; feature {f.name!r} is a number"


def answer_fields(bundle: ModelBundle | BundleManifest) -> list[pa.Field]:
    """The answer columns, named and ordered as /predict's JSON answer."""
    schema = bundle.schema
    if not schema.is_classification:
        fields = [pa.field("prediction", pa.float64())]
    else:
        fields = [pa.field("predicted_class", pa.int64()), pa.field("confidence", pa.float64())]
    fields += [pa.field("model_version", pa.string()), pa.field("features_used", pa.int64())]
    if schema.is_classification:
        fields.append(pa.field("probabilities", pa.list_(pa.float64())))
        if not schema.has_default_class_names:
            fields.append(pa.field("predicted_label", pa.string()))
    return fields


class Scorer:
    """One model's scoring of record batches whose columns are its features (plus, maybe, an id column).
    Built from a BundleManifest it checks columns and names outputs only (score() needs the booster)."""

    def __init__(self, bundle: ModelBundle | BundleManifest, range_check: str = "warn", id_column: str | None = None, explainer: Any = None) -> None:
        if range_check not in RANGE_POLICIES:
            raise ScoreError(f"range check {range_check!r} is not one of {', '.join(RANGE_POLICIES)}")
        self.bundle = bundle
        self.schema = bundle.schema
        self.range_check = range_check
        self.id_column = id_column
        self.range = RangeCheck(self.schema)
        # /explain's answer for each row (serving.explain.Explainer), as columns after the answer fields
        self.explainer = explainer
        self.answer_fields = answer_fields(bundle) + (explain_fields(self.schema) if explainer is not None else [])
        self.categories = {f.name: pa.array(f.categories, pa.string()) for f in self.schema.features if f.kind == "categorical"}

    # -- before scoring ----------------------------------------------------------------------

    def check_columns(self, where: str, schema: pa.Schema) -> None:
        """Refuse an input whose columns are not the features (plus the id column), naming them all."""
        names = list(schema.names)
        expected = list(self.schema.feature_names)
        allowed_extra = [self.id_column] if self.id_column else []
        missing = [n for n in expected + allowed_extra if n not in names]
        unknown = [n for n in names if n not in expected and n not in allowed_extra]
        problems = []
        if missing:
            problems.append(f"missing {', '.join(map(repr, missing))}")
        if unknown:
            problems.append(f"unknown {', '.join(map(repr, unknown))}")
        if problems:
            raise ScoreError(f"{where}: the columns do not match the model's features: {'; '.join(problems)}")
        clashes = [f.name for f in self.answer_fields if f.name in names and self.id_column in (None, f.name)]
        if clashes:
            raise ScoreError(f"{where}: column(s) {', '.join(map(repr, clashes))} would clash with the answer fields: pass --id-column")
        for f in self.schema.features:
            error = feature_column_error(f, schema.field(f.name).type)
            if error:
                raise ScoreError(f"{where}: column {f.name!r} {error}")

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """The id column as read, or the input's columns as the model saw them (numbers float64,
        categories text), then the answer fields: the same for every part, whatever its file type."""
        if self.id_column:
            kept = [input_schema.field(self.id_column)]
        else:
            kinds = {f.name: f.kind for f in self.schema.features}
            kept = [pa.field(name, pa.string() if kinds[name] == "categorical" else pa.float64()) for name in input_schema.names]
        return pa.schema(kept + self.answer_fields)

    # -- scoring -----------------------------------------------------------------------------

    def score(self, batch: pa.RecordBatch | pa.Table, first_row: int = 0) -> Scored:
        n = batch.num_rows
        # Column-major: each feature's column is written, range-checked and echoed as one contiguous run
        rows = np.empty((n, self.schema.n_features), dtype=np.float64, order="F")
        bad = np.zeros(n, dtype=bool)
        rejects: list[tuple[int, str, str, str]] = []
        for j, f in enumerate(self.schema.features):
            column = batch.column(f.name)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            rows[:, j], invalid, reason = self._encode(f, column)
            if invalid is not None:
                bad |= invalid
                for i in np.flatnonzero(invalid).tolist():
                    value = column[i].as_py()
                    rejects.append((first_row + i + 1, f.name, reason(value), "" if value is None else str(value)))
        counted = np.zeros(self.schema.n_features, dtype=np.int64)
        if self.range_check != "off":
            outside = self.range.out_of_range(rows) & ~bad[:, None]
            counted = outside.sum(axis=0)
            if self.range_check == "reject" and counted.any():
                for i, j in zip(*np.nonzero(outside)):
                    f = self.schema.features[j]
                    rejects.append((first_row + int(i) + 1, f.name, f"value {rows[i, j]:g} is out of range: must be {allowed(f)}", f"{rows[i, j]:g}"))
                bad |= outside.any(axis=1)
        rejects.sort()
        keep = ~bad
        if bad.any():
            kept_input = batch.filter(pa.array(keep))
            rows = rows[keep]
        else:
            kept_input = batch
        if self.id_column:
            columns = [kept_input.column(self.id_column)]
        else:
            columns = [self._echo(name, kept_input.column(name), rows) for name in kept_input.schema.names]
        answers = self._answers(rows)
        table = pa.Table.from_arrays(columns + answers, schema=self.output_schema(batch.schema))
        return Scored(table, rejects, n, counted)

    def _encode(self, f: Feature, column: pa.Array) -> tuple[np.ndarray, np.ndarray | None, Any]:
        """A feature's column -> (float64 values, NaN for missing; mask of invalid rows or None; reason(value))."""
        nulls = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
        invalid = None if f.nullable or nulls is None else nulls.copy()
        if f.kind == "categorical":
            if pa.types.is_dictionary(column.type):
                column = column.cast(pa.string())
            codes = pc.index_in(column, value_set=self.categories[f.name])
            values = codes.cast(pa.float64()).to_numpy(zero_copy_only=False)  # null (missing or unknown) -> NaN
            unknown = np.isnan(values) if nulls is None else np.isnan(values) & ~nulls
            if unknown.any():
                invalid = unknown if invalid is None else invalid | unknown
            return values, invalid, lambda v: _missing(f) if v is None else f"{v!r} is not {allowed(f)}"
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            # null (an empty cell) matches here: missing values are decided above
            not_number = ~pc.fill_null(pc.match_substring_regex(column, NUMBER), True).to_numpy(zero_copy_only=False)
            if not_number.any():
                invalid = not_number if invalid is None else invalid | not_number
                column = pc.if_else(pa.array(not_number), pa.scalar(None, column.type), column)
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        infinite = ~np.isfinite(values)
        if nulls is not None:
            infinite &= ~nulls
        if infinite.any():  # NaN or infinity in the file: not a number /predict takes (a missing value is an empty cell)
            invalid = infinite if invalid is None else invalid | infinite
        return values, invalid, lambda v: _missing(f) if v is None else f"{v!r} is not a finite number"

    def _echo(self, name: str, column: Any, rows: np.ndarray) -> pa.Array:
        """An input column as the model saw it: a number feature's float64 values (null where
        missing), a categorical one's text."""
        j = self.schema.index(name)
        if self.schema.features[j].kind == "categorical":
            return column.cast(pa.string())
        values = rows[:, j]
        return pa.array(values, mask=np.isnan(values) if self.schema.features[j].nullable else None)

    def _answers(self, rows: np.ndarray) -> list[pa.Array]:
        bundle = self.bundle
        n = len(rows)
        version = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([bundle.version])).cast(pa.string())
        features_used = pa.array(np.full(n, self.schema.n_features, dtype=np.int64))
        if not self.schema.is_classification:
            values = value_column(bundle.predict(rows)) if n else np.empty(0)
            return [pa.array(values.astype(np.float64, copy=False)), version, features_used]
        k = self.schema.n_classes
        proba = bundle.predict_proba(rows) if n else np.empty((0, k))
        classes, confidence = predicted(proba)
        confidence, proba = class_columns(proba, confidence)
        offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
        probabilities = pa.ListArray.from_arrays(offsets, pa.array(proba.reshape(-1)))
        out = [pa.array(classes.astype(np.int64)), pa.array(confidence), version, features_used, probabilities]
        if not self.schema.has_default_class_names:
            out.append(pc.take(pa.array(self.schema.class_names, pa.string()), pa.array(classes.astype(np.int64))))
        return out + (self._explanations(rows) if self.explainer is not None else [])

    def _explanations(self, rows: np.ndarray) -> list[pa.Array]:
        """/explain's fields for each row (its prediction is the answer fields already)."""
        answers = self.explainer.explain(rows) if len(rows) else []
        names = self.schema.feature_names
        contributions = pa.StructArray.from_arrays(
            [pa.array([a["contributions"][name] for a in answers], pa.float64()) for name in names], names=list(names))
        return [pa.array([a["explained_class"] for a in answers], pa.int64()), pa.array([a["base_value"] for a in answers], pa.float64()),
                pa.array([a["margin"] for a in answers], pa.float64()), contributions]  # fmt: skip


def empty_table(schema: pa.Schema) -> pa.Table:
    """schema.empty_table() without the pandas import it costs: the run's parent process, which
    loads no xgboost (that imports pandas in the workers anyway), writes an empty rejects file."""
    return pa.Table.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)


def explaining_scorer(bundle: ModelBundle, range_check: str = "warn", id_column: str | None = None, explain: bool = False) -> Scorer:
    """A Scorer, with /explain's Explainer (serving/explain.py, and its settings from the environment) when `explain`."""
    explainer = None
    if explain:
        from serving.contract import Contract
        from serving.explain import Explainer
        from serving.settings import load

        explainer = Explainer(bundle, Contract(bundle.schema, load()))
    return Scorer(bundle, range_check, id_column, explainer)


def explain_fields(schema: Any) -> list[pa.Field]:
    return [pa.field("explained_class", pa.int64()), pa.field("base_value", pa.float64()), pa.field("margin", pa.float64()),
            pa.field("contributions", pa.struct([pa.field(name, pa.float64()) for name in schema.feature_names]))]  # fmt: skip


def _missing(f: Feature) -> str:
    return f"{f.name!r} is required: empty or null, and the model has no missing values for it"

