"""The seed-style baseline: the original API as its README describes it, for benchmarks only.

FastAPI with a pydantic request model (feat1..feat36), a fitted sklearn StandardScaler, an
XGBClassifier's predict_proba run in a thread pool, and uvicorn workers on uvloop + httptools:

    uvicorn loadtest.baseline.app:app --workers 2 --loop uvloop --http httptools --port 8001

It serves the same model as our service (the default bundle from the BentoML store), rebuilt
into the objects the seed used, so the comparison is about the serving path, not the model.
Nothing here is tuned beyond what the seed describes; it is the measuring stick of issue 3.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xgboost as xgb
from fastapi import FastAPI
from pydantic import BaseModel, create_model
from sklearn.preprocessing import StandardScaler

from model_store import load_bundle
from model_store.dataset import FEATURE_NAMES, N_FEATURES

# The seed's request body: 36 required float fields, feat1..feat36.
PredictionRequest: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "PredictionRequest", **{name: (float, ...) for name in FEATURE_NAMES}
)


class PredictionResponse(BaseModel):
    predicted_class: int
    confidence: float
    model_version: str
    features_used: int


def build_seed_model() -> tuple[StandardScaler, xgb.XGBClassifier, str]:
    """The default bundle as the seed's objects: a fitted StandardScaler and an XGBClassifier."""
    bundle = load_bundle()
    scaler = StandardScaler()
    scaler.mean_ = bundle.mean.copy()
    scaler.scale_ = bundle.scale.copy()
    scaler.var_ = bundle.scale**2
    scaler.n_features_in_ = N_FEATURES
    scaler.n_samples_seen_ = 1
    classifier = xgb.XGBClassifier()
    classifier.load_model(bytearray(bundle.booster.save_raw("ubj")))
    return scaler, classifier, bundle.version


scaler, classifier, model_version = build_seed_model()
executor = ThreadPoolExecutor(max_workers=4)
app = FastAPI(title="seed-style XGBoost API (benchmark baseline)")


def predict_one(features: np.ndarray) -> np.ndarray:
    return classifier.predict_proba(scaler.transform(features))[0]


@app.post("/predict", response_model=PredictionResponse)
async def predict(request: PredictionRequest) -> PredictionResponse:
    features = np.array([[getattr(request, name) for name in FEATURE_NAMES]])
    proba = await asyncio.get_running_loop().run_in_executor(executor, predict_one, features)
    predicted = int(np.argmax(proba))
    return PredictionResponse(
        predicted_class=predicted,
        confidence=float(proba[predicted]),
        model_version=model_version,
        features_used=N_FEATURES,
    )


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy"}
