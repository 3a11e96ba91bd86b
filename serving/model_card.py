"""GET /metadata: what the served model is, from the store (tag, schema, metrics, provenance).

Clients read it to build requests for any model (the load tests and the image smoke test take the
feature names, the example record and the class names from here), and people read it to know what
answers them. Built once at start-up and served from memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from typing_extensions import TypedDict

from model_store import ModelBundle


class FeatureCard(TypedDict):
    name: str
    kind: str
    minimum: Optional[float]
    maximum: Optional[float]
    categories: list[str]
    nullable: bool
    description: str


class LoadedModel(TypedDict):
    role: str  # primary | candidate
    tag: str
    version: str
    created: str
    metrics: dict[str, Any]


class RolloutCard(TypedDict):
    mode: Optional[str]  # shadow | canary; null without a candidate
    candidate_percent: Optional[float]  # canary only
    models: list[LoadedModel]


class ModelCard(TypedDict):
    tag: str
    version: str
    created: str
    task: str
    features: list[FeatureCard]
    class_names: list[str]
    example: dict[str, Any]
    metrics: dict[str, Any]
    data_sha256: str
    library_versions: dict[str, str]
    training_params: dict[str, Any]
    rollout: RolloutCard  # the loaded models (README "Rolling out a new model")


def model_card(bundle: ModelBundle, candidate: Optional[ModelBundle], mode: str, percent: float) -> dict[str, Any]:
    """The primary's card, and which models are loaded; the candidate shares the primary's schema."""
    schema, meta = bundle.schema, bundle.metadata
    return {
        "tag": bundle.tag,
        "version": bundle.version,
        "created": bundle.created,
        "task": schema.task,
        "features": [{**dataclasses.asdict(f), "categories": list(f.categories)} for f in schema.features],
        "class_names": list(schema.class_names),
        "example": schema.example,
        "metrics": meta.get("metrics", {}),
        "data_sha256": meta.get("data_sha256", ""),
        "library_versions": meta.get("library_versions", {}),
        "training_params": meta.get("training_params", {}),
        "rollout": {
            "mode": mode if candidate else None,
            "candidate_percent": percent if candidate and mode == "canary" else None,
            "models": [
                {"role": role, "tag": m.tag, "version": m.version, "created": m.created, "metrics": m.metadata.get("metrics", {})}
                for role, m in (("primary", bundle), ("candidate", candidate)) if m is not None
            ],
        },
    }
