"""Is the served model still accurate? Captured answers joined with the true labels, against training.

    python -m model_store.quality --capture URI --labels labels.csv [--margin 0.05] [--plot quality.png]
    make quality CAPTURE=URI LABELS=labels.csv [MARGIN=0.05] [PLOT=quality.png]

URI is what the service captured to (XGB_CAPTURE_URI: a directory or s3://bucket/prefix); the labels
are a CSV or Parquet file with the columns request_id and label (a class name or index, or a number
for regression), e.g. a churn known weeks after the prediction. Every labelled record is scored per
model version (roles primary, canary and shadow: a shadow candidate's quality on live traffic too)
and per day: accuracy and log loss (classification) or RMSE and MAE (regression), next to the
held-out metrics stored with the model at training. Exit 1 when a version is worse than its training
metrics by more than --margin (relative: 0.05 = 5 % lower accuracy, or 5 % higher log loss or RMSE),
2 when the data cannot be read.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import numpy as np

from . import captured
from .bundle import MODEL_NAME, ModelContractError, stored_schema
from .captured import CaptureError

EXIT_WORSE = 1
EXIT_DATA_ERROR = 2
DEFAULT_MARGIN = 0.05
PROBABILITY_FLOOR = 1e-15  # log loss of a probability rounded to 0 in the answer


def log(message: str) -> None:
    print(f"[quality] {message}", flush=True)


def read_labels(path: str) -> dict[str, str]:
    """request_id -> label (as text) from a CSV or Parquet file."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        if path.endswith(".parquet"):
            table = pq.read_table(path)
        else:
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={"request_id": pa.string(), "label": pa.string()}))
    except (OSError, pa.ArrowInvalid) as exc:
        raise CaptureError(f"cannot read the labels {path}: {exc}") from None
    missing = [c for c in ("request_id", "label") if c not in table.column_names]
    if missing:
        raise CaptureError(f"{path}: the labels need the columns request_id and label; missing {', '.join(missing)}")
    ids = table.column("request_id").cast(pa.string()).to_pylist()
    labels = table.column("label").cast(pa.string()).to_pylist()
    return {i: l for i, l in zip(ids, labels) if i is not None and l is not None}


def model_info(version: str) -> tuple[Any, dict[str, Any]] | None:
    """(schema, training metrics) of a version in the BentoML store, or None when it is not there."""
    import bentoml

    try:
        model = bentoml.models.get(f"{MODEL_NAME}:{version}")
    except bentoml.exceptions.NotFound:
        return None
    metadata = dict(model.info.metadata)
    try:
        return stored_schema(str(model.tag), metadata), dict(metadata.get("metrics") or {})
    except ModelContractError:
        return None


def class_index(label: str, class_names: tuple[str, ...]) -> int | None:
    if label in class_names:
        return class_names.index(label)
    try:
        number = float(label)
    except ValueError:
        return None
    return int(number) if number.is_integer() and 0 <= number < len(class_names) else None


def scores(records: list[dict[str, Any]], labels: list[str], schema: Any) -> dict[str, float]:
    """The metrics of answered records against their labels."""
    if schema is not None and not schema.is_classification or schema is None and "prediction" in records[0]:
        truth = np.array([float(l) for l in labels])
        predicted = np.array([r["prediction"] for r in records], dtype=np.float64)
        return {"rmse": float(np.sqrt(np.mean((predicted - truth) ** 2))), "mae": float(np.mean(np.abs(predicted - truth)))}
    names = schema.class_names if schema is not None else tuple(str(i) for i in range(len(records[0]["probabilities"])))
    truth = np.array([class_index(l, names) for l in labels], dtype=object)
    known = np.array([t is not None for t in truth])
    if not known.any():
        raise CaptureError(f"no label is a class of the model ({', '.join(names)}): {labels[0]!r} ...")
    truth_known = truth[known].astype(np.int64)
    proba = np.array([r["probabilities"] for r, k in zip(records, known) if k], dtype=np.float64)
    predicted = np.array([r["predicted_class"] for r, k in zip(records, known) if k])
    chosen = np.clip(proba[np.arange(len(proba)), truth_known], PROBABILITY_FLOOR, 1.0)
    return {"accuracy": float(np.mean(predicted == truth_known)), "log_loss": float(-np.mean(np.log(chosen))),
            "unknown_labels": int((~known).sum())}  # fmt: skip


def worse_than_training(got: dict[str, float], trained: dict[str, Any], margin: float) -> list[str]:
    """How `got` is worse than the training metrics by more than the margin (relative), in words."""
    problems = []
    for name, higher_is_better in (("accuracy", True), ("log_loss", False), ("rmse", False)):
        if name not in got or name not in trained:
            continue
        limit = trained[name] * (1 - margin) if higher_is_better else trained[name] * (1 + margin)
        if (got[name] < limit) if higher_is_better else (got[name] > limit):
            problems.append(f"{name} {got[name]:.4f} vs {trained[name]:.4f} at training ({'below' if higher_is_better else 'above'} {limit:.4f})")
    return problems


def report(capture_uri: str, labels_path: str, margin: float) -> dict[str, Any]:
    """Per model version and per day: the records labelled, their metrics, the training metrics, the verdict."""
    table = captured.read(capture_uri)
    labels = read_labels(labels_path)
    log(f"{table.num_rows:,} captured records under {capture_uri}; {len(labels):,} labels in {labels_path}")
    ids = table.column("request_id").to_pylist()
    labelled = [i for i, rid in enumerate(ids) if rid in labels]
    if not labelled:
        raise CaptureError(f"no label in {labels_path} matches a captured request_id (e.g. {ids[0]!r})")
    table = table.take(labelled)
    answer_columns = [c for c in (*captured.CLASS_COLUMNS, *captured.VALUE_COLUMNS) if c in table.column_names]
    rows = table.select(["request_id", "timestamp", "model_version", "role", *answer_columns]).to_pylist()
    matched = {r["request_id"] for r in rows}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model_version"], ""), []).append(r)
        groups.setdefault((r["model_version"], r["timestamp"].date().isoformat()), []).append(r)
    versions: dict[str, Any] = {}
    for (version, day), members in sorted(groups.items()):
        info = versions.setdefault(version, {"info": model_info(version), "days": {}})
        schema, trained = info["info"] or (None, {})
        metrics = {"records": len(members), **scores(members, [labels[m["request_id"]] for m in members], schema)}
        if day:
            info["days"][day] = metrics
            continue
        info.update(overall=metrics, roles=sorted({m["role"] for m in members}), training={k: trained[k] for k in ("accuracy", "log_loss", "rmse") if k in trained})
        info["worse"] = worse_than_training(metrics, trained, margin)
    return {"capture": capture_uri, "labels": labels_path, "margin": margin, "labelled_records": len(rows),
            "unmatched_labels": len(set(labels) - matched), "versions": versions}  # fmt: skip


def show(result: dict[str, Any]) -> None:
    for version, info in result["versions"].items():
        overall, training = info["overall"], info["training"]
        known = "" if info["info"] else " (not in this model store: no training metrics to compare with)"
        log(f"model version {version} ({', '.join(info['roles'])}){known}: {overall['records']:,} labelled records")
        for name, value in overall.items():
            if name in ("records", "unknown_labels"):
                continue
            trained = f"   training {training[name]:.4f}" if name in training else ""
            log(f"  {name:<9} {value:.4f}{trained}")
        if overall.get("unknown_labels"):
            log(f"  {overall['unknown_labels']} labels are not a class of the model: left out")
        for day, metrics in info["days"].items():
            log(f"  {day}  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items() if k != "unknown_labels"))
        for problem in info["worse"]:
            log(f"  WORSE than training by more than {result['margin']:.0%}: {problem}")
    log(f"summary: {result['labelled_records']:,} labelled records, {len(result['versions'])} version(s), "
        f"{result['unmatched_labels']:,} labels without a captured record; "
        + ("versions worse than training: " + ", ".join(v for v, i in result["versions"].items() if i["worse"])
           if any(i["worse"] for i in result["versions"].values()) else "no version worse than its training metrics"))  # fmt: skip


def plot(result: dict[str, Any], path: str) -> None:
    """One panel per metric: each version's value per day (solid) and at training (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("accuracy", "log_loss", "rmse", "mae") if any(n in i["overall"] for i in result["versions"].values())]
    figure, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for version, info in result["versions"].items():
            days = sorted(info["days"])
            line = ax.plot(days, [info["days"][d][name] for d in days], marker="o", label=version)[0]
            if name in info["training"]:
                ax.axhline(info["training"][name], linestyle="--", color=line.get_color(), label=f"{version} at training")
        ax.set_title(name.replace("_", " "))
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=7)
    figure.suptitle(f"served model quality: {result['labelled_records']:,} labelled records")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_store.quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture", required=True, help="the capture URI (XGB_CAPTURE_URI): a directory or s3://bucket/prefix")
    parser.add_argument("--labels", required=True, help="CSV or Parquet with the columns request_id and label")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="relative margin below training (default: %(default)s = 5 %%)")
    parser.add_argument("--plot", help="write a PNG of the metrics per day")
    args = parser.parse_args(argv)
    if not 0 <= args.margin < 1 or math.isnan(args.margin):
        parser.error(f"--margin is a share from 0 to 1, not {args.margin}")
    try:
        result = report(args.capture, args.labels, args.margin)
    except CaptureError as exc:
        print(f"[quality] error: {exc}", file=sys.stderr)
        return EXIT_DATA_ERROR
    show(result)
    if args.plot:
        plot(result, args.plot)
        log(f"plot: {args.plot}")
    return EXIT_WORSE if any(i["worse"] for i in result["versions"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
