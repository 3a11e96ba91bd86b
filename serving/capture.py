"""Capture: the records the service answered, with their answers, written as typed Parquet.

    XGB_CAPTURE                 off (default) or the percent of records to capture (0-100]
    XGB_CAPTURE_URI             a local directory or s3://bucket/prefix (required when capture is on)
    XGB_CAPTURE_FLUSH_SECONDS   write what is pending at least this often (default 10)
    XGB_CAPTURE_FLUSH_ROWS      ... or as soon as this many records are pending (default 50,000)
    XGB_CAPTURE_QUEUE_RECORDS   records a worker may hold unwritten; beyond, new ones are dropped (default 200,000)

The columns and the directory layout are model_store/captured.py's. On the request path a sampled
request costs one deque append (its encoded rows and its answer as computed: /predict's JSON bytes,
/predict_batch's model outputs): no encoding, no I/O. A writer thread per worker turns what is
pending into one Arrow table per (model version, hour) and writes it. It shares the worker's GIL
with the event loop, so it never works record by record in Python: answer bodies are parsed by
Arrow's JSON reader, model outputs and ids are numpy and Arrow kernels. A file is written
locally under a hidden name and renamed, or an S3 object through boto3's managed transfer (multipart above 8 MiB). In shadow mode
the writer also scores the captured primary records with the candidate (role "shadow"), off the
request path. The worker's shutdown hook writes everything pending before the process exits, so
an answered record is not lost on SIGTERM. A full queue or a failing sink drops records and counts
them in xgb_capture_dropped_total{reason}; a request never waits for, or fails because of, capture.

Memory: the queue holds each request's arrays until the next write, so without capture a request's
memory is the previous one's, warm; with it, glibc's defaults hand the freed blocks back to the
kernel after every write (trim) and map large ones afresh, and every request then page-faults its
memory in again (kernel time that made capture's cost on /predict_batch twice the writer's own, see
docs/capture.md). A worker that captures therefore tells glibc, through mallopt (its public
tuning call), to keep freed memory for reuse, and has Arrow allocate through it (keep_freed_memory). Not on glibc, or if the call
fails, the defaults stay: slower, not wrong. The worker's memory stays near its high-water mark,
which the bounded queue bounds.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import random
import threading
import time
import uuid
from typing import Any, NamedTuple

import numpy as np
import orjson

from model_store import ModelBundle, captured
from model_store.answers import class_columns, predicted
from model_store.captured import CaptureError

from . import metrics
from .request_ids import record_id, record_ids
from .rollout import Scored
from .settings import Settings

logger = logging.getLogger("xgb_service")

MULTIPART_BYTES = 8 * 1024 * 1024
# glibc's mallopt parameters (malloc.h) and what a capturing worker sets them to: blocks up to 32 MiB (the most glibc takes)
# come from the heap (a write's columns are ~300 bytes per record), and up to 256 MiB freed at the
# heap's top stays there. Setting them also turns off glibc's own adjustment of both.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES, _TRIM_THRESHOLD_BYTES = 32 << 20, 256 << 20
_ROLE_CODES = {role: code for code, role in enumerate(captured.ROLES)}
# What the request path queued, by route: /predict's answer bytes, /predict_batch's model outputs, explanations
_ANSWER, _SCORES, _EXPLANATIONS = "answer", "scores", "explanations"


class _Part(NamedTuple):
    """Records on their way to a table: ids (Arrow strings), timestamps (epoch seconds), the encoded
    rows as (features, records) columns, the answer columns (Arrow, as arrow_schema types them) and
    the answering model's version (Arrow strings)."""

    ids: Any
    stamps: np.ndarray
    columns: np.ndarray
    outputs: list[Any]
    versions: Any


def _answer_parsing(outputs: list[Any]) -> tuple[Any, Any]:
    """Arrow JSON reader options for answer bodies: the answer's columns and its model_version, the
    rest ignored. Numbers are read as float64, as a client's JSON parser does, then cast."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    wide = {pa.int32(): pa.int64(), pa.float32(): pa.float64(), pa.list_(pa.float32()): pa.list_(pa.float64())}
    schema = pa.schema([pa.field(f.name, wide[f.type]) for f in outputs] + [pa.field("model_version", pa.string())])
    # one thread: the worker's other core answers requests
    return (pa_json.ReadOptions(use_threads=False, block_size=8 << 20),
            pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))


def _parquet_options(schema: Any) -> dict[str, Any]:
    """Dictionary encoding only where the values repeat (roles, categories): tried on every float
    column, it is most of the write's cost and then abandoned for distinct values. Min/max
    statistics only for the columns a reader selects records by (request_id, timestamp): on every
    feature they are a sixth of the write, and nothing filters files by a feature's range."""
    import pyarrow as pa

    return {"compression": "zstd", "use_dictionary": [f.name for f in schema if pa.types.is_dictionary(f.type)],
            "write_statistics": ["request_id", "timestamp"]}


class LocalSink:
    """Files under a local directory: written as a hidden file, then renamed (readers skip hidden files)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        try:
            os.makedirs(self.root, exist_ok=True)
            probe = os.path.join(self.root, f".probe-{os.getpid()}")
            open(probe, "wb").close()
            os.remove(probe)
        except OSError as exc:
            raise CaptureError(f"XGB_CAPTURE_URI={root!r}: the directory is not writable ({exc.strerror})") from None

    def write(self, key: str, data: bytes) -> None:
        path = os.path.join(self.root, key)
        directory, name = os.path.split(path)
        os.makedirs(directory, exist_ok=True)
        hidden = os.path.join(directory, f".{name}.tmp")
        with open(hidden, "wb") as f:
            f.write(data)
        os.replace(hidden, path)


class S3Sink:
    """Objects under s3://bucket/prefix, uploaded by boto3's managed transfer (multipart when large).
    AWS_ENDPOINT_URL_S3 points it at another endpoint (boto3 reads it; a test's moto server)."""

    def __init__(self, uri: str) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        self.bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.prefix = prefix.strip("/")
        self.client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None)
        self.config = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES, use_threads=False)

    def write(self, key: str, data: bytes) -> None:
        self.client.upload_fileobj(io.BytesIO(data), self.bucket, f"{self.prefix}/{key}" if self.prefix else key, Config=self.config)


def sink_for(uri: str) -> LocalSink | S3Sink:
    return S3Sink(uri) if uri.startswith("s3://") else LocalSink(uri)


class Capture:
    """One worker's capture: a bounded queue filled on the event loop, drained by a writer thread."""

    def __init__(self, settings: Settings, primary: ModelBundle, candidate: ModelBundle | None, mode: str | None) -> None:
        self.share = settings.capture / 100.0
        self.schema = primary.schema
        self.arrow_schema = captured.arrow_schema(primary.schema)
        self.primary = primary
        self.shadow = candidate if mode == "shadow" else None
        self.sink = sink_for(settings.capture_uri)
        self.flush_rows = settings.capture_flush_rows
        self.flush_seconds = settings.capture_flush_seconds
        self.max_records = settings.capture_queue_records
        self.pending: collections.deque = collections.deque()
        self.pending_records = 0
        self._lock = threading.Lock()  # pending_records is changed by the event loop and the writer
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._sequence = 0
        self._failing_since: float | None = None
        for reason in ("queue_full", "sink_error"):
            metrics.capture_dropped.labels(reason=reason).inc(0)
        self._outputs = [f for f in self.arrow_schema if f.name in captured.CLASS_COLUMNS + captured.VALUE_COLUMNS]
        self._json_read, self._json_parse = _answer_parsing(self._outputs)
        self.parquet_options = _parquet_options(self.arrow_schema)
        self._warm_up()

    def _warm_up(self) -> None:
        """Build and encode a record of each kind now: pyarrow imports pandas (seconds) the first time it
        converts a Python list, which in the writer thread would hold the GIL, and the event loop, that long."""
        rows = np.zeros((1, self.schema.n_features))
        if self.schema.is_classification:
            k = max(self.schema.n_classes, 2)
            outputs, classes = np.eye(1, k), np.zeros(1, dtype=np.int64)
            answer = {"predicted_class": 0, "confidence": 1.0, "probabilities": outputs[0].tolist()}
        else:
            outputs, classes, answer = np.zeros(1), None, {"prediction": 0.0}
        answer["model_version"] = self.primary.version
        items = [(_ANSWER, "warm-up", time.time(), rows, orjson.dumps(answer)),
                 (_SCORES, "warm-up", time.time(), rows, outputs, classes, self.primary.version),
                 (_EXPLANATIONS, "warm-up", time.time(), rows, [{"prediction": answer}], False)]  # fmt: skip
        _parquet_bytes(self.table(items), self.parquet_options)

    # -- the request path: one deque append per sampled request ------------------------------------

    def record_answer(self, request_id: str, rows: np.ndarray, body: bytes) -> None:
        """/predict: its record and the answer's JSON bytes as sent (parsed by the writer, in Arrow)."""
        if self.share < 1.0 and random.random() >= self.share:
            return
        self._queue((_ANSWER, request_id, time.time(), rows, body), 1)

    def record_scores(self, request_id: str, rows: np.ndarray, scored: Scored, model_version: str) -> None:
        """/predict_batch: its records and the model call's outputs; its records are sampled by the writer."""
        # the outputs, not the Scored: its answer bodies would be held in the queue for nothing
        self._queue((_SCORES, request_id, time.time(), rows, scored.outputs, scored.classes, model_version), len(rows))

    def record_explanations(self, request_id: str, rows: np.ndarray, explanations: list[dict[str, Any]], batch: bool) -> None:
        """/explain, /explain_batch: the records and their explanations (each one's "prediction" is captured)."""
        if not batch and self.share < 1.0 and random.random() >= self.share:
            return
        self._queue((_EXPLANATIONS, request_id, time.time(), rows, explanations, batch), len(rows))

    def _queue(self, item: tuple, n: int) -> None:
        with self._lock:
            if self.pending_records + n > self.max_records:
                full = True
            else:
                full = False
                self.pending_records += n
                self.pending.append(item)
        if full:
            metrics.capture_dropped.labels(reason="queue_full").inc(n)
        elif self.pending_records >= self.flush_rows:
            self._wake.set()

    # -- the writer thread -------------------------------------------------------------------------

    def start(self) -> None:
        keep_freed_memory()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write everything pending and stop the writer (the worker's shutdown hook)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()  # whatever arrived after the writer's last drain (or all of it, with no writer)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write what is pending now; returns the records written."""
        with self._lock:
            items = [self.pending.popleft() for _ in range(len(self.pending))]
            self.pending_records -= sum(len(item[3]) for item in items)
        if not items:
            return 0
        try:
            table = self.table(items)
        except Exception:  # a bug here must not stop the writer: count and go on
            logger.exception("capture: could not build the records' table")
            metrics.capture_dropped.labels(reason="sink_error").inc(sum(len(item[3]) for item in items))
            return 0
        return self.write(table)

    def table(self, items: list[tuple]) -> Any:
        """The pending requests' records as one Arrow table in request order (plus the shadow's, in shadow mode).

        Built by numpy and Arrow's own kernels, never record by record in Python: the writer thread
        shares the worker's GIL with the event loop answering requests."""
        import pyarrow as pa

        groups: dict[str, list[tuple]] = {_ANSWER: [], _SCORES: [], _EXPLANATIONS: []}
        for item in items:
            groups[item[0]].append(item)
        parts = [part for part in (self._part(kind, group) for kind, group in groups.items() if group) if len(part.stamps)]
        if not parts:
            parts = [self._empty_part()]
        if len(parts) == 1:
            (part,) = parts
        else:  # records of different routes, back in the order they were answered
            stamps = np.concatenate([p.stamps for p in parts])
            order = np.argsort(stamps, kind="stable")
            take = pa.array(order)
            part = _Part(pa.concat_arrays([p.ids for p in parts]).take(take), stamps[order],
                         np.concatenate([p.columns for p in parts], axis=1)[:, order],
                         [pa.concat_arrays(list(column)).take(take) for column in zip(*(p.outputs for p in parts))],
                         pa.concat_arrays([p.versions for p in parts]).take(take))  # fmt: skip
        table = self._assemble(part)
        if self.shadow is not None:
            primary = np.asarray(table.column("role").chunk(0).indices) == _ROLE_CODES["primary"]
            if primary.any():
                table = pa.concat_tables([table, self._shadow_table(part, primary)])
        return table

    def _part(self, kind: str, group: list[tuple]) -> _Part:
        if kind == _SCORES:
            return self._scored_part(group)
        if kind == _ANSWER:
            _, ids, stamps, rows, bodies = zip(*group)
            return self._answered_part(list(ids), np.array(stamps), _columns(rows), list(bodies))
        ids, stamps, rows_parts, bodies = [], [], [], []
        for _, request_id, stamp, rows, explanations, batch in group:  # few: TreeSHAP answers hundreds of records a second
            if batch:
                keep = self._sampled(len(rows))
                ids.extend(record_id(request_id, int(i)) for i in keep)
            else:
                keep = np.arange(1)
                ids.append(request_id)
            stamps.extend([stamp] * len(keep))
            rows_parts.append(rows[keep])
            bodies.extend(orjson.dumps(explanations[i]["prediction"]) for i in keep)
        return self._answered_part(ids, np.array(stamps, dtype=np.float64), _columns(rows_parts), bodies)

    def _sampled(self, n: int) -> np.ndarray:
        """The positions of a batch's records that are captured."""
        return np.arange(n) if self.share >= 1.0 else np.flatnonzero(np.random.random(n) < self.share)

    def _empty_part(self) -> _Part:
        import pyarrow as pa

        return _Part(pa.array([], pa.string()), np.zeros(0), np.zeros((self.schema.n_features, 0)),
                     [pa.array([], f.type) for f in self._outputs], pa.array([], pa.string()))  # fmt: skip

    def _answered_part(self, ids: list[str], stamps: np.ndarray, columns: np.ndarray, bodies: list[bytes]) -> _Part:
        """Records whose answers are JSON bodies: parsed all at once by Arrow's JSON reader (which does not hold the GIL)."""
        import pyarrow as pa
        import pyarrow.json as pa_json

        if not bodies:
            return self._empty_part()
        parsed = pa_json.read_json(io.BytesIO(b"\n".join(bodies)), read_options=self._json_read, parse_options=self._json_parse)
        outputs = [parsed.column(f.name).combine_chunks().cast(f.type) for f in self._outputs]
        return _Part(pa.array(ids, pa.string()), stamps, columns, outputs, parsed.column("model_version").combine_chunks())

    def _scored_part(self, group: list[tuple]) -> _Part:
        """Batch requests' records from their model calls' outputs, vectorised (as model_store.answers answers them)."""
        import pyarrow as pa

        _, request_ids, stamps, rows_parts, outputs_parts, classes_parts, versions = zip(*group)
        counts = np.array([len(rows) for rows in rows_parts])
        ids = record_ids(list(request_ids), counts)
        columns = _columns(rows_parts)
        outputs = np.concatenate(outputs_parts)
        classes = np.concatenate(classes_parts) if self.schema.is_classification else None
        stamps_per_record = np.repeat(np.array(stamps, dtype=np.float64), counts)
        version_per_record = pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(len(versions), dtype=np.int32), counts)),
                                                            pa.array(versions, pa.string()))  # fmt: skip
        if self.share < 1.0:
            keep = self._sampled(len(outputs))
            columns, outputs, stamps_per_record = columns[:, keep], outputs[keep], stamps_per_record[keep]
            classes = classes[keep] if classes is not None else None
            ids, version_per_record = ids.take(pa.array(keep)), version_per_record.take(pa.array(keep))
        return _Part(ids, stamps_per_record, columns, self._output_arrays(outputs, classes), version_per_record.cast(pa.string()))

    def _output_arrays(self, outputs: np.ndarray, classes: np.ndarray | None) -> list[Any]:
        """The answer columns of a model's outputs: the class, confidence and probabilities as answered, or the value."""
        import pyarrow as pa

        if classes is None:
            return [pa.array(outputs.astype(np.float32))]
        confidence, proba = class_columns(outputs, outputs[np.arange(len(outputs)), classes])
        probabilities = pa.FixedSizeListArray.from_arrays(pa.array(proba.astype(np.float32).ravel()), proba.shape[1])
        return [pa.array(classes.astype(np.int32)), pa.array(confidence.astype(np.float32)), probabilities.cast(pa.list_(pa.float32()))]

    def _shadow_table(self, part: _Part, primary: np.ndarray) -> Any:
        """The candidate's unsent answers to the primary's records (shadow mode), scored here, off the request path."""
        import pyarrow as pa

        model = self.shadow
        assert model is not None
        columns = part.columns[:, primary]
        rows = np.ascontiguousarray(columns.T)
        if self.schema.is_classification:
            proba = model.predict_proba(rows)
            outputs = self._output_arrays(proba, predicted(proba)[0])
        else:
            outputs = self._output_arrays(model.predict(rows), None)
        shadow = _Part(part.ids.filter(pa.array(primary)), part.stamps[primary], columns, outputs, pa.array([model.version] * len(rows), pa.string()))
        return self._assemble(shadow, np.full(len(rows), _ROLE_CODES["shadow"], dtype=np.int8))

    def _assemble(self, part: _Part, roles: np.ndarray | None = None) -> Any:
        import pyarrow as pa

        versions = part.versions.dictionary_encode()
        if roles is None:  # the primary's answers, or the canary's: decided once per version
            role_of = np.array([_ROLE_CODES["primary" if v == self.primary.version else "canary"] for v in versions.dictionary.to_pylist()], dtype=np.int8)
            roles = role_of[np.asarray(versions.indices)] if len(role_of) else np.zeros(0, dtype=np.int8)
        columns = [part.ids, pa.array((part.stamps * 1000).astype(np.int64), pa.timestamp("ms", tz="UTC")),
                   pa.DictionaryArray.from_arrays(pa.array(roles), pa.array(captured.ROLES)),
                   *captured.feature_arrays(self.schema, part.columns), *part.outputs]  # fmt: skip
        table = pa.Table.from_arrays(columns, schema=self.arrow_schema)
        # model_version travels with the rows (dictionary-encoded) until write() splits them into partitions
        return table.append_column("model_version", versions)

    def write(self, table: Any) -> int:
        """One Parquet file per (model version, hour) of `table`; returns the records written."""
        import pyarrow as pa

        hours = table.column("timestamp").combine_chunks().cast(pa.int64()).to_numpy() // 3_600_000
        versions = table.column("model_version").combine_chunks()  # dictionary-encoded by _assemble
        names = versions.dictionary.to_pylist()
        keys = np.asarray(versions.indices).astype(np.int64) << 32 | hours
        groups = np.unique(keys) if len(keys) and (keys != keys[0]).any() else keys[:1]
        written = 0
        for key in groups.tolist():
            version, hour = names[key >> 32], time.strftime("%Y-%m-%dT%H", time.gmtime((key & 0xFFFFFFFF) * 3600))
            part = table if len(groups) == 1 else table.filter(pa.array(keys == key))
            data = _parquet_bytes(part.drop_columns(["model_version"]), self.parquet_options)
            self._sequence += 1
            name = f"model_version={version}/hour={hour}/{os.getpid()}-{self._sequence:06d}-{uuid.uuid4().hex[:8]}.parquet"
            try:
                self.sink.write(name, data)
            except Exception as exc:  # noqa: BLE001  the sink is outside our control: count, log once a minute
                metrics.capture_dropped.labels(reason="sink_error").inc(part.num_rows)
                now = time.monotonic()
                if self._failing_since is None or now - self._failing_since > 60:
                    self._failing_since = now
                    logger.warning("capture: writing %d records to %s failed (%s: %s); dropping them", part.num_rows, name, type(exc).__name__, exc)
                continue
            metrics.capture_records.inc(part.num_rows)
            metrics.capture_bytes.inc(len(data))
            written += part.num_rows
        return written


def _columns(rows_parts: Any) -> np.ndarray:
    """Requests' encoded rows as one (features, records) array in C order: each feature's values
    contiguous, which Arrow wraps without a copy (a strided row it gathers value by value); each
    part transposed while it is in cache. The order is asked for: numpy would keep the parts'
    (transposed, so Fortran) order and the transpose would never happen."""
    columns = np.empty((rows_parts[0].shape[1], sum(len(rows) for rows in rows_parts)))
    return np.concatenate([rows.T for rows in rows_parts], axis=1, out=columns)


def _parquet_bytes(table: Any, options: dict[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = pa.BufferOutputStream()  # Arrow's own: a Python file object would take the GIL for every write
    pq.write_table(table, buffer, **options)
    return buffer.getvalue().to_pybytes()


def keep_freed_memory(library: str | None = "libc.so.6") -> bool:
    """Ask glibc to keep freed memory in the process for reuse (see the module's docstring); False,
    with a warning, where it cannot (not glibc, or mallopt refused), and the allocator's defaults stay.
    Arrow's buffers are then malloc's too: its bundled mimalloc hands freed pages back within
    milliseconds, which costs the same page faults for the writer's tables."""
    import ctypes

    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())

    try:
        mallopt = ctypes.CDLL(library).mallopt
    except (OSError, AttributeError) as exc:
        logger.warning("capture: cannot tune the allocator (%s); freed memory goes back to the system, which costs page faults", exc)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)):
        logger.warning("capture: mallopt refused the thresholds; freed memory goes back to the system, which costs page faults")
        return False
    return True


def start(settings: Settings, primary: ModelBundle, candidate: ModelBundle | None, mode: str | None) -> Capture | None:
    """This worker's Capture, or None when XGB_CAPTURE is off (the request path then only tests for None)."""
    if not settings.capture:
        return None
    clash = captured.reserved_clash(primary.schema)
    if clash is not None:
        raise CaptureError(f"XGB_CAPTURE: feature {clash!r} has the name of one of capture's own columns; it cannot be captured")
    return Capture(settings, primary, candidate, mode)
