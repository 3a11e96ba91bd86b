"""/explain and /explain_batch: why the model answered what it did, as exact TreeSHAP values.

XGBoost's own `pred_contribs` computes path-dependent TreeSHAP (Lundberg et al. 2018), exact for
tree ensembles (not the approximate Saabas attribution of `approx_contribs`). Values are in the
model's margin space (log-odds for classifiers, the prediction itself for squared-error
regression), so for every record `base_value + sum(contributions) == margin`.

A classifier's explained class is the predicted one unless `?class=` names another (by name or
index). For a binary model XGBoost explains the log-odds of class 1; class 0's are its negatives.

Exact TreeSHAP costs milliseconds per record, many times a prediction (docs/performance.md), so explanations run off the
event loop in a bounded pool of their own (a BatchPool counting records): threads at a lower CPU
priority than the event loop, with their own limit of records in flight, so /predict keeps its
latency while /explain is saturated. Requests that arrive while an explanation runs are explained
together in the next call (ExplainBatcher), as BentoML batches /predict: the per-call costs (the
DMatrix, the margins and probabilities) are paid once per batch instead of per record.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional
from urllib.parse import parse_qsl

import numpy as np
from typing_extensions import TypedDict

from model_store.bundle import ModelBundle, import_xgboost

from .batch_pool import BatchPool
from .contract import Contract, InputError, predicted

DEFAULT_TOP = 5
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_EXPLAIN_RECORDS = 1000
# A nice-10 thread gets ~1/9 of a core against a nice-0 one: the event loop (/predict) comes first.
NICENESS = 10


class TopContribution(TypedDict):
    feature: str
    value: Any  # the record's value as sent: a number, a category, or null
    contribution: float


def batch_explanations_type(contract: Contract) -> Any:
    """/explain_batch's answer type (OpenAPI, BentoML's clients)."""
    record = TypedDict("BatchExplanation", {**explanation_type(contract).__annotations__, "request_id": str})  # type: ignore[misc]
    return TypedDict("BatchExplanations", {"explanations": list[record]})  # type: ignore[misc]


def explanation_type(contract: Contract) -> Any:
    """The answer's type, for the OpenAPI document (the answer itself is built in Explainer.explain)."""
    return TypedDict("Explanation", {  # type: ignore[misc]
        "model_version": str,
        "prediction": contract.prediction_type,
        "explained_class": Optional[int],  # null for a regression model
        "base_value": float,
        "margin": float,
        "contributions": dict[str, float],
        "top": list[TopContribution],
    })  # fmt: skip


def _query_error(parameter: str, msg: str) -> InputError:
    return InputError(422, f"invalid query parameter {parameter!r}: {msg}", [{"loc": ["query", parameter], "msg": msg, "type": "value_error"}])


class Explainer:
    """Exact TreeSHAP explanations of one model's answers, in its Contract's answer shapes."""

    def __init__(self, bundle: ModelBundle, contract: Contract) -> None:
        self.xgb = import_xgboost()
        self.bundle = bundle
        self.contract = contract
        self.schema = bundle.schema
        self.names = list(self.schema.feature_names)
        self.categorical = [f.kind == "categorical" for f in self.schema.features]
        self.feature_types = ["c" if c else "q" for c in self.categorical] if any(self.categorical) else None
        self.top_default = min(DEFAULT_TOP, self.schema.n_features)

    def options(self, query_string: bytes) -> tuple[int | None, int]:
        """`?class=` (a class name or index) and `?top=` (1 to the number of features), checked."""
        explained, top = None, self.top_default
        seen: set[str] = set()
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name in seen:
                raise _query_error(name, "given more than once")
            seen.add(name)
            if name == "class":
                explained = self._class_index(value)
            elif name == "top":
                if not value.isdigit() or not 1 <= int(value) <= self.schema.n_features:
                    raise _query_error("top", f"{value!r} is not a whole number from 1 to {self.schema.n_features} (the number of features)")
                top = int(value)
            else:
                raise _query_error(name, "unknown query parameter: /explain takes 'class' and 'top'")
        return explained, top

    def _class_index(self, value: str) -> int:
        names = self.schema.class_names
        if not self.schema.is_classification:
            raise _query_error("class", "this model is a regression model: it has no classes to choose from")
        if value in names:
            return names.index(value)
        if value.isdigit() and int(value) < len(names):
            return int(value)
        allowed = ", ".join(repr(n) for n in names)
        raise _query_error("class", f"{value!r} is not a class of this model: use a name ({allowed}) or an index from 0 to {len(names) - 1}")

    def matrix(self, rows: np.ndarray) -> Any:
        """The booster's input for encoded rows, as the DMatrix pred_contribs takes."""
        # A DMatrix refuses infinities, which scaling makes of a huge but finite value (1e308); split
        # thresholds are float32, so the largest float32 takes the branch infinity takes in /predict.
        x = np.clip(self.bundle.margin_input(rows), -FLOAT32_MAX, FLOAT32_MAX)
        return self.xgb.DMatrix(x, feature_types=self.feature_types, enable_categorical=self.feature_types is not None, nthread=1)

    def explain(self, rows: np.ndarray, explained_class: int | None = None, top: int | None = None) -> list[dict[str, Any]]:
        """One explanation per row of `rows` (encoded records, as the contract parses them)."""
        top = top or self.top_default
        data = self.matrix(rows)
        contribs = self.bundle.booster.predict(data, pred_contribs=True, validate_features=False)
        margins = self.bundle.booster.predict(data, output_margin=True, validate_features=False)
        n = len(rows)
        if self.schema.is_classification:
            proba = self.bundle.predict_proba(rows)
            classes, confidence = predicted(proba)
            predictions = self.contract.class_bodies(proba, classes, confidence, self.bundle.version)
            chosen = classes if explained_class is None else np.full(n, explained_class)
            if contribs.ndim == 3:  # multi-class: (rows, classes, features + 1)
                per_row = contribs[np.arange(n), chosen]
                margin = margins.reshape(n, -1)[np.arange(n), chosen]
            else:  # binary: the log-odds of class 1; class 0's log-odds are their negatives
                sign = np.where(chosen == 1, 1.0, -1.0)
                per_row = contribs * sign[:, None]
                margin = margins.reshape(n) * sign
            explained: list[int | None] = chosen.tolist()
        else:
            predictions = self.contract.value_bodies(self.bundle.predict(rows), self.bundle.version)
            per_row, margin, explained = contribs, margins.reshape(n), [None] * n
        values = per_row[:, :-1].astype(np.float64)
        base = per_row[:, -1].astype(np.float64)
        order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :top]
        shown = self._input_values(rows)
        rounded = np.round(values, 6).tolist()
        return [
            {
                "model_version": self.bundle.version,
                "prediction": prediction,
                "explained_class": cls,
                "base_value": b,
                "margin": m,
                "contributions": dict(zip(self.names, row_values)),
                "top": [{"feature": self.names[j], "value": inputs[j], "contribution": row_values[j]} for j in picked],
            }
            for prediction, cls, b, m, row_values, picked, inputs in zip(
                predictions, explained, np.round(base, 6).tolist(), np.round(margin.astype(np.float64), 6).tolist(),
                rounded, order.tolist(), shown,
            )
        ]  # fmt: skip

    def _input_values(self, rows: np.ndarray) -> list[list[Any]]:
        """Each record's values as the client sent them: category names, null for missing."""
        shown = rows.astype(object)
        shown[np.isnan(rows)] = None
        for j, f in enumerate(self.schema.features):
            if f.kind == "categorical":
                present = ~np.isnan(rows[:, j])
                shown[present, j] = [f.categories[int(code)] for code in rows[present, j]]
        return shown.tolist()


class ExplainBatcher:
    """Explains waiting requests together: one Explainer.explain call per (class, top) among them,
    in `pool`, at most `pool.threads` calls at once. Records waiting here count against the pool's limit."""

    MAX_ROWS = 256  # per call, unless one request alone brings more (an /explain_batch)

    def __init__(self, explainer: Explainer, pool: BatchPool) -> None:
        self.explainer = explainer
        self.pool = pool
        self.waiting: list[tuple[np.ndarray, int | None, int, asyncio.Future]] = []
        self.waiting_rows = 0
        self.running = 0

    async def explain(self, rows: np.ndarray, explained_class: int | None, top: int) -> list[dict[str, Any]]:
        self.pool.admit(self.waiting_rows + len(rows))  # 503 when the pool and the queue here are full
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.waiting.append((rows, explained_class, top, future))
        self.waiting_rows += len(rows)
        if self.running < self.pool.threads:
            self.running += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch, rows = [], 0
                while self.waiting and (not batch or rows + len(self.waiting[0][0]) <= self.MAX_ROWS):
                    batch.append(self.waiting.pop(0))
                    rows += len(batch[-1][0])
                self.waiting_rows -= rows
                try:
                    answers = await self.pool.run(self._explain_all, batch, weight=rows)
                except Exception as exc:  # each request reports it (500, logged there)
                    answers = [exc] * len(batch)
                for (*_, future), answer in zip(batch, answers):
                    if not future.done():  # a request that timed out has gone
                        future.set_exception(answer) if isinstance(answer, Exception) else future.set_result(answer)
        finally:
            self.running -= 1

    def _explain_all(self, batch: list[tuple[np.ndarray, int | None, int, asyncio.Future]]) -> list[list[dict[str, Any]]]:
        """Each request's explanations, computed together per (class, top)."""
        answers: list[list[dict[str, Any]]] = [[] for _ in batch]
        groups: dict[tuple[int | None, int], list[int]] = {}
        for i, (_, explained_class, top, _) in enumerate(batch):
            groups.setdefault((explained_class, top), []).append(i)
        for (explained_class, top), members in groups.items():
            explained = self.explainer.explain(np.concatenate([batch[i][0] for i in members]), explained_class, top)
            start = 0
            for i in members:
                answers[i] = explained[start : start + len(batch[i][0])]
                start += len(batch[i][0])
        return answers
