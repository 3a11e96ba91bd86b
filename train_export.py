"""Train the default XGBoost classifier (+ StandardScaler) and register it in the BentoML model store.

    python train_export.py                         # the embedded synthetic dataset
    python train_export.py --data my.csv --label target

The CSV must have exactly the 36 feature columns of model_store/schema.py plus the label column
(integers 0-4). Anything else is refused with an error naming the column, and nothing is registered.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import sys
import time
from importlib import metadata as pkg_metadata
from pathlib import Path

import numpy as np

from model_store import dataset, save_bundle
from model_store.dataset import FEATURE_NAMES, N_CLASSES

CLASS_NAMES = dataset.SCHEMA.class_names

# The default model's size. The benchmark's baseline serves a model of exactly this size.
PARAMS = {
    "objective": "multi:softprob",
    "num_class": N_CLASSES,
    "max_depth": 6,
    "eta": 0.1,
    "tree_method": "hist",
    "eval_metric": "mlogloss",
    "seed": 0,
}
NUM_BOOST_ROUND = 100
TEST_FRACTION = 0.2


class DataError(ValueError):
    """The user's CSV does not fit the feature schema."""


def log(msg: str) -> None:
    print(f"[train] {msg}", flush=True)


def read_csv(path: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path} is empty") from None
        if label not in header:
            raise DataError(f"label column {label!r} is missing from {path}")
        if len(set(header)) != len(header):
            dupes = sorted({h for h in header if header.count(h) > 1})
            raise DataError(f"duplicate column(s) {dupes} in {path}")
        missing = [name for name in FEATURE_NAMES if name not in header]
        if missing:
            raise DataError(f"feature column(s) missing from {path}: {', '.join(missing)}")
        extra = [h for h in header if h != label and h not in FEATURE_NAMES]
        if extra:
            raise DataError(f"unknown column(s) in {path}: {', '.join(extra)} (the schema has feat1..feat36 and the label)")
        feature_cols = [header.index(name) for name in FEATURE_NAMES]
        label_col = header.index(label)
        xs, ys = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path} line {line_no}: {len(row)} values, expected {len(header)}")
            values = []
            for name, col in zip(FEATURE_NAMES, feature_cols):
                try:
                    v = float(row[col])
                except ValueError:
                    raise DataError(f"{path} line {line_no}: column {name!r} is not numeric: {row[col]!r}") from None
                if not math.isfinite(v):
                    raise DataError(f"{path} line {line_no}: column {name!r} is not finite: {row[col]!r}")
                values.append(v)
            raw_label = row[label_col].strip()
            if raw_label not in CLASS_NAMES:
                raise DataError(
                    f"{path} line {line_no}: label {label!r} must be one of {', '.join(CLASS_NAMES)}, got {raw_label!r}"
                )
            xs.append(values)
            ys.append(CLASS_NAMES.index(raw_label))
    if len(xs) < 10 * N_CLASSES:
        raise DataError(f"{path} has {len(xs)} rows; at least {10 * N_CLASSES} are needed")
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.int64)


def split(x: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)


def train(x: np.ndarray, y: np.ndarray, seed: int):
    """Fit scaler + booster; returns (booster, scaler, metrics)."""
    import xgboost as xgb
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.preprocessing import StandardScaler

    x_train, x_test, y_train, y_test = split(x, y, seed)
    scaler = StandardScaler().fit(x_train)
    dtrain = xgb.DMatrix(scaler.transform(x_train), label=y_train, feature_names=list(FEATURE_NAMES))
    dtest = xgb.DMatrix(scaler.transform(x_test), label=y_test, feature_names=list(FEATURE_NAMES))
    params = {**PARAMS, "seed": seed}
    log(f"training {NUM_BOOST_ROUND} rounds, max_depth {params['max_depth']}, {N_CLASSES} classes ...")

    class Progress(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            if (epoch + 1) % 25 == 0:
                log(f"  round {epoch + 1}/{NUM_BOOST_ROUND}  held-out mlogloss {evals_log['test']['mlogloss'][-1]:.4f}")
            return False

    booster = xgb.train(
        params, dtrain, NUM_BOOST_ROUND, evals=[(dtest, "test")], verbose_eval=False, callbacks=[Progress()]
    )
    proba = booster.predict(dtest)
    metrics = {
        "accuracy": round(float(accuracy_score(y_test, proba.argmax(axis=1))), 4),
        "log_loss": round(float(log_loss(y_test, proba, labels=list(range(N_CLASSES)))), 4),
        "train_rows": int(len(y_train)),
        "test_rows": int(len(y_test)),
    }
    return booster, scaler, metrics


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("xgboost-cpu", "xgboost", "scikit-learn", "numpy", "bentoml"):
        try:
            versions[dist] = pkg_metadata.version(dist)
        except pkg_metadata.PackageNotFoundError:
            pass
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="CSV with feat1..feat36 and a label column (default: embedded synthetic data)")
    parser.add_argument("--label", default="label", help="label column of --data (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=dataset.DEFAULT_ROWS, help="rows of synthetic data (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=dataset.DEFAULT_SEED, help="data, split and model seed (default: %(default)s)")
    args = parser.parse_args(argv)

    import bentoml

    started = time.perf_counter()
    if args.data:
        log(f"reading {args.data} (label column {args.label!r})")
        try:
            x, y = read_csv(args.data, args.label)
        except (DataError, OSError) as exc:
            print(f"[train] error: {exc}; nothing was registered", file=sys.stderr)
            return 2
        source = args.data
    else:
        log(f"generating the embedded synthetic dataset: {args.rows} rows, seed {args.seed}")
        x, y = dataset.generate(args.rows, args.seed)
        source = "synthetic-default"
    digest = dataset.data_hash(x, y)
    log(f"data: {x.shape[0]} rows x {x.shape[1]} features, classes {np.bincount(y, minlength=N_CLASSES).tolist()}, sha256 {digest[:12]}")

    booster, scaler, metrics = train(x, y, args.seed)
    seconds = time.perf_counter() - started
    model = save_bundle(
        booster,
        scaler,
        schema=dataset.SCHEMA,
        labels={"framework": "xgboost", "task": "multiclass", "dataset": "synthetic" if not args.data else "csv"},
        metadata={
            "metrics": metrics,
            "data_source": source,
            "data_sha256": digest,
            # The training label distribution: monitoring compares the served class mix with it.
            "class_prior": (np.bincount(y, minlength=N_CLASSES) / len(y)).round(4).tolist(),
            "training_params": {**PARAMS, "seed": args.seed, "num_boost_round": NUM_BOOST_ROUND, "test_fraction": TEST_FRACTION},
            "library_versions": library_versions(),
            "train_seconds": round(seconds, 2),
        },
    )
    stored = bentoml.models.get(model.tag)
    size_kb = sum(f.stat().st_size for f in Path(stored.path).iterdir()) / 1024
    log("summary:")
    log(f"  model       {model.tag}  ({size_kb:.0f} KiB in {stored.path})")
    log(f"  data        {metrics['train_rows']} train / {metrics['test_rows']} held-out rows")
    log(f"  held-out    accuracy {metrics['accuracy']:.4f}, log loss {metrics['log_loss']:.4f}")
    log(f"  time        {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
