"""Captured records as Parquet: the columns a model's schema gives them, writing and reading them back.

The service writes them (serving/capture.py), the quality report and retraining read them
(model_store/quality.py, train_export.py --data <capture URI>). The layout (docs/capture.md):

    <URI>/model_version=<version>/hour=<YYYY-MM-DDTHH>/<pid>-<sequence>-<random>.parquet

hive-style directories, so pyarrow and pandas give `model_version` and `hour` back as columns.
Each file's columns:

    request_id       string      X-Request-ID, "<id>-<index>" for a batch's record (serving/request_ids.py)
    timestamp        timestamp[ms, UTC]   when the answer was computed
    role             dictionary<string>   primary | canary (the candidate answered) | shadow (the candidate's
                                          unsent answer to the same record)
    <feature> ...    one column per feature, in schema order, named verbatim: continuous -> double,
                     binary -> bool, categorical -> dictionary<int16, string> over the schema's
                     categories; null where the record had null
    classification:  predicted_class int32, confidence float, probabilities list<float>
    regression:      prediction float
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .schema import ModelSchema

META_COLUMNS = ("request_id", "timestamp", "role")
CLASS_COLUMNS = ("predicted_class", "confidence", "probabilities")
VALUE_COLUMNS = ("prediction",)
PARTITIONS = ("model_version", "hour")
ROLES = ("primary", "canary", "shadow")


class CaptureError(ValueError):
    """Captured data that cannot be read or used: the message names the URI or column and the problem."""


def reserved_clash(schema: ModelSchema) -> str | None:
    """A feature whose name is one of capture's own columns (it could not be captured), or None."""
    reserved = set(META_COLUMNS + CLASS_COLUMNS + VALUE_COLUMNS + PARTITIONS)
    return next((name for name in schema.feature_names if name in reserved), None)


def arrow_schema(schema: ModelSchema):
    import pyarrow as pa

    fields = [pa.field("request_id", pa.string(), nullable=False), pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
              pa.field("role", pa.dictionary(pa.int8(), pa.string()), nullable=False)]  # fmt: skip
    for f in schema.features:
        kind = {"continuous": pa.float64(), "binary": pa.bool_()}.get(f.kind) or pa.dictionary(pa.int16(), pa.string())
        fields.append(pa.field(f.name, kind))
    if schema.is_classification:
        fields += [pa.field("predicted_class", pa.int32()), pa.field("confidence", pa.float32()), pa.field("probabilities", pa.list_(pa.float32()))]
    else:
        fields.append(pa.field("prediction", pa.float32()))
    return pa.schema(fields)


def feature_arrays(schema: ModelSchema, columns: np.ndarray) -> list[Any]:
    """Encoded records as (features, records) columns (the service's float64 values: codes for
    categories, NaN for null) -> one typed Arrow array per feature."""
    import pyarrow as pa

    columns = np.ascontiguousarray(columns)  # each row contiguous: Arrow wraps it instead of copying it
    missing = np.isnan(columns)
    arrays = []
    for j, f in enumerate(schema.features):
        column, mask = columns[j], (missing[j] if f.nullable else None)
        if f.kind == "continuous":
            arrays.append(pa.array(column, type=pa.float64(), mask=mask))
        elif f.kind == "binary":
            arrays.append(pa.array(column == 1.0, type=pa.bool_(), mask=mask))
        else:
            codes = pa.array(np.nan_to_num(column).astype(np.int16), mask=mask)
            arrays.append(pa.DictionaryArray.from_arrays(codes, pa.array(f.categories, type=pa.string())))
    return arrays


def filesystem(uri: str):
    """(pyarrow filesystem, path) for a local directory or s3://bucket/prefix; AWS_ENDPOINT_URL_S3
    (or AWS_ENDPOINT_URL) points S3 at another endpoint, e.g. a test's moto server."""
    from pyarrow import fs

    if uri.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options: dict[str, Any] = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            options.update(endpoint_override=host, scheme=scheme)
        return fs.S3FileSystem(**options), uri.removeprefix("s3://").rstrip("/")
    if "://" in uri:
        raise CaptureError(f"capture URI {uri!r}: use a local directory or s3://bucket/prefix")
    return fs.LocalFileSystem(), os.path.abspath(uri)


def read(uri: str, columns: list[str] | None = None):
    """Every captured record under `uri` as one pyarrow Table (with model_version and hour)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    filesystem_, path = filesystem(uri)
    partitioning = ds.partitioning(pa.schema([("model_version", pa.string()), ("hour", pa.string())]), flavor="hive")
    try:
        dataset = ds.dataset(path, filesystem=filesystem_, format="parquet", partitioning=partitioning, exclude_invalid_files=False)
        if not dataset.files:
            raise CaptureError(f"no captured records under {uri}")
        return dataset.to_table(columns=columns)
    except (OSError, pa.ArrowInvalid) as exc:
        raise CaptureError(f"cannot read the captured records under {uri}: {exc}") from None


def feature_names(table) -> list[str]:
    """The captured table's feature columns: every column that is not capture's own, in file order."""
    reserved = set(META_COLUMNS + CLASS_COLUMNS + VALUE_COLUMNS + PARTITIONS)
    return [name for name in table.column_names if name not in reserved]


def feature_cells(table) -> dict[str, list[str]]:
    """The captured feature columns as a CSV's cells (text, "" for null): training reads them with
    exactly the rules and checks it applies to a CSV (model_store/tabular.py)."""
    import pyarrow as pa

    cells: dict[str, list[str]] = {}
    for name in feature_names(table):
        column = table.column(name)
        values = column.to_pylist()
        if pa.types.is_boolean(column.type):
            cells[name] = ["" if v is None else ("1" if v else "0") for v in values]
        elif pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
            cells[name] = ["" if v is None else repr(float(v)) for v in values]
        else:
            cells[name] = ["" if v is None else str(v) for v in values]
    return cells


def training_table(uri: str, labels_path: str, task: str = "auto"):
    """Captured records joined with their labels, typed and checked exactly as a CSV of the same
    columns would be (model_store/tabular.py); the shadow's rows (the same records again) are left out."""
    import hashlib

    import pyarrow.compute as pc

    from . import quality, tabular

    table = read(uri)
    labels = quality.read_labels(labels_path)
    table = table.filter(pc.not_equal(table.column("role").cast("string"), "shadow"))
    ids = table.column("request_id").to_pylist()
    keep = [i for i, rid in enumerate(ids) if rid in labels]
    if not keep:
        raise tabular.DataError(f"no label in {labels_path} matches a captured request_id under {uri}")
    table = table.take(keep)
    cells = feature_cells(table)
    names = list(cells)
    cells["label"] = [labels[ids[i]] for i in keep]
    header = [*names, "label"]
    if "label" in names:
        raise tabular.DataError(f"{uri}: a captured feature is named 'label', the labels' column")
    rows = [list(row) for row in zip(*(cells[h] for h in header))]
    if len(rows) < tabular.MIN_ROWS:
        raise tabular.DataError(f"{uri}: {len(rows)} captured records have a label; at least {tabular.MIN_ROWS} are needed")
    digest = hashlib.sha256("\n".join(",".join(row) for row in [header, *rows]).encode()).hexdigest()
    return tabular._typed_table(f"{uri} + {labels_path}", header, rows, digest, names, "label", task)
