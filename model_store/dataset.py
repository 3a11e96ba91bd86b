"""The embedded default dataset: synthetic, generated deterministically (nothing is downloaded).

The same generator gives the load tests realistic records, so traffic looks like training data.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .schema import FEATURE_INDEX, FEATURE_NAMES, INDEPENDENT_FLAGS, N_CLASSES, N_FEATURES, ONE_HOT_GROUPS

DEFAULT_ROWS = 20_000
DEFAULT_SEED = 42


def sample_features(rng: np.random.Generator, n: int) -> np.ndarray:
    """n records, shape (n, 36), float64, every value inside the schema's ranges."""
    x = np.zeros((n, N_FEATURES))
    x[:, 0] = np.clip(rng.normal(45, 14, n).round(), 18, 95)  # age
    x[:, 1] = np.minimum(rng.poisson(1.5, n), 10)  # dependents
    x[:, 2] = np.clip(rng.lognormal(np.log(6000), 0.6, n).round(2), 100, 200_000)  # amount
    x[:, 3] = np.clip(rng.normal(35, 12, n).round(), 0, 100)  # tenure
    x[:, 4] = np.clip(rng.normal(36, 9, n).round(), 0, 100)  # hours
    x[:, 5] = rng.integers(0, 61, n)  # days since contact
    x[:, 6] = np.minimum(rng.poisson(2, n), 20)  # products
    x[:, 7] = np.minimum(rng.poisson(0.4, n), 10)  # defaults
    x[:, 8] = np.clip(rng.normal(13, 3, n).round(), 0, 30)  # education
    x[:, 9] = np.clip(rng.normal(60, 15, n).round(1), 0, 200)  # score
    rows = np.arange(n)
    for names in ONE_HOT_GROUPS.values():
        cols = np.array([FEATURE_INDEX[name] for name in names])
        x[rows, cols[rng.integers(0, len(cols), n)]] = 1.0
    for name in INDEPENDENT_FLAGS:
        x[:, FEATURE_INDEX[name]] = rng.random(n) < 0.3
    return x


def sample_records(rng: np.random.Generator, n: int) -> list[dict[str, float]]:
    """n records as the API's JSON objects."""
    return [dict(zip(FEATURE_NAMES, map(float, row))) for row in sample_features(rng, n)]


def _labels(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A 5-class label from a noisy non-linear score: learnable, but not perfectly."""
    z = (
        0.04 * (x[:, 0] - 45)
        + 0.35 * np.log(x[:, 2] / 6000)
        - 0.6 * x[:, 7]
        + 0.03 * (x[:, 9] - 60)
        + 0.15 * x[:, 6] * (x[:, 3] > 30)
        + 0.5 * x[:, FEATURE_INDEX["feat31"]]
        - 0.4 * x[:, FEATURE_INDEX["feat33"]]
        + 0.3 * np.sin(x[:, 5] / 10)
        + 0.2 * x[:, FEATURE_INDEX["feat35"]]
        + rng.normal(0, 0.15, len(x))
    )
    edges = np.quantile(z, np.linspace(0, 1, N_CLASSES + 1)[1:-1])
    return np.searchsorted(edges, z).astype(np.int64)


def generate(n: int = DEFAULT_ROWS, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The default training set: features (n, 36) and labels 0-4."""
    rng = np.random.default_rng(seed)
    x = sample_features(rng, n)
    return x, _labels(rng, x)


def data_hash(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the training data as float64/int64 bytes: identifies what a model was trained on."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()
