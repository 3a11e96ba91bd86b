"""Saving and loading the model bundle (booster + scaler) to and from the BentoML model store.

One store entry holds both parts, so a booster can never be served with another model's scaler:
  booster.ubj   the XGBoost booster (XGBoost's own binary format)
  scaler.json   the StandardScaler's mean and scale, applied with plain numpy at serve time
                (sklearn's transform() re-validates its input on every call: ~0.2 ms a request)
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import sys
from typing import Any

import numpy as np

from .schema import CLASS_NAMES, FEATURE_NAMES, N_FEATURES, schema_fingerprint

MODEL_NAME = "xgb_classifier"
# The tag policy: the newest model unless MODEL_TAG pins one (e.g. "xgb_classifier:3dk2ptx6bkqa2tg5").
MODEL_TAG_ENV = "MODEL_TAG"
BOOSTER_FILE = "booster.ubj"
SCALER_FILE = "scaler.json"
TRAIN_HINT = "run `make train` (or `python train_export.py`) to train and register it"


class ModelContractError(RuntimeError):
    """The model in the store cannot be served: missing, unreadable, or trained on another schema."""


def store_path() -> str:
    """Where BentoML keeps models: $BENTOML_HOME/models, BentoML's default ~/bentoml/models without it."""
    return os.path.join(os.path.expanduser(os.environ.get("BENTOML_HOME") or "~/bentoml"), "models")


def _not_stored(tag: str) -> ModelContractError:
    return ModelContractError(f"model {tag!r} is not in the BentoML store {store_path()}; {TRAIN_HINT}")


def import_xgboost():
    """xgboost, imported without its scikit-learn wrappers when it is not imported yet.

    XGBoost imports scikit-learn (and with it SciPy) at import time whenever it is installed, only
    to offer XGBClassifier & co. Serving uses the Booster alone, and that import costs ~1.3 s of
    start-up per process (the arbiter and every worker). The image has no scikit-learn at all;
    this keeps a development environment as quick to start as the image.
    """
    if "xgboost" in sys.modules:
        return sys.modules["xgboost"]
    saved = sys.modules.get("sklearn")
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # makes `import sklearn` raise ImportError
    try:
        import xgboost
    finally:
        if saved is None:
            del sys.modules["sklearn"]
        else:
            sys.modules["sklearn"] = saved
    return xgboost


XGBOOST_VERSION = "3.2.0"  # DensePredictor calls its C API; pinned in requirements*.in


class DensePredictor:
    """Booster.inplace_predict() for a dense float64 array, without its per-call Python overhead.

    inplace_predict() spends ~0.12 ms of its ~0.35 ms a call on Python work for the general case
    (DataFrame/Arrow detection, the config and array interface built with json.dumps): a third of
    the model's cost at /predict's batch sizes. This calls the same C function with the same
    arguments, the config built once. It uses xgboost.core's _LIB and _check_call;
    tests/test_training.py checks it returns exactly what inplace_predict() returns.
    """

    def __init__(self, booster: Any) -> None:
        from xgboost.core import _LIB, _check_call, c_bst_ulong, make_jcargs

        self._booster = booster  # keeps the handle alive
        self._predict_from_dense = _LIB.XGBoosterPredictFromDense
        self._check_call = _check_call
        self._bst_ulong = c_bst_ulong
        self._config = make_jcargs(
            type=0, training=False, iteration_begin=0, iteration_end=0, missing=float("nan"), strict_shape=False, cache_id=0
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        rows, columns = x.shape
        interface = b'{"data": [%d, true], "shape": [%d, %d], "typestr": "<f8", "version": 3}' % (x.ctypes.data, rows, columns)
        result = ctypes.POINTER(ctypes.c_float)()
        shape = ctypes.POINTER(self._bst_ulong)()
        dims = self._bst_ulong()
        self._check_call(
            self._predict_from_dense(
                self._booster.handle, interface, self._config, None, ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(result)
            )
        )
        # XGBoost owns `result` (per thread, until its next call): copy it out.
        return np.ctypeslib.as_array(result, shape=(rows, int(shape[dims.value - 1]))).copy()


def model_tag() -> str:
    return os.environ.get(MODEL_TAG_ENV) or f"{MODEL_NAME}:latest"


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    tag: str
    booster: Any  # xgboost.Booster
    mean: np.ndarray
    scale: np.ndarray
    class_names: tuple[str, ...]
    metadata: dict[str, Any]
    predict_scaled: DensePredictor = dataclasses.field(repr=False, compare=False)

    @property
    def version(self) -> str:
        return self.tag.split(":", 1)[1]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, classes), for raw (unscaled) features of shape (n, 36)."""
        return self.predict_scaled((x - self.mean) / self.scale)


def save_bundle(booster: Any, scaler: Any, *, labels: dict[str, str], metadata: dict[str, Any]):
    """Register booster + fitted StandardScaler as one new version of MODEL_NAME; returns the bentoml.Model."""
    import bentoml

    metadata = {
        **metadata,
        "feature_schema": schema_fingerprint(),
        "class_names": list(CLASS_NAMES),
    }
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata) as model:
        booster.save_model(model.path_of(BOOSTER_FILE))
        scaler_params = {
            "feature_names": list(FEATURE_NAMES),
            "mean": scaler.mean_.tolist(),
            "scale": scaler.scale_.tolist(),
        }
        with open(model.path_of(SCALER_FILE), "w") as f:
            json.dump(scaler_params, f)
    return model


def stored_model(tag: str | None = None):
    """The store entry for `tag` (default: the tag policy), checked against the schema, without loading it.

    Returns a bentoml.models.BentoModel reference, which is also what makes `bentoml build`
    pack the model into the Bento.
    """
    import bentoml

    tag = tag or model_tag()
    ref = bentoml.models.BentoModel(tag)
    stored = ref.stored
    if stored is None:
        raise _not_stored(tag)
    if stored.info.metadata.get("feature_schema") != schema_fingerprint():
        raise ModelContractError(
            f"model {str(stored.tag)!r} was trained on a different feature schema than model_store/schema.py; "
            f"{TRAIN_HINT}, or pin a matching model with {MODEL_TAG_ENV}"
        )
    return bentoml.models.BentoModel(str(stored.tag))


def load_bundle(tag: str | None = None, *, nthread: int = 1) -> ModelBundle:
    """Load and check a bundle; ModelContractError names the tag and the fix when it cannot be served."""
    import bentoml

    xgb = import_xgboost()
    tag = tag or model_tag()
    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise _not_stored(tag) from None
    full_tag = str(model.tag)
    metadata = dict(model.info.metadata)
    if metadata.get("feature_schema") != schema_fingerprint():
        raise ModelContractError(
            f"model {full_tag!r} was trained on a different feature schema than model_store/schema.py; "
            f"{TRAIN_HINT}, or pin a matching model with {MODEL_TAG_ENV}"
        )
    try:
        booster = xgb.Booster(model_file=model.path_of(BOOSTER_FILE))
        with open(model.path_of(SCALER_FILE)) as f:
            scaler = json.load(f)
        mean = np.asarray(scaler["mean"], dtype=np.float64)
        scale = np.asarray(scaler["scale"], dtype=np.float64)
    except (OSError, ValueError, KeyError, xgb.core.XGBoostError) as exc:
        raise ModelContractError(
            f"model {full_tag!r} is corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); {TRAIN_HINT}"
        ) from None
    class_names = tuple(metadata.get("class_names", CLASS_NAMES))
    if mean.shape != (N_FEATURES,) or scale.shape != (N_FEATURES,) or booster.num_features() != N_FEATURES:
        raise ModelContractError(f"model {full_tag!r} does not take {N_FEATURES} features; {TRAIN_HINT}")
    # One thread per worker: workers already use every core, and threads would fight over them.
    booster.set_param({"nthread": nthread})
    return ModelBundle(full_tag, booster, mean, scale, class_names, metadata, DensePredictor(booster))
