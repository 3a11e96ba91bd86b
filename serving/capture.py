"""Capture: the records the service answered, with their answers, written as typed Parquet.

    XGB_CAPTURE                 off (default) or the percent of records to capture (0-100]
    XGB_CAPTURE_URI             a local directory or s3://bucket/prefix (required when capture is on)
    XGB_CAPTURE_FLUSH_SECONDS   write what is pending at least this often (default 10)
    XGB_CAPTURE_FLUSH_ROWS      ... or as soon as this many records are pending (default 50,000)
    XGB_CAPTURE_QUEUE_RECORDS   records a worker may hold unwritten; beyond, new ones are dropped (default 200,000)

The columns and the directory layout are model_store/captured.py's. On the request path a sampled
request costs one deque append (its encoded rows and its answer, as computed for the client): no
encoding, no I/O. A writer thread per worker turns what is pending into one Arrow table per
(model version, hour), vectorised, and writes it: a local file written under a hidden name and
renamed, or an S3 object through boto3's managed transfer (multipart above 8 MiB). In shadow mode
the writer also scores the captured primary records with the candidate (role "shadow"), off the
request path. The worker's shutdown hook writes everything pending before the process exits, so
an answered record is not lost on SIGTERM. A full queue or a failing sink drops records and counts
them in xgb_capture_dropped_total{reason}; a request never waits for, or fails because of, capture.
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
from typing import Any

import numpy as np
import orjson

from model_store import ModelBundle, captured
from model_store.captured import CaptureError

from . import metrics
from .contract import predicted
from .request_ids import record_id
from .settings import Settings

logger = logging.getLogger("xgb_service")

MULTIPART_BYTES = 8 * 1024 * 1024
_ROLE_CODES = {role: code for code, role in enumerate(captured.ROLES)}


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
        self._warm_up()

    def _warm_up(self) -> None:
        """Build and encode one record now: pyarrow imports pandas (seconds) the first time it converts
        a Python list, which in the writer thread would hold the GIL, and the event loop, that long."""
        import pyarrow.parquet as pq

        answer = {"model_version": self.primary.version, "predicted_class": 0, "confidence": 1.0,
                  "probabilities": [1.0] + [0.0] * max(self.schema.n_classes - 1, 0), "prediction": 0.0}  # fmt: skip
        table = self.table([("warm-up", time.time(), np.zeros((1, self.schema.n_features)), [answer], False)])
        pq.write_table(table, io.BytesIO(), compression="zstd")

    # -- the request path ----------------------------------------------------------------------

    def record(self, request_id: str, rows: np.ndarray, answers: bytes | list[dict[str, Any]], batch: bool) -> None:
        """Queue one answered request: `answers` as sent (a /predict answer's JSON bytes, or the
        answer dicts; explanations are fine, their "prediction" is taken)."""
        if not batch and self.share < 1.0 and random.random() >= self.share:
            return
        n = len(rows)
        with self._lock:
            if self.pending_records + n > self.max_records:
                full = True
            else:
                full = False
                self.pending_records += n
                self.pending.append((request_id, time.time(), rows, answers, batch))
        if full:
            metrics.capture_dropped.labels(reason="queue_full").inc(n)
        elif self.pending_records >= self.flush_rows:
            self._wake.set()

    # -- the writer thread -------------------------------------------------------------------------

    def start(self) -> None:
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
            self.pending_records -= sum(len(item[2]) for item in items)
        if not items:
            return 0
        try:
            table = self.table(items)
        except Exception:  # a bug here must not stop the writer: count and go on
            logger.exception("capture: could not build the records' table")
            metrics.capture_dropped.labels(reason="sink_error").inc(sum(len(item[2]) for item in items))
            return 0
        return self.write(table)

    def table(self, items: list[tuple]) -> Any:
        """The pending requests' records as one Arrow table (plus the shadow's, in shadow mode)."""
        import pyarrow as pa

        ids: list[str] = []
        times: list[float] = []
        rows_parts: list[np.ndarray] = []
        answers: list[dict[str, Any]] = []
        # /predict's answers are JSON bytes: decoded in one call, as one array of them
        encoded = [item[3] for item in items if isinstance(item[3], bytes)]
        decoded = iter(orjson.loads(b"[" + b",".join(encoded) + b"]")) if encoded else iter(())
        for request_id, stamp, rows, answer, batch in items:
            bodies = [next(decoded)] if isinstance(answer, bytes) else answer
            if batch:
                keep = range(len(rows)) if self.share >= 1.0 else np.flatnonzero(np.random.random(len(rows)) < self.share).tolist()
                if len(keep) < len(rows):
                    rows = rows[keep]
                    bodies = [bodies[i] for i in keep]
                ids.extend(record_id(request_id, i) for i in keep)
            else:
                ids.append(request_id)
            times.extend([stamp] * len(bodies))
            rows_parts.append(rows)
            answers.extend(b["prediction"] if isinstance(b.get("prediction"), dict) else b for b in bodies)
        rows = np.concatenate(rows_parts) if len(rows_parts) > 1 else rows_parts[0]
        versions = [a["model_version"] for a in answers]
        roles = np.where(np.array(versions, dtype=object) == self.primary.version, _ROLE_CODES["primary"], _ROLE_CODES["canary"]).astype(np.int8)
        if self.schema.is_classification:
            outputs = [pa.array([a["predicted_class"] for a in answers], pa.int32()), pa.array([a["confidence"] for a in answers], pa.float32()),
                       pa.array([a["probabilities"] for a in answers], pa.list_(pa.float32()))]  # fmt: skip
        else:
            outputs = [pa.array([a["prediction"] for a in answers], pa.float32())]
        table = self._assemble(ids, np.array(times), roles, rows, outputs, versions)
        if self.shadow is not None:
            primary = roles == _ROLE_CODES["primary"]
            if primary.any():
                table = pa.concat_tables([table, self._shadow_table(table, primary, rows[primary], np.array(times)[primary])])
        return table

    def _shadow_table(self, table: Any, primary: np.ndarray, rows: np.ndarray, times: np.ndarray) -> Any:
        import pyarrow as pa

        model = self.shadow
        assert model is not None
        if self.schema.is_classification:
            proba = model.predict_proba(rows)
            classes, confidence = predicted(proba)
            outputs = [pa.array(classes.astype(np.int32)), pa.array(confidence.astype(np.float32)),
                       pa.FixedSizeListArray.from_arrays(pa.array(proba.astype(np.float32).ravel()), proba.shape[1]).cast(pa.list_(pa.float32()))]  # fmt: skip
        else:
            outputs = [pa.array(model.predict(rows).astype(np.float32))]
        ids = table.column("request_id").filter(pa.array(primary)).to_pylist()
        roles = np.full(len(rows), _ROLE_CODES["shadow"], dtype=np.int8)
        return self._assemble(ids, times, roles, rows, outputs, [model.version] * len(rows))

    def _assemble(self, ids: list[str], times: np.ndarray, roles: np.ndarray, rows: np.ndarray, outputs: list, versions: list[str]) -> Any:
        import pyarrow as pa

        columns = [pa.array(ids, pa.string()), pa.array((times * 1000).astype(np.int64), pa.timestamp("ms", tz="UTC")),
                   pa.DictionaryArray.from_arrays(pa.array(roles), pa.array(captured.ROLES)),
                   *captured.feature_arrays(self.schema, rows), *outputs]  # fmt: skip
        table = pa.Table.from_arrays(columns, schema=self.arrow_schema)
        # model_version travels with the rows until write() splits them into partitions
        return table.append_column("model_version", pa.array(versions, pa.string()))

    def write(self, table: Any) -> int:
        """One Parquet file per (model version, hour) of `table`; returns the records written."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        hours = pc.strftime(table.column("timestamp"), format="%Y-%m-%dT%H")
        keys = pa.table({"v": table.column("model_version"), "h": hours})
        written = 0
        for group in keys.group_by(["v", "h"]).aggregate([]).to_pylist():
            part = table.filter(pc.and_(pc.equal(keys["v"], group["v"]), pc.equal(keys["h"], group["h"]))).drop_columns(["model_version"])
            buffer = io.BytesIO()
            pq.write_table(part, buffer, compression="zstd")
            data = buffer.getvalue()
            self._sequence += 1
            key = f"model_version={group['v']}/hour={group['h']}/{os.getpid()}-{self._sequence:06d}-{uuid.uuid4().hex[:8]}.parquet"
            try:
                self.sink.write(key, data)
            except Exception as exc:  # noqa: BLE001  the sink is outside our control: count, log once a minute
                metrics.capture_dropped.labels(reason="sink_error").inc(part.num_rows)
                now = time.monotonic()
                if self._failing_since is None or now - self._failing_since > 60:
                    self._failing_since = now
                    logger.warning("capture: writing %d records to %s failed (%s: %s); dropping them", part.num_rows, key, type(exc).__name__, exc)
                continue
            metrics.capture_records.inc(part.num_rows)
            metrics.capture_bytes.inc(len(data))
            written += part.num_rows
        return written


def start(settings: Settings, primary: ModelBundle, candidate: ModelBundle | None, mode: str | None) -> Capture | None:
    """This worker's Capture, or None when XGB_CAPTURE is off (the request path then only tests for None)."""
    if not settings.capture:
        return None
    clash = captured.reserved_clash(primary.schema)
    if clash is not None:
        raise CaptureError(f"XGB_CAPTURE: feature {clash!r} has the name of one of capture's own columns; it cannot be captured")
    return Capture(settings, primary, candidate, mode)
