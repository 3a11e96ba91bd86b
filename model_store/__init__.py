"""The model contract: the feature schema, the default dataset, and the bundle in the BentoML store."""

from .bundle import MODEL_NAME, ModelBundle, ModelContractError, load_bundle, model_tag, save_bundle, stored_model
from .schema import CLASS_NAMES, EXAMPLE_RECORD, FEATURE_NAMES, FEATURES, N_CLASSES, N_FEATURES, Feature

__all__ = [
    "CLASS_NAMES", "EXAMPLE_RECORD", "FEATURE_NAMES", "FEATURES", "MODEL_NAME", "N_CLASSES",
    "N_FEATURES", "Feature", "ModelBundle", "ModelContractError", "load_bundle", "model_tag",
    "save_bundle", "stored_model",
]  # fmt: skip
