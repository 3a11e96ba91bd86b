"""A candidate model next to the primary: shadow scoring, canary answers, pinned versions.

    XGB_CANDIDATE_TAG      a second model in the store (same schema and task as the primary)
    XGB_CANDIDATE_MODE     shadow: the primary answers; the candidate scores the same records after
                           the answers are sent, and the pair's agreement is exported
                           canary: the candidate answers XGB_CANDIDATE_PERCENT % of requests
    X-Model-Version        a request header pinning a loaded version (debugging, tests)

Without a candidate the service does what it did before: Rollout.scored() goes straight to the
primary, no rollout metric is touched. All the work here is per batch and vectorised: the canary
picks one model per model call, the shadow comparison is one array operation per drained backlog,
so a /predict request pays nothing per record for either mode.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Callable, NamedTuple

import numpy as np

from model_store import ModelBundle, ModelContractError, load_bundle

from . import metrics
from .contract import InputError

logger = logging.getLogger("xgb_service")

PRIMARY, CANDIDATE = "primary", "candidate"
MODES = ("shadow", "canary")
# Shadow records waiting for the candidate, per worker. Past this the candidate has fallen behind
# (the worker is saturated): records are skipped and counted rather than queued without bound.
SHADOW_BACKLOG_RECORDS = 50_000
# Records per candidate call: a drained backlog is scored in slices so the event loop (which also
# answers requests) is never held for more than a few milliseconds.
SHADOW_SLICE_RECORDS = 1_024

class Scored(NamedTuple):
    """One model call: its outputs, the predicted class per row (None for regression), the answer bodies."""

    outputs: np.ndarray
    classes: np.ndarray | None
    bodies: list[dict[str, Any]]


Scorer = Callable[[ModelBundle, np.ndarray], Scored]  # (model, rows) -> Scored


def schema_difference(primary: ModelBundle, candidate: ModelBundle) -> str | None:
    """The first way the candidate's contract differs from the primary's, or None.

    What clients send and get back must not depend on which model answers: the task, the class
    names and each feature's name, position, kind, categories and nullability. Ranges, descriptions
    and the example record may differ (a retrained model's training range moves); requests are
    validated against the primary's schema.
    """
    a, b = primary.schema, candidate.schema
    if a.task != b.task:
        return f"task {a.task} vs {b.task}"
    if a.class_names != b.class_names:
        return f"class names {list(a.class_names)} vs {list(b.class_names)}"
    for i, (fa, fb) in enumerate(zip(a.features, b.features)):
        for field in ("name", "kind", "categories", "nullable"):
            if getattr(fa, field) != getattr(fb, field):
                return f"feature {i + 1} ({fa.name!r}): {field} {getattr(fa, field)!r} vs {getattr(fb, field)!r}"
    if a.n_features != b.n_features:
        extra = (a if a.n_features > b.n_features else b).features[min(a.n_features, b.n_features)]
        return f"{a.n_features} vs {b.n_features} features (first unmatched: {extra.name!r})"
    return None


def load_candidate(primary: ModelBundle, tag: str) -> ModelBundle | None:
    """The candidate model, loaded and checked against the primary; None when no tag is set."""
    if not tag:
        return None
    candidate = load_bundle(tag)
    if candidate.tag == primary.tag:
        raise ModelContractError(f"candidate {candidate.tag!r} is the primary model itself: unset XGB_CANDIDATE_TAG or pick another version")
    difference = schema_difference(primary, candidate)
    if difference is not None:
        raise ModelContractError(
            f"candidate {candidate.tag!r} does not fit primary {primary.tag!r}: {difference}; "
            "a candidate needs the primary's feature schema and task"
        )
    return candidate


class Rollout:
    """Which model answers a batch, and the candidate's shadow scoring."""

    def __init__(self, primary: ModelBundle, candidate: ModelBundle | None, mode: str, percent: float, score: Scorer) -> None:
        self.primary = primary
        self.candidate = candidate
        self.mode = mode if candidate is not None else None
        self.share = percent / 100.0 if self.mode == "canary" else 0.0
        self._score = score
        self._rng = np.random.default_rng()
        self._owed = 0.0
        self._by_version = {m.version: m for m in (primary, candidate) if m is not None}
        self._role = {primary.version: PRIMARY, **({candidate.version: CANDIDATE} if candidate else {})}
        self.shadow = Shadow(primary, candidate) if self.mode == "shadow" else None
        if candidate is not None:
            for model in (primary, candidate):
                metrics.rollout_info.labels(role=self._role[model.version], model_tag=model.tag, model_version=model.version, mode=self.mode).set(1)

    def pinned(self, header: bytes) -> ModelBundle:
        """The model an X-Model-Version header names; 422 for a version that is not loaded."""
        model = self._by_version.get(header.decode("latin-1").strip())
        if model is None:
            loaded = ", ".join(self._by_version)
            raise InputError(
                422,
                f"X-Model-Version {header.decode('latin-1')[:100]!r} is not a loaded model version: use one of {loaded}",
                [{"loc": ["header", "X-Model-Version"], "msg": f"unknown model version; loaded: {loaded}", "type": "unknown_model_version"}],
            )
        return model

    def for_request(self, pinned: ModelBundle | None = None) -> ModelBundle:
        """The model answering a whole request (/predict_batch, /explain): the one X-Model-Version
        pinned, else the canary draw, once."""
        if pinned is not None:
            return pinned
        if self.share and self._rng.random() < self.share:
            return self.candidate  # type: ignore[return-value]
        return self.primary

    def scored(self, rows: np.ndarray, model: ModelBundle | None = None) -> Scored:
        """`rows` scored by `model` if given, else as the mode says (canary: per model call), with their answer bodies."""
        if self.candidate is None:
            return self._score(self.primary, rows)
        if model is None:
            model = self.candidate if self.share and self._canary_takes(len(rows)) else self.primary
        scored = self._score_counted(model, rows)
        if self.shadow is not None and model is self.primary:
            self.shadow.submit(rows, scored.outputs, scored.classes)
        return scored

    def _canary_takes(self, records: int) -> bool:
        """Whether the candidate answers this /predict batch: error diffusion over records, so the
        candidate's share of answered records stays within one batch of the set share at any time.

        A whole batch goes to one model: a model call has a fixed cost comparable to a small batch's,
        so splitting batches record by record cost much more CPU (docs/performance.md).
        """
        self._owed += records * self.share  # records the candidate should have answered, minus those it did
        if self._owed > records / 2:
            self._owed -= records
            return True
        return False

    def _score_counted(self, model: ModelBundle, rows: np.ndarray) -> Scored:
        started = time.perf_counter()
        scored = self._score(model, rows)
        metrics.observe_model(self._role[model.version], model, scored.classes, len(rows), time.perf_counter() - started)
        return scored


class Shadow:
    """Scores the primary's records with the candidate once their answers are on their way.

    submit() is called where the primary predicted (on the event loop for /predict, in a worker
    thread for /predict_batch); it only queues. The consumer task wakes, lets the loop write the
    waiting answers first, then scores the whole backlog with the candidate in slices and exports
    the comparison. Predictions per class and latency per version, class agreement and the mean
    absolute difference of the outputs for the pair.
    """

    def __init__(self, primary: ModelBundle, candidate: ModelBundle) -> None:
        self.primary = primary
        self.candidate = candidate
        self.classification = candidate.schema.is_classification
        self.pending: collections.deque[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = collections.deque()
        self.pending_records = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._labels = {"primary_version": primary.version, "candidate_version": candidate.version}
        # Series from the start, so the agreement has a value before the first disagreement. A
        # regression pair has no classes to agree on: no agreement series, so no agreement alert.
        metrics.shadow_records.labels(**self._labels).inc(0)
        if self.classification:
            metrics.shadow_agreed.labels(**self._labels).inc(0)

    def start(self) -> None:
        """Start the consumer on the running loop (a worker's start-up hook)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._consume())

    def submit(self, rows: np.ndarray, outputs: np.ndarray, classes: np.ndarray | None) -> None:
        """Queue records the primary answered (from the event loop or a /predict_batch thread)."""
        if self._loop is not None:
            # Through the loop, even from the loop: the backlog is only touched there, and the
            # consumer wakes one iteration later, after the requests of this batch got their answers.
            self._loop.call_soon_threadsafe(self._queue, rows, outputs, classes)

    def _queue(self, rows: np.ndarray, outputs: np.ndarray, classes: np.ndarray | None) -> None:
        if self.pending_records + len(rows) > SHADOW_BACKLOG_RECORDS:
            metrics.shadow_skipped.inc(len(rows))
            return
        self.pending.append((rows, outputs, classes))
        self.pending_records += len(rows)
        self._wake.set()  # type: ignore[union-attr]

    async def _consume(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            # submit() queued through call_soon_threadsafe, so this wakes two loop iterations after
            # the model call: the requests the dispatcher released with that batch run (and write
            # their answers) first. Two more yields leave room for a request a hop or two further away.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            while self.pending:
                batch = [self.pending.popleft() for _ in range(len(self.pending))]
                self.pending_records -= sum(len(b[0]) for b in batch)
                try:
                    self.compare(*(np.concatenate(part) if part[0] is not None else None for part in zip(*batch)))
                except Exception:  # a broken candidate must not stop the primary, nor this loop
                    logger.exception("shadow scoring with candidate %s failed", self.candidate.tag)
                await asyncio.sleep(0)

    def compare(self, rows: np.ndarray, primary_outputs: np.ndarray, primary_classes: np.ndarray | None) -> None:
        for start in range(0, len(rows), SHADOW_SLICE_RECORDS):
            part = slice(start, start + SHADOW_SLICE_RECORDS)
            started = time.perf_counter()
            outputs = self.candidate.predict_proba(rows[part]) if self.classification else self.candidate.predict(rows[part])
            classes = outputs.argmax(axis=1) if self.classification else None
            metrics.observe_model(CANDIDATE, self.candidate, classes, len(outputs), time.perf_counter() - started)
            difference = np.abs(outputs - primary_outputs[part])
            metrics.observe_shadow(
                self._labels,
                records=len(outputs),
                agreed=int((classes == primary_classes[part]).sum()) if classes is not None else None,  # type: ignore[index]
                abs_difference=difference.mean(axis=1) if difference.ndim == 2 else difference,
            )
