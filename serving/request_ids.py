"""X-Request-ID: every prediction answer names the request it answers, so a record is addressable.

    X-Request-ID: <id>     on every answer of /predict, /predict_batch, /explain, /explain_batch
                           (errors included): the client's own when it sent a valid one (1-128
                           characters of A-Z a-z 0-9 . _ : -), else a new one: this worker
                           process's random 64-bit prefix and its request count, in hex
    "request_id"           in each record of a batch answer: "<id>-<index>", the record's position
                           in "instances" from 0 (e.g. "4f1c...-0", "4f1c...-1")

A single record's id is the request's id itself. Capture (serving/capture.py) stores each record
under exactly these ids, and labels join on them (model_store/quality.py).
"""

from __future__ import annotations

import itertools
import re
import secrets
from typing import Any

import numpy as np

HEADER = "X-Request-ID"
_HEADER_KEY = b"x-request-id"
_SCOPE_KEY = "xgb.request_id"
_RECORD_SEPARATOR = "-"  # "<id>-<index>": record_id and record_ids
_VALID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Unique across workers and restarts (a fresh random prefix per process), at a counter's cost: a
# uuid4 per request would be the costliest line of a /predict that captures nothing.
_PREFIX = secrets.token_hex(8)
_COUNT = itertools.count(1)


def assign(scope: dict[str, Any]) -> str:
    """The request's id (the client's if valid, else a new one), remembered in the ASGI scope."""
    sent = next((value for key, value in scope["headers"] if key == _HEADER_KEY), None)
    request_id = sent.decode("ascii") if sent is not None and _VALID.fullmatch(sent) else f"{_PREFIX}{next(_COUNT):08x}"
    scope[_SCOPE_KEY] = request_id
    return request_id


def of(scope: dict[str, Any]) -> str:
    """The id assign() gave this request."""
    return scope[_SCOPE_KEY]


def with_header(scope: dict[str, Any], headers: list[tuple[bytes, bytes]] | None) -> list[tuple[bytes, bytes]]:
    """`headers` plus this request's X-Request-ID."""
    return [*(headers or ()), (_HEADER_KEY, scope[_SCOPE_KEY].encode("ascii"))]


def record_id(request_id: str, index: int) -> str:
    """The id of record `index` of a batch request."""
    return f"{request_id}{_RECORD_SEPARATOR}{index}"


def record_ids(request_ids: list[str], counts: np.ndarray) -> Any:
    """record_id for every record of many batch requests at once (request i has counts[i] records),
    as one Arrow string array: capture's writer labels a batch's records without a Python loop."""
    import pyarrow as pa
    import pyarrow.compute as pc

    starts = np.repeat(np.cumsum(counts) - counts, counts)
    indices = pa.array(np.arange(len(starts)) - starts).cast(pa.string())
    # each request's id repeated by Arrow's take: numpy would repeat Python objects, converted one by one
    prefixes = pa.array(request_ids, pa.string()).take(pa.array(np.repeat(np.arange(len(request_ids)), counts)))
    return pc.binary_join_element_wise(prefixes, indices, _RECORD_SEPARATOR)


def label_records(request_id: str, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each batch answer record gets its "request_id" (in place; returns `answers`)."""
    for index, answer in enumerate(answers):
        answer["request_id"] = record_id(request_id, index)
    return answers
