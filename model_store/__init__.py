"""The model contract: the per-model feature schema, the default dataset, and the bundle in the BentoML store."""

from .bundle import MODEL_NAME, ModelBundle, ModelContractError, load_bundle, model_tag, save_bundle, stored_model
from .schema import Feature, ModelSchema

__all__ = [
    "MODEL_NAME", "Feature", "ModelBundle", "ModelContractError", "ModelSchema", "load_bundle", "model_tag",
    "save_bundle", "stored_model",
]  # fmt: skip
