"""The design we measured and did not choose: an API service calling a batched model service.

    bentoml serve loadtest.alternatives.depends_service:DependsApi --port 3100

DependsApi (2 workers) takes the seed's flat JSON on /predict and calls ModelService.predict_rows
through `bentoml.depends`; ModelService (1 worker, so every request meets in one batching queue)
runs the model with BentoML's adaptive batching. This is the textbook BentoML 1.4 layout.

DEPENDS_SESSION_FIX=1 applies the fix for the dropped connections found by
`make bench-alternatives` (see loadtest/alternatives/bench_depends.py and docs/performance.md):
BentoML's client to a dependency (_bentoml_impl/client/proxy2.py, SessionManager) replaces its
aiohttp session every `runner_connection.max_requests` requests (default 100) and *closes the
old one*, which aborts every request still in flight on it; raising max_requests/max_age means
the session is never recycled under load.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np
from pydantic import ConfigDict, create_model

from model_store import load_bundle, model_tag
from model_store.dataset import FEATURE_NAMES, N_FEATURES

SESSION_FIX = os.environ.get("DEPENDS_SESSION_FIX") == "1"
# Never recycle the client session (1e9 requests, ~31 years); BentoML's defaults are 100 and 300 s.
_RUNNER_CONNECTION = {"max_requests": 10**9, "max_age": 1e9} if SESSION_FIX else {}

Record = create_model(
    "Record",
    __config__=ConfigDict(strict=True, extra="forbid"),
    **{name: (float, ...) for name in FEATURE_NAMES},
)


@bentoml.service(workers=1, **({"runner_connection": _RUNNER_CONNECTION} if SESSION_FIX else {}))
class ModelService:
    model_ref = bentoml.models.BentoModel(model_tag())

    def __init__(self) -> None:
        self.bundle = load_bundle(str(self.model_ref.tag))

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=128, max_latency_ms=1000)
    def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.bundle.predict_proba(rows)


@bentoml.service(workers=2, logging={"access": {"enabled": False}})
class DependsApi:
    model = bentoml.depends(ModelService)

    def __init__(self) -> None:
        self.version = bentoml.models.get(model_tag()).tag.version

    @bentoml.api(route="/predict", input_spec=Record)
    async def predict(self, **features: float) -> dict[str, Any]:
        row = np.array([[features[name] for name in FEATURE_NAMES]], dtype=np.float64)
        proba = (await self.model.to_async.predict_rows(row))[0]
        predicted = int(proba.argmax())
        return {
            "predicted_class": predicted,
            "confidence": float(proba[predicted]),
            "model_version": self.version,
            "features_used": N_FEATURES,
            "probabilities": [round(float(p), 6) for p in proba],
        }
