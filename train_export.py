"""Train an XGBoost model (+ StandardScaler) and register it, with its schema, in the BentoML model store.

    python train_export.py                                        # the embedded synthetic dataset
    python train_export.py --data my.csv --label target [--task auto|binary|multiclass|regression]
    python train_export.py --data <capture URI> --labels labels.csv  # captured traffic + its true labels
    python train_export.py import --model booster.json [--sample my.csv --label target] [--force]

Any CSV with a header row: its columns become the API's fields, verbatim; the typing rules are in
model_store/tabular.py (and the README's "Serve your own model"). A column that cannot be used is
refused with an error naming it, and nothing is registered. A model no better than the class prior
(or, for regression, than predicting the mean) is registered only with --force.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import Any

import numpy as np

from model_store import Feature, ModelSchema, captured, dataset, drift, save_bundle
from model_store.bundle import CLASSIFICATION_OBJECTIVES, REGRESSION_PREFIXES, booster_objective
from model_store.tabular import TASK_CHOICES, DataError, read_sample, read_table

# The default model's size. The benchmark's baseline serves a model of exactly this size.
TREE_PARAMS = {"max_depth": 6, "eta": 0.1, "tree_method": "hist"}
OBJECTIVES = {
    "multiclass": {"objective": "multi:softprob", "eval_metric": "mlogloss"},
    "binary": {"objective": "binary:logistic", "eval_metric": "logloss"},
    "regression": {"objective": "reg:squarederror", "eval_metric": "rmse"},
}
NUM_BOOST_ROUND = 100
TEST_FRACTION = 0.2
EXIT_DATA_ERROR = 2
EXIT_NO_BETTER = 3


def log(msg: str) -> None:
    print(f"[train] {msg}", flush=True)


def params_for(schema: ModelSchema, seed: int) -> dict[str, Any]:
    objective = OBJECTIVES[schema.task]
    classes = {"num_class": schema.n_classes} if schema.task == "multiclass" else {}
    return {"objective": objective["objective"], **classes, **TREE_PARAMS, "eval_metric": objective["eval_metric"], "seed": seed}


def split(x: np.ndarray, y: np.ndarray, seed: int, stratify: bool = True):
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y if stratify else None)
    except ValueError as exc:  # e.g. fewer held-out rows than classes
        raise DataError(f"cannot hold out {TEST_FRACTION:.0%} of {len(y)} rows with every class in both parts ({exc}); more rows are needed") from None


def fit_scaler(x_train: np.ndarray, schema: ModelSchema):
    """StandardScaler for the numbers (missing values ignored); category codes pass through unchanged."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    categorical = np.array([f.kind == "categorical" for f in schema.features])
    scaler.mean_[categorical] = 0.0
    scaler.scale_[categorical] = 1.0
    return scaler


def dmatrix(x: np.ndarray, y: np.ndarray | None, schema: ModelSchema):
    """Feature names when XGBoost allows them ("[", "]" and "<" it does not: the schema keeps the real
    names either way); categorical columns typed "c" for XGBoost's native categorical splits."""
    import xgboost as xgb

    names = list(schema.feature_names) if not any(c in n for n in schema.feature_names for c in "[]<") else None
    if any(f.kind == "categorical" for f in schema.features):
        types = ["c" if f.kind == "categorical" else "q" for f in schema.features]
        return xgb.DMatrix(x, label=y, feature_names=names, feature_types=types, enable_categorical=True)
    return xgb.DMatrix(x, label=y, feature_names=names)


def probabilities(booster: Any, data: Any) -> np.ndarray:
    proba = booster.predict(data)
    return np.column_stack([1.0 - proba, proba]) if proba.ndim == 1 else proba


def class_prior(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Each class's share of the labels `y`."""
    return np.bincount(y, minlength=n_classes) / len(y)


def held_out_metrics(schema: ModelSchema, booster: Any, dtest: Any, y_train: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Held-out metrics, and the same metrics for the prior: the training class shares (classification)
    or the training mean (regression). A useful model beats them."""
    from sklearn.metrics import accuracy_score, log_loss, mean_squared_error, r2_score

    if schema.task == "regression":
        predicted = booster.predict(dtest)
        return {
            "rmse": round(float(np.sqrt(mean_squared_error(y_test, predicted))), 6),
            "r2": round(float(r2_score(y_test, predicted)), 4),
            "prior_rmse": round(float(np.sqrt(mean_squared_error(y_test, np.full(len(y_test), y_train.mean())))), 6),
        }
    labels = list(range(schema.n_classes))
    proba = probabilities(booster, dtest)
    prior = class_prior(y_train, schema.n_classes)
    return {
        "accuracy": round(float(accuracy_score(y_test, proba.argmax(axis=1))), 4),
        "log_loss": round(float(log_loss(y_test, proba, labels=labels)), 4),
        "prior_accuracy": round(float(np.mean(y_test == prior.argmax())), 4),
        "prior_log_loss": round(float(log_loss(y_test, np.tile(prior, (len(y_test), 1)), labels=labels)), 4),
    }


def no_better_than_prior(metrics: dict[str, Any]) -> str | None:
    """Why the model is no better than the prior, or None when it is better."""
    if "r2" in metrics:
        if metrics["rmse"] >= metrics["prior_rmse"]:
            return f"held-out RMSE {metrics['rmse']:g} is no better than predicting the training mean ({metrics['prior_rmse']:g}; R² {metrics['r2']:g})"
        return None
    reasons = []
    if metrics["accuracy"] <= metrics["prior_accuracy"]:
        reasons.append(f"held-out accuracy {metrics['accuracy']:.4f} is no better than always predicting the most frequent class ({metrics['prior_accuracy']:.4f})")
    if metrics["log_loss"] >= metrics["prior_log_loss"]:
        reasons.append(f"held-out log loss {metrics['log_loss']:.4f} is no better than the class prior's ({metrics['prior_log_loss']:.4f})")
    return "; ".join(reasons) or None


def refused_as_no_better(metrics: dict[str, Any], force: bool, failure: str, hint: str) -> bool:
    """True (the error printed) when the model is no better than the prior and --force is not given;
    with --force, a warning and False."""
    weak = no_better_than_prior(metrics)
    if weak and not force:
        print(f"[train] error: {weak}: {failure}; nothing was registered ({hint}, or pass --force to register it anyway)", file=sys.stderr)
        return True
    if weak:
        print(f"[train] warning: {weak}; registered anyway because of --force", file=sys.stderr)
    return False


def train(x: np.ndarray, y: np.ndarray, seed: int, schema: ModelSchema = dataset.SCHEMA, rounds: int = NUM_BOOST_ROUND,
          early_stopping: int = 0):  # fmt: skip
    """Fit scaler + booster; returns (booster, scaler, metrics).

    With `early_stopping` N, boosting stops once N rounds in a row have not improved the loss on a
    validation part of the training rows, and the best round's model is kept. The held-out rows
    are never looked at while fitting, so their metrics stay an honest estimate."""
    import xgboost as xgb

    x_train, x_test, y_train, y_test = split(x, y, seed, stratify=schema.is_classification)
    scaler = fit_scaler(x_train, schema)
    dtest = dmatrix(scaler.transform(x_test), y_test, schema)
    params = params_for(schema, seed)
    metric = params["eval_metric"]
    callbacks: list[Any] = []
    if early_stopping:
        x_fit, x_val, y_fit, y_val = split(x_train, y_train, seed, stratify=schema.is_classification)
        dtrain = dmatrix(scaler.transform(x_fit), y_fit, schema)
        watched, shown = (dmatrix(scaler.transform(x_val), y_val, schema), "validation"), "validation"
        callbacks.append(xgb.callback.EarlyStopping(rounds=early_stopping, metric_name=metric, data_name="validation", save_best=True))
    else:
        dtrain = dmatrix(scaler.transform(x_train), y_train, schema)
        watched, shown = (dtest, "test"), "held-out"  # (XGBoost refuses a "-" in the name)
    log(f"training {rounds} rounds, max_depth {params['max_depth']}, {schema.task}" + (f", {schema.n_classes} classes" if schema.n_classes else "")
        + (f", stopping early after {early_stopping} rounds without a better validation {metric}" if early_stopping else "") + " ...")  # fmt: skip
    losses: list[float] = []

    class Progress(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            losses.append(evals_log[watched[1]][metric][-1])
            if (epoch + 1) % 25 == 0:
                log(f"  round {epoch + 1}/{rounds}  {shown} {metric} {losses[-1]:.4f}")
            return False

    booster = xgb.train(params, dtrain, rounds, evals=[watched], verbose_eval=False, callbacks=[Progress(), *callbacks])
    fitted = dtrain.num_row()
    if early_stopping:
        kept = booster.num_boosted_rounds()
        log(f"  kept round {kept} of {len(losses)} (validation {metric} {losses[kept - 1]:.4f})"
            + ("" if len(losses) < rounds else f"; still improving at round {rounds}: more --rounds may help"))  # fmt: skip
    metrics = {**held_out_metrics(schema, booster, dtest, y_train, y_test), "train_rows": fitted, "test_rows": int(len(y_test))}
    if early_stopping:
        metrics["validation_rows"] = int(len(y_train)) - fitted
    return booster, scaler, metrics


def drift_reference(x: np.ndarray, y: np.ndarray, seed: int, schema: ModelSchema, booster: Any, scaler: Any) -> dict[str, Any]:
    """The training split's distribution and the held-out predicted-class shares, which the service's
    drift metrics compare with (model_store/drift.py). The split is train()'s: same data, same seed."""
    x_train, x_test, _, _ = split(x, y, seed, stratify=schema.is_classification)
    held_out = None
    if schema.is_classification:
        held_out = probabilities(booster, dmatrix(scaler.transform(x_test), None, schema)).argmax(axis=1)
    return drift.reference(x_train, schema.features, held_out, schema.class_names)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("xgboost-cpu", "xgboost", "scikit-learn", "numpy", "bentoml"):
        try:
            versions[dist] = pkg_metadata.version(dist)
        except pkg_metadata.PackageNotFoundError:
            pass
    return versions


def register(booster: Any, scaler: Any, schema: ModelSchema, *, dataset_label: str, metadata: dict[str, Any]):
    """Save as the new latest version and print where it went."""
    import bentoml

    model = save_bundle(
        booster,
        scaler,
        schema=schema,
        labels={"framework": "xgboost", "task": schema.task, "dataset": dataset_label},
        metadata={**metadata, "library_versions": library_versions()},
    )
    stored = bentoml.models.get(model.tag)
    size_kb = sum(f.stat().st_size for f in Path(stored.path).iterdir()) / 1024
    log("summary:")
    log(f"  model       {model.tag}  ({size_kb:.0f} KiB in {stored.path})")
    log(f"  task        {schema.task}, {schema.n_features} features" + (f", classes {', '.join(schema.class_names)}" if schema.class_names else ""))
    return model


def describe(metrics: dict[str, Any]) -> str:
    if "r2" in metrics:
        return f"R² {metrics['r2']:.4f}, RMSE {metrics['rmse']:g} (predicting the mean: RMSE {metrics['prior_rmse']:g})"
    return (
        f"accuracy {metrics['accuracy']:.4f}, log loss {metrics['log_loss']:.4f} "
        f"(class prior: accuracy {metrics['prior_accuracy']:.4f}, log loss {metrics['prior_log_loss']:.4f})"
    )


def train_main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.data:
        try:
            if args.labels:  # captured records (serving/capture.py) joined with request_id,label
                log(f"reading the records captured under {args.data}, joined with the labels in {args.labels} (task {args.task})")
                table = captured.training_table(args.data, args.labels, args.task)
            else:
                log(f"reading {args.data} (label column {args.label!r}, task {args.task})")
                table = read_table(args.data, args.label, args.task)
        except (DataError, captured.CaptureError, OSError, UnicodeDecodeError) as exc:
            print(f"[train] error: {exc}; nothing was registered", file=sys.stderr)
            return EXIT_DATA_ERROR
        x, y, schema, digest, source = table.x, table.y, table.schema, table.sha256, f"{args.data} + {args.labels}" if args.labels else args.data
    else:
        log(f"generating the embedded synthetic dataset: {args.rows} rows, seed {args.seed}")
        x, y = dataset.generate(args.rows, args.seed)
        schema, digest, source = dataset.SCHEMA, dataset.data_hash(x, y), "synthetic-default"
    kinds = {k: sum(f.kind == k for f in schema.features) for k in ("continuous", "binary", "categorical")}
    log(f"data: {x.shape[0]} rows x {x.shape[1]} features ({', '.join(f'{n} {k}' for k, n in kinds.items() if n)}), "
        f"{sum(f.nullable for f in schema.features)} with missing values, sha256 {digest[:12]}")  # fmt: skip
    if schema.is_classification:
        log(f"classes: {dict(zip(schema.class_names, np.bincount(y, minlength=schema.n_classes).tolist()))}")

    try:
        booster, scaler, metrics = train(x, y, args.seed, schema, args.rounds, args.early_stopping)
    except DataError as exc:
        print(f"[train] error: {exc}; nothing was registered", file=sys.stderr)
        return EXIT_DATA_ERROR
    log(f"held-out    {describe(metrics)}")
    if refused_as_no_better(metrics, args.force, "the model has learned nothing usable", "check the label column and the data"):
        return EXIT_NO_BETTER
    metadata: dict[str, Any] = {
        "metrics": metrics,
        "data_source": source,
        "data_sha256": digest,
        "training_params": {**params_for(schema, args.seed), "num_boost_round": booster.num_boosted_rounds(), "test_fraction": TEST_FRACTION,
                            **({"early_stopping_rounds": args.early_stopping, "max_boost_round": args.rounds} if args.early_stopping else {})},  # fmt: skip
        "train_seconds": round(time.perf_counter() - started, 2),
        drift.REFERENCE_KEY: drift_reference(x, y, args.seed, schema, booster, scaler),
    }
    if schema.is_classification:
        # The training label distribution: monitoring compares the served class mix with it.
        metadata["class_prior"] = class_prior(y, schema.n_classes).round(4).tolist()
    register(booster, scaler, schema, dataset_label=("capture" if args.labels else "csv") if args.data else "synthetic", metadata=metadata)
    validation = f" / {metrics['validation_rows']} validation" if "validation_rows" in metrics else ""
    log(f"  data        {metrics['train_rows']} train{validation} / {metrics['test_rows']} held-out rows")
    log(f"  time        {time.perf_counter() - started:.1f} s")
    return 0


class IdentityScaler:
    """An imported booster takes the raw features: mean 0, scale 1."""

    def __init__(self, n: int) -> None:
        self.mean_, self.scale_ = np.zeros(n), np.ones(n)


def imported_task(path: str, booster: Any) -> tuple[str, int]:
    objective, num_class = booster_objective(booster)
    for task, objectives in CLASSIFICATION_OBJECTIVES.items():
        if objective in objectives:
            return task, num_class
    if objective.startswith(REGRESSION_PREFIXES):
        return "regression", 0
    raise DataError(
        f"{path}: objective {objective} does not give probabilities or values to serve "
        "(classification: binary:logistic or multi:softprob; regression: reg:*, count:*, survival:*)"
    )


def booster_features(booster: Any) -> tuple[list[str], list[str]]:
    """The booster's feature names and XGBoost types; a booster saved without them has f0, f1, ... all numeric."""
    names = booster.feature_names or [f"f{i}" for i in range(booster.num_features())]
    return list(names), list(booster.feature_types or ["q"] * len(names))


def imported_schema(path: str, booster: Any) -> ModelSchema:
    """Without a sample: names and kinds from the booster, no ranges, nothing nullable."""
    task, num_class = imported_task(path, booster)
    names, types = booster_features(booster)
    if "c" in types:
        raise DataError(f"{path}: feature {names[types.index('c')]!r} is categorical: give --sample FILE.csv --label COLUMN so its categories are known")
    features = tuple(Feature(n, "binary", 0.0, 1.0) if t == "i" else Feature(n, "continuous") for n, t in zip(names, types))
    class_names = {"binary": ("0", "1"), "multiclass": tuple(map(str, range(num_class))), "regression": ()}[task]
    return ModelSchema(task, features, class_names, {f.name: 0.0 for f in features})  # type: ignore[arg-type]


def import_main(args: argparse.Namespace) -> int:
    """Register a booster trained elsewhere, its schema from the booster and, when given, a sample."""
    import hashlib

    import xgboost as xgb

    started = time.perf_counter()
    log(f"importing {args.model}")
    try:
        try:
            booster = xgb.Booster(model_file=args.model)
        except xgb.core.XGBoostError as exc:
            raise DataError(f"{args.model} is not an XGBoost model ({str(exc).splitlines()[0][:200]})") from None
        task, num_class = imported_task(args.model, booster)
        metadata: dict[str, Any] = {"data_source": args.model}
        if args.sample:
            names, booster_types = booster_features(booster)
            table = read_sample(args.sample, args.label, names, task)
            schema = table.schema
            if schema.is_classification and schema.n_classes != max(num_class, 2):
                raise DataError(f"{args.sample}: label {args.label!r} has {schema.n_classes} classes, the model {max(num_class, 2)}")
            for f, t in zip(schema.features, booster_types):
                if (f.kind == "categorical") != (t == "c"):
                    raise DataError(f"{args.sample}: column {f.name!r} is {f.kind} in the sample but {'categorical' if t == 'c' else 'numeric'} in the model")
            data = dmatrix(table.x, table.y, schema)
            metrics = held_out_metrics(schema, booster, data, table.y, table.y)
            metrics["sample_rows"] = int(len(table.y))
            log(f"on the sample ({len(table.y)} rows): {describe(metrics)}")
            failure = "on its sample the model predicts no better than the prior"
            if refused_as_no_better(metrics, args.force, failure, "check the sample and the label"):
                return EXIT_NO_BETTER
            metadata.update(metrics=metrics, data_sha256=table.sha256, sample=args.sample)
            if schema.is_classification:
                metadata["class_prior"] = class_prior(table.y, schema.n_classes).round(4).tolist()
        else:
            schema = imported_schema(args.model, booster)
    except (DataError, OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"[train] error: {exc}; nothing was registered", file=sys.stderr)
        return EXIT_DATA_ERROR
    with open(args.model, "rb") as f:
        model_sha256 = hashlib.sha256(f.read()).hexdigest()
    objective, _ = booster_objective(booster)
    metadata["training_params"] = {"imported_from": args.model, "model_sha256": model_sha256, "objective": objective,
                                   "num_boosted_rounds": booster.num_boosted_rounds()}  # fmt: skip
    register(booster, IdentityScaler(schema.n_features), schema, dataset_label="import", metadata=metadata)
    log(f"  time        {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import"]:
        importer = argparse.ArgumentParser(prog="train_export.py import", description=import_main.__doc__)
        importer.add_argument("--model", required=True, help="an XGBoost booster saved as .json or .ubj")
        importer.add_argument("--sample", help="CSV with the booster's features (and a label column): ranges, categories, null, metrics")
        importer.add_argument("--label", default="label", help="label column of --sample (default: %(default)s)")
        importer.add_argument("--force", action="store_true", help="register even when no better than the prior on the sample")
        return import_main(importer.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="CSV with a header row: the features and the label column (default: embedded synthetic data)")
    parser.add_argument("--label", default="label", help="label column of --data (default: %(default)s)")
    parser.add_argument("--labels", help="with --data <capture URI> (XGB_CAPTURE_URI): CSV or Parquet of request_id,label to train on the captured records")
    parser.add_argument("--task", choices=TASK_CHOICES, default="auto",
                        help="auto: classification for text labels or integers with at most 20 values, else regression (default)")  # fmt: skip
    parser.add_argument("--rows", type=int, default=dataset.DEFAULT_ROWS, help="rows of synthetic data (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=dataset.DEFAULT_SEED, help="data, split and model seed (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=NUM_BOOST_ROUND, help="boosting rounds (default: %(default)s); with --early-stopping, the most")
    parser.add_argument("--early-stopping", type=int, default=0, metavar="N",
                        help="stop when N rounds in a row do not improve the loss on a validation part of the training rows, and keep "
                             "the best round (recommended for small datasets, which overfit; default: off)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="register a model even when it is no better than the class prior")
    args = parser.parse_args(argv)
    if args.labels and not args.data:
        parser.error("--labels needs --data <capture URI>: the captured records the labels belong to")
    if args.rounds < 1 or args.early_stopping < 0:
        parser.error(f"--rounds must be at least 1 and --early-stopping at least 0 (off), not {args.rounds} and {args.early_stopping}")
    return train_main(args)


if __name__ == "__main__":
    sys.exit(main())
