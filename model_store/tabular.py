"""Any CSV with a header row -> encoded features, labels and the ModelSchema that describes them.

The typing rules (README "Serve your own model"):
  - every non-empty value a finite number: continuous, or binary when only 0 and 1 occur;
  - any text value: categorical (XGBoost's native categorical support), categories sorted, coded
    0..k-1 in that order. A column mixing numbers and text is categorical only when it has at most
    MAX_MIXED_CATEGORIES distinct values (e.g. sizes "1", "2", "XL"); with more it is a number
    column with stray text ("n/a", "?") and is refused, naming the values. A text column with more
    than MAX_CATEGORIES distinct values is an identifier or free text, and is refused;
  - an empty cell is a missing value: a feature that has any is nullable (JSON null -> NaN);
  - the label: strings become class names (sorted); integers are classes for --task auto when
    there are at most MAX_AUTO_CLASSES distinct values, else (and for any other number) regression.
Anything that cannot be used raises DataError naming the column (and the line, for one value).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
from typing import Any

import numpy as np

from .schema import Feature, ModelSchema

MAX_CATEGORIES = 256
MAX_MIXED_CATEGORIES = 20
MAX_AUTO_CLASSES = 20
MIN_ROWS = 20
TASK_CHOICES = ("auto", "binary", "multiclass", "regression")


class DataError(ValueError):
    """The data cannot be trained on: the message names the column (and the line) and the problem."""


@dataclasses.dataclass(frozen=True)
class Table:
    x: np.ndarray  # (n, features) float64: numbers, category codes, NaN for missing
    y: np.ndarray  # (n,) int64 class codes, or float64 regression targets
    schema: ModelSchema
    sha256: str  # of the file's bytes: `sha256sum FILE` gives the same


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_rows(path: str) -> tuple[list[str], list[list[str]], str]:
    """Header, rows (cells stripped) and the file's sha256; refuses duplicate or empty column names and ragged rows."""
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8-sig")  # a spreadsheet's UTF-8 export starts with a BOM
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path} is empty") from None
    if any(not h for h in header):
        raise DataError(f"{path}: column {header.index('') + 1} has no name in the header row")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column name(s) {', '.join(map(repr, dupes))}")
    rows = []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path} line {line_no}: {len(row)} values, expected {len(header)} (one per column)")
        rows.append([cell.strip() for cell in row])
    return header, rows, hashlib.sha256(raw).hexdigest()


def column_mismatch(path: str, expected: list[str], header: list[str]) -> DataError | None:
    """Both the missing and the unknown columns, in one message; None when the header has exactly `expected`."""
    missing = [name for name in expected if name not in header]
    unknown = [name for name in header if name not in expected]
    if not missing and not unknown:
        return None
    parts = [f"missing {', '.join(map(repr, missing))}" if missing else "", f"unknown {', '.join(map(repr, unknown))}" if unknown else ""]
    return DataError(f"{path}: the columns do not match the model's features: {'; '.join(p for p in parts if p)}")


def infer_feature(path: str, name: str, cells: list[str]) -> tuple[Feature, np.ndarray]:
    """One CSV column -> its Feature and its encoded values."""
    present = [c for c in cells if c != ""]
    if not present:
        raise DataError(f"{path}: column {name!r} is empty in every row")
    nullable = len(present) < len(cells)
    numbers = [_number(c) for c in cells]
    text = sorted({c for c, v in zip(cells, numbers) if c != "" and v is None})
    if not text:
        for line_no, (cell, v) in enumerate(zip(cells, numbers), start=2):
            if cell != "" and not math.isfinite(v):  # "inf", "nan": not a measurement; leave the cell empty for missing
                raise DataError(f"{path} line {line_no}: column {name!r} is not finite: {cell!r} (leave it empty for a missing value)")
        values = np.array([np.nan if v is None else v for v in numbers], dtype=np.float64)
        kind = "binary" if set(np.unique(values[~np.isnan(values)]).tolist()) <= {0.0, 1.0} else "continuous"
        lo, hi = (0.0, 1.0) if kind == "binary" else (float(np.nanmin(values)), float(np.nanmax(values)))
        return Feature(name, kind, lo, hi, nullable=nullable), values
    categories = sorted(set(present))
    numeric = len(text) < len(categories)
    if numeric and len(categories) > MAX_MIXED_CATEGORIES:
        shown = ", ".join(map(repr, text[:5])) + (" ..." if len(text) > 5 else "")
        raise DataError(
            f"{path}: column {name!r} mixes numbers with text ({shown}): clean or empty those cells "
            f"(an empty cell is a missing value), or make every value text to use it as a category"
        )
    if len(categories) > MAX_CATEGORIES:
        raise DataError(
            f"{path}: column {name!r} has {len(categories)} distinct text values (over {MAX_CATEGORIES}): "
            "an identifier or free text, not a category; drop the column"
        )
    feature = Feature(name, "categorical", categories=tuple(categories), nullable=nullable)
    values = np.array([np.nan if c == "" else feature.codes[c] for c in cells], dtype=np.float64)
    return feature, values


def infer_label(path: str, name: str, cells: list[str], task: str) -> tuple[str, tuple[str, ...], np.ndarray]:
    """The label column -> (task, class names, y)."""
    for line_no, cell in enumerate(cells, start=2):
        if cell == "":
            raise DataError(f"{path} line {line_no}: label {name!r} is empty (every row needs a label)")
    numbers = [_number(c) for c in cells]
    is_text = any(v is None for v in numbers)
    is_int = not is_text and all(math.isfinite(v) and v == int(v) for v in numbers)
    distinct = sorted(set(cells)) if is_text else sorted(set(numbers))
    if task == "auto":
        classify = is_text or (is_int and len(distinct) <= MAX_AUTO_CLASSES)
        task = ("binary" if len(distinct) == 2 else "multiclass") if classify else "regression"
    if task == "regression":
        if is_text:
            raise DataError(f"{path}: label {name!r} has text values ({', '.join(map(repr, distinct[:3]))}); regression needs numbers")
        if not all(math.isfinite(v) for v in numbers):
            raise DataError(f"{path}: label {name!r} has a value that is not finite")
        if len(distinct) < 2:
            raise DataError(f"{path}: label {name!r} has one value only ({distinct[0]:g}): nothing to learn")
        return task, (), np.array(numbers, dtype=np.float64)
    if not is_text and not is_int:
        raise DataError(f"{path}: label {name!r} has non-integer numbers: use --task regression, or integer or text classes")
    if len(distinct) < 2:
        raise DataError(f"{path}: label {name!r} has one class only ({cells[0]!r}): nothing to learn")
    if task == "binary" and len(distinct) != 2:
        raise DataError(f"{path}: label {name!r} has {len(distinct)} classes; --task binary needs 2")
    if task == "multiclass" and len(distinct) == 2:
        raise DataError(f"{path}: label {name!r} has 2 classes; use --task binary (or auto)")
    class_names = tuple(distinct) if is_text else tuple(str(int(v)) for v in distinct)
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[c if is_text else str(int(v))] for c, v in zip(cells, numbers)], dtype=np.int64)
    counts = np.bincount(y, minlength=len(class_names))
    if counts.min() < 2:
        raise DataError(
            f"{path}: label {name!r} class {class_names[int(counts.argmin())]!r} has {int(counts.min())} row: "
            "each class needs at least 2 (one to train on, one to test)"
        )
    return task, class_names, y


def example_record(features: tuple[Feature, ...], row: np.ndarray) -> dict[str, Any]:
    """An encoded row as the API's JSON record: numbers, category names, null."""
    record: dict[str, Any] = {}
    for f, v in zip(features, row.tolist()):
        if math.isnan(v):
            record[f.name] = None
        elif f.kind == "categorical":
            record[f.name] = f.categories[int(v)]
        else:
            record[f.name] = v
    return record


def _require_label(path: str, header: list[str], label: str) -> None:
    if label not in header:
        # Excel in many locales saves "CSV" separated by ';', and some tools by tabs
        separator = next((name for mark, name in ((";", "';'"), ("\t", "tabs")) if len(header) == 1 and mark in header[0]), None)
        hint = f"; the file looks separated by {separator}: save it comma-separated" if separator else ""
        raise DataError(f"label column {label!r} is missing from {path} (its columns: {', '.join(map(repr, header[:10]))}"
                        f"{' ...' if len(header) > 10 else ''}){hint}")


def read_sample(path: str, label: str, feature_names: list[str], task: str) -> Table:
    """A sample for an imported booster: exactly its features (in any order) and the label.

    The features are typed by the same rules as for training, and put in the booster's order."""
    header, rows, digest = read_rows(path)
    _require_label(path, header, label)
    mismatch = column_mismatch(path, feature_names, [h for h in header if h != label])
    if mismatch:
        raise mismatch
    if not rows:
        raise DataError(f"{path} has no data rows")
    return _typed_table(path, header, rows, digest, feature_names, label, task)


def _typed_table(path: str, header: list[str], rows: list[list[str]], digest: str, feature_names: list[str], label: str, task: str) -> Table:
    """The named feature columns typed (in that order), then the label."""
    columns = dict(zip(header, zip(*rows)))
    typed = [infer_feature(path, name, list(columns[name])) for name in feature_names]
    features = tuple(f for f, _ in typed)
    task, class_names, y = infer_label(path, label, list(columns[label]), task)
    x = np.column_stack([v for _, v in typed])
    return Table(x, y, ModelSchema(task, features, class_names, _example(features, x)), digest)  # type: ignore[arg-type]


def _example(features: tuple[Feature, ...], x: np.ndarray) -> dict[str, Any]:
    complete = np.flatnonzero(~np.isnan(x).any(axis=1))
    # a row without missing values shows every field's type
    return example_record(features, x[complete[0] if len(complete) else 0])


def read_table(path: str, label: str, task: str = "auto") -> Table:
    header, rows, digest = read_rows(path)
    _require_label(path, header, label)
    if len(header) < 2:
        raise DataError(f"{path} has no feature column besides the label {label!r}")
    if len(rows) < MIN_ROWS:
        raise DataError(f"{path} has {len(rows)} data rows; at least {MIN_ROWS} are needed")
    return _typed_table(path, header, rows, digest, [h for h in header if h != label], label, task)
