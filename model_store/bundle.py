"""Saving and loading the model bundle (booster + scaler + schema) to and from the BentoML model store.

One store entry holds every part, so a booster can never be served with another model's scaler or
contract:
  booster.ubj        the XGBoost booster (XGBoost's own binary format)
  scaler.json        the StandardScaler's mean and scale, applied with plain numpy at serve time
                     (sklearn's transform() re-validates its input on every call: docs/performance.md)
  metadata "schema"  the ModelSchema (model_store/schema.py): features, task, class names, example

| reach (xgboost-cpu 3.2.0)                           | used by          | checked at load (load_bundle)          | public fallback            |
|-----------------------------------------------------|------------------|----------------------------------------|----------------------------|
| xgboost.core._LIB.XGBoosterPredictFromDense, _check_call, c_bst_ulong, make_jcargs | DensePredictor | checked_predictor(): its answers on probe rows equal Booster.inplace_predict()'s exactly | InplacePredictor (Booster.inplace_predict), logged |
| sys.modules["sklearn"] = None while importing xgboost | import_xgboost() | -                                      | (xgboost imports without its sklearn wrappers by design) |

Pinned: xgboost-cpu==3.2.0 (requirements.in); serving/pins.py warns at start when another is installed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import sys
from typing import Any

import numpy as np

from . import dataset, stores
from .schema import ModelSchema

MODEL_NAME = "xgb_classifier"
# The tag policy: the newest model unless MODEL_TAG pins one (e.g. "xgb_classifier:3dk2ptx6bkqa2tg5").
MODEL_TAG_ENV = "MODEL_TAG"
BOOSTER_FILE = "booster.ubj"
SCALER_FILE = "scaler.json"
TRAIN_HINT = "run `make train` (or `python train_export.py`) to train and register it"


class ModelContractError(RuntimeError):
    """The model in the store cannot be served: missing, unreadable, or without a usable schema."""


store_path = stores.home_path  # where BentoML keeps models: $BENTOML_HOME/models


def _not_stored(tag: str) -> ModelContractError:
    return ModelContractError(f"model {tag!r} is not in the BentoML store {store_path()}; {TRAIN_HINT}")


def import_xgboost():
    """xgboost, imported without its scikit-learn wrappers when it is not imported yet.

    XGBoost imports scikit-learn (and with it SciPy) at import time whenever it is installed, only
    to offer XGBClassifier & co. Serving uses the Booster alone, and that import costs a noticeable
    part of start-up per process (the arbiter and every worker; docs/performance.md). The image has no scikit-learn at all;
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
logger = logging.getLogger("xgb_service")


class DensePredictor:
    """Booster.inplace_predict() for a dense float64 array, without its per-call Python overhead.

    inplace_predict() spends a large share of a call on Python work for the general case
    (DataFrame/Arrow detection, the config and array interface built with json.dumps): a third of
    the model's cost at /predict's batch sizes (docs/performance.md). This calls the same C function
    with the same arguments, the config built once. It uses xgboost.core's _LIB and _check_call;
    checked_predictor() checks it at load against inplace_predict(), tests/test_training.py too.
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
        # XGBoost owns `result` (per thread, until its next call): copy it out. Its shape is (rows,)
        # for one output per row (regression, binary:logistic), (rows, classes) for softprob.
        columns = int(shape[1]) if dims.value > 1 else 1
        return np.ctypeslib.as_array(result, shape=(rows, columns)).copy()


class InplacePredictor:
    """The public path DensePredictor shortcuts: Booster.inplace_predict(), shaped as DensePredictor answers."""

    def __init__(self, booster: Any) -> None:
        self._booster = booster

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        return np.asarray(self._booster.inplace_predict(x, validate_features=False), dtype=np.float32).reshape(len(x), -1)


def checked_predictor(booster: Any, probe: np.ndarray, fast: type = DensePredictor) -> DensePredictor | InplacePredictor:
    """`fast` (DensePredictor) when it answers the probe rows exactly as Booster.inplace_predict() does,
    else the public InplacePredictor, with a warning naming what differed."""
    public = InplacePredictor(booster)
    try:
        predictor = fast(booster)
        same = np.array_equal(predictor(probe), public(probe), equal_nan=True)
        problem = "" if same else "answers differently from Booster.inplace_predict()"
    except Exception as exc:  # an xgboost whose internals moved: any error is the check failing
        problem = f"failed ({type(exc).__name__}: {exc})"
    if not problem:
        return predictor
    logger.warning("xgboost's C predict %s: predicting with inplace_predict() (update model_store/bundle.py)", problem)
    return public


def probe_rows(schema: ModelSchema, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """What the booster sees for the schema's example, an all-zero row and an all-missing row."""
    example = (encode(schema, [schema.example]) - mean) / scale
    return np.vstack([example, np.zeros((1, schema.n_features)), np.full((1, schema.n_features), np.nan)])


def model_tag() -> str:
    return os.environ.get(MODEL_TAG_ENV) or f"{MODEL_NAME}:latest"


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    tag: str
    booster: Any  # xgboost.Booster
    mean: np.ndarray
    scale: np.ndarray
    schema: ModelSchema
    metadata: dict[str, Any]
    predict_scaled: DensePredictor | InplacePredictor = dataclasses.field(repr=False, compare=False)
    created: str = ""  # when it was registered, ISO 8601 (UTC)

    @property
    def version(self) -> str:
        return self.tag.split(":", 1)[1]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.schema.class_names

    def encode(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Validated records -> (n, n_features) float64: categories as their codes, null as NaN."""
        return encode(self.schema, records)

    def margin_input(self, rows: np.ndarray) -> np.ndarray:
        """What the booster sees for raw rows: continuous values scaled, codes and NaN unchanged. Row-major
        whatever the layout of `rows` (batch scoring's are column-major): the layout the C predictor reads."""
        scaled = np.subtract(rows, self.mean, out=np.empty(rows.shape, dtype=np.float64))
        return np.divide(scaled, self.scale, out=scaled)

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        """Classification: probabilities, shape (n, classes) (binary: 2 columns), for raw rows."""
        out = self.predict_scaled(self.margin_input(rows))
        if out.shape[1] == 1:  # binary:logistic gives P(class 1)
            return np.hstack([1.0 - out, out])
        return out

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Regression: one value per raw row, shape (n,)."""
        return self.predict_scaled(self.margin_input(rows))[:, 0]


def encode(schema: ModelSchema, records: list[dict[str, Any]]) -> np.ndarray:
    """Validated records (every feature present, categories known) -> an (n, n_features) float64 array.

    Column by column, so the per-value Python work is one dict lookup for a category and one
    test for a null; a plain schema's records are rows of floats already.
    """
    if schema.records_are_float_rows:
        names = schema.feature_names
        return np.array([[r[name] for name in names] for r in records], dtype=np.float64).reshape(-1, schema.n_features)
    rows = np.empty((len(records), schema.n_features), dtype=np.float64)
    nan = float("nan")
    for j, f in enumerate(schema.features):
        column = [r[f.name] for r in records]
        if f.kind == "categorical":
            codes = f.codes
            rows[:, j] = [nan if v is None else codes[v] for v in column]
        elif f.nullable:
            rows[:, j] = [nan if v is None else v for v in column]
        else:
            rows[:, j] = column
    return rows


def save_bundle(booster: Any, scaler: Any, *, schema: ModelSchema, labels: dict[str, str], metadata: dict[str, Any]):
    """Register booster + scaler (mean_, scale_) + schema as one new version of MODEL_NAME; returns the bentoml.Model."""
    import bentoml

    check_booster(booster, schema, "the new model")
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata={**metadata, "schema": schema.to_dict()}) as model:
        booster.save_model(model.path_of(BOOSTER_FILE))
        scaler_params = {
            "feature_names": list(schema.feature_names),
            "mean": np.asarray(scaler.mean_, dtype=np.float64).tolist(),
            "scale": np.asarray(scaler.scale_, dtype=np.float64).tolist(),
        }
        with open(model.path_of(SCALER_FILE), "w") as f:
            json.dump(scaler_params, f)
    return model


def stored_schema(tag: str, metadata: dict[str, Any]) -> ModelSchema:
    """The schema stored with a model; a model stored before schemas were (metadata "feature_schema"
    of the default dataset) gets the default dataset's schema, which is what it was trained on."""
    if "schema" in metadata:
        try:
            return ModelSchema.from_dict(metadata["schema"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelContractError(f"model {tag!r} has an unreadable schema ({exc}); {TRAIN_HINT}") from None
    if metadata.get("feature_schema") == dataset.legacy_fingerprint():
        return dataset.SCHEMA
    raise ModelContractError(f"model {tag!r} has no feature schema in its metadata (stored by an older version); {TRAIN_HINT}")


def stored_model(tag: str | None = None):
    """The store entry for `tag` (default: the tag policy), its schema checked, without loading it.

    Returns a bentoml.models.BentoModel reference, which is also what makes `bentoml build`
    pack the model into the Bento.
    """
    import bentoml

    tag = tag or model_tag()
    try:
        stored = stores.get(tag)  # the serving store, else the home store (a model imported from MODEL_URI)
    except bentoml.exceptions.NotFound:
        raise _not_stored(tag) from None
    stored_schema(str(stored.tag), dict(stored.info.metadata))
    return bentoml.models.BentoModel(str(stored.tag))


# The objectives whose predictions are what a schema's task answers: probabilities or values.
CLASSIFICATION_OBJECTIVES = {"binary": ("binary:logistic",), "multiclass": ("multi:softprob",)}
REGRESSION_PREFIXES = ("reg:", "count:", "survival:")


def booster_objective(booster: Any) -> tuple[str, int]:
    """The booster's objective and its number of classes (0 when not multi-class)."""
    learner = json.loads(booster.save_config())["learner"]
    return learner["objective"]["name"], int(learner["learner_model_param"].get("num_class", "0"))


def check_booster(booster: Any, schema: ModelSchema, tag: str) -> None:
    """The booster takes the schema's features and gives the schema's outputs."""
    if booster.num_features() != schema.n_features:
        raise ModelContractError(
            f"model {tag!r}: the booster takes {booster.num_features()} features, the schema has {schema.n_features}; {TRAIN_HINT}"
        )
    objective, num_class = booster_objective(booster)
    if schema.task == "regression":
        fits = objective.startswith(REGRESSION_PREFIXES)
    else:
        fits = objective in CLASSIFICATION_OBJECTIVES[schema.task] and (schema.task == "binary" or num_class == schema.n_classes)
    if not fits:
        raise ModelContractError(
            f"model {tag!r}: objective {objective} ({num_class or 'no'} classes) does not give what a {schema.task} schema "
            f"with {schema.n_classes} classes answers; {TRAIN_HINT}"
        )


def load_bundle(tag: str | None = None, *, nthread: int = 1) -> ModelBundle:
    """Load and check a bundle; ModelContractError names the tag and the fix when it cannot be served."""
    import bentoml

    xgb = import_xgboost()
    tag = tag or model_tag()
    try:
        model = stores.get(tag)
    except bentoml.exceptions.NotFound:
        raise _not_stored(tag) from None
    full_tag = str(model.tag)
    metadata = dict(model.info.metadata)
    schema = stored_schema(full_tag, metadata)
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
    if mean.shape != (schema.n_features,) or scale.shape != (schema.n_features,):
        raise ModelContractError(f"model {full_tag!r}: its scaler does not take the schema's {schema.n_features} features; {TRAIN_HINT}")
    check_booster(booster, schema, full_tag)
    # One thread per worker: workers already use every core, and threads would fight over them.
    booster.set_param({"nthread": nthread})
    created = model.info.creation_time.isoformat(timespec="seconds")
    predictor = checked_predictor(booster, probe_rows(schema, mean, scale))
    return ModelBundle(full_tag, booster, mean, scale, schema, metadata, predictor, created)


# An exported bundle: one zip file with the store entry's parts, for where the store is not (Spark
# executors, EMR Serverless, batch-scoring worker processes that should not import BentoML).
EXPORT_MANIFEST = "bundle.json"


def export_bundle(bundle: ModelBundle) -> bytes:
    """The bundle as bytes (a zip: booster.ubj, scaler.json, bundle.json with tag, created, schema, metadata)."""
    import io
    import zipfile

    out = io.BytesIO()
    manifest = {"tag": bundle.tag, "created": bundle.created, "schema": bundle.schema.to_dict(), "metadata": bundle.metadata}
    scaler = {"feature_names": list(bundle.schema.feature_names), "mean": bundle.mean.tolist(), "scale": bundle.scale.tolist()}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(BOOSTER_FILE, bytes(bundle.booster.save_raw("ubj")))
        z.writestr(SCALER_FILE, json.dumps(scaler))
        z.writestr(EXPORT_MANIFEST, json.dumps(manifest, default=str))
    return out.getvalue()


@dataclasses.dataclass(frozen=True)
class BundleManifest:
    """An exported bundle's tag and schema, read without its booster: enough to check a table's
    columns and name the answer fields, where importing xgboost and loading the booster is not needed."""

    tag: str
    schema: ModelSchema

    @property
    def version(self) -> str:
        return self.tag.split(":", 1)[1]


def read_manifest(data: bytes) -> BundleManifest:
    """An exported bundle's manifest (bundle_from_bytes loads and checks the whole bundle)."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            manifest = json.loads(z.read(EXPORT_MANIFEST))
        return BundleManifest(str(manifest["tag"]), ModelSchema.from_dict(manifest["schema"]))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelContractError(f"not an exported model bundle ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def bundle_from_bytes(data: bytes, *, nthread: int = 1) -> ModelBundle:
    """An exported bundle (export_bundle) loaded and checked, without the BentoML store."""
    import io
    import zipfile

    xgb = import_xgboost()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            manifest = json.loads(z.read(EXPORT_MANIFEST))
            scaler = json.loads(z.read(SCALER_FILE))
            booster = xgb.Booster(model_file=bytearray(z.read(BOOSTER_FILE)))
        tag = str(manifest["tag"])
        schema = ModelSchema.from_dict(manifest["schema"])
        mean = np.asarray(scaler["mean"], dtype=np.float64)
        scale = np.asarray(scaler["scale"], dtype=np.float64)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError, xgb.core.XGBoostError) as exc:
        raise ModelContractError(f"not an exported model bundle ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if mean.shape != (schema.n_features,) or scale.shape != (schema.n_features,):
        raise ModelContractError(f"exported model {tag!r}: its scaler does not take the schema's {schema.n_features} features")
    check_booster(booster, schema, tag)
    booster.set_param({"nthread": nthread})
    return ModelBundle(tag, booster, mean, scale, schema, dict(manifest.get("metadata", {})), checked_predictor(booster, probe_rows(schema, mean, scale)), str(manifest.get("created", "")))
