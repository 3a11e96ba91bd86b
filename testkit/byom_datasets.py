"""Small generated datasets beyond the default, written as CSV files for train_export.py.

Each has signal (a model beats the prior), few rows (training takes well under a second) and the
features a user's data brings: categories, missing values, names with spaces and punctuation.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

ROWS = 600


def write_csv(path: Path, columns: dict[str, list], header: list[str] | None = None) -> Path:
    """A header row (the column names, or `header` to write names a dict cannot hold, e.g. two
    alike) and the columns' values row by row."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header or list(columns))
        writer.writerows(zip(*columns.values()))
    return path


def churn_binary(path: Path, rows: int = ROWS, seed: int = 1) -> Path:
    """Binary "yes"/"no" label; a categorical plan, a 0/1 flag, a tenure with missing values."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "premium"], rows)
    tenure = rng.integers(1, 72, rows).astype(float)
    charges = np.round(rng.normal(70, 20, rows), 2)
    paperless = rng.integers(0, 2, rows)
    score = -0.04 * tenure + 1.2 * (plan == "basic") - 0.8 * (plan == "premium") + 0.02 * (charges - 70) + 0.5 * paperless
    churn = np.where(score + rng.normal(0, 0.6, rows) > -0.8, "yes", "no")
    tenure_cells = ["" if m else f"{t:g}" for t, m in zip(tenure, rng.random(rows) < 0.15)]
    return write_csv(path, {"plan": list(plan), "tenure": tenure_cells, "monthly_charges": list(charges), "paperless": list(paperless), "churn": list(churn)})


def flowers_multiclass(path: Path, rows: int = ROWS, seed: int = 2) -> Path:
    """Three string classes; column names with spaces, parentheses, a slash, a dot and non-ASCII."""
    rng = np.random.default_rng(seed)
    species = rng.choice(["setosa", "versicolor", "virginica"], rows)
    centre = {"setosa": (1.5, 0.3, 5.0), "versicolor": (4.3, 1.3, 5.9), "virginica": (5.5, 2.0, 6.6)}
    petal_len, petal_wid, sepal = (np.round([centre[s][i] + rng.normal(0, 0.35) for s in species], 2) for i in range(3))
    colour = rng.choice(["blue", "violet", "weiß"], rows)
    columns = {"petal length (cm)": list(petal_len), "petal width/cm": list(petal_wid), "sepal.length": list(sepal), "Farbe ü": list(colour), "species": list(species)}
    return write_csv(path, columns)


def houses_regression(path: Path, rows: int = ROWS, seed: int = 3) -> Path:
    """A price from area, rooms and a district; the price is a float label (regression)."""
    rng = np.random.default_rng(seed)
    area = np.round(rng.uniform(30, 200, rows), 1)
    rooms = rng.integers(1, 7, rows)
    district = rng.choice(["north", "south", "centre"], rows)
    price = 2.5 * area + 10 * rooms + np.select([district == "centre", district == "south"], [80.0, -20.0], 0.0) + rng.normal(0, 15, rows)
    return write_csv(path, {"area_m2": list(area), "rooms": list(rooms), "district": list(district), "price_k": list(np.round(price, 3))})


def noise_binary(path: Path, rows: int = ROWS, seed: int = 4) -> Path:
    """Labels independent of the features: nothing to learn."""
    rng = np.random.default_rng(seed)
    return write_csv(path, {"a": list(np.round(rng.normal(size=rows), 3)), "b": list(np.round(rng.normal(size=rows), 3)), "label": list(rng.integers(0, 2, rows))})
