"""The embedded default dataset: synthetic, generated deterministically (nothing is downloaded).

It defines the default model's schema (SCHEMA), since the schema is this dataset's definition:
`feat1` ... `feat36`, the names of the original API. `feat1`-`feat10` are continuous measurements,
`feat11`-`feat36` are 0/1 indicators. The service never reads this module: it reads the schema
stored with the model. The same generator gives the tests realistic records for the default model.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .schema import Feature, ModelSchema


def _continuous(name: str, lo: float, hi: float, description: str) -> Feature:
    return Feature(name, "continuous", lo, hi, description=description)


def _binary(name: str, description: str) -> Feature:
    return Feature(name, "binary", 0.0, 1.0, description=description)


# One-hot groups among the binary features: exactly one member is 1 in generated data.
ONE_HOT_GROUPS: dict[str, tuple[str, ...]] = {
    "region": tuple(f"feat{i}" for i in range(11, 29)),  # 18 regions
    "channel": ("feat29", "feat30", "feat31"),
    "plan": ("feat32", "feat33", "feat34"),
}
INDEPENDENT_FLAGS = ("feat35", "feat36")

_GROUP_OF = {name: group for group, names in ONE_HOT_GROUPS.items() for name in names}

SCHEMA = ModelSchema(
    task="multiclass",
    features=(
        _continuous("feat1", 0, 120, "age in years"),
        _continuous("feat2", 0, 50, "number of dependents"),
        _continuous("feat3", 0, 1_000_000, "monthly amount"),
        _continuous("feat4", 0, 100, "tenure in months"),
        _continuous("feat5", 0, 100, "weekly hours"),
        _continuous("feat6", 0, 100, "days since last contact"),
        _continuous("feat7", 0, 50, "open products"),
        _continuous("feat8", 0, 50, "past defaults"),
        _continuous("feat9", 0, 100, "years of education"),
        _continuous("feat10", 0, 200, "score"),
        *(_binary(f"feat{i}", f"one-hot '{_GROUP_OF[f'feat{i}']}'") for i in range(11, 35)),
        *(_binary(name, "independent flag") for name in INDEPENDENT_FLAGS),
    ),
    class_names=("0", "1", "2", "3", "4"),
    # The seed's example request, verbatim.
    example={
        "feat1": 55.0, "feat2": 2.0, "feat3": 6750.0, "feat4": 33.0, "feat5": 32.0,
        "feat6": 22.0, "feat7": 2.0, "feat8": 0.0, "feat9": 14.0, "feat10": 66.0,
        **{f"feat{i}": 0.0 for i in range(11, 37)},
        "feat28": 1.0, "feat31": 1.0, "feat34": 1.0,
    },
)  # fmt: skip

# Shorthands for the generator and the default model's tests.
FEATURE_NAMES = SCHEMA.feature_names
FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
N_FEATURES = SCHEMA.n_features
N_CLASSES = SCHEMA.n_classes
EXAMPLE_RECORD = SCHEMA.example


def legacy_fingerprint() -> list[dict[str, object]]:
    """What a model stored before schemas travelled with models kept instead (metadata "feature_schema"):
    such a model was trained on this dataset's features, so it is served with SCHEMA."""
    return [{"name": f.name, "kind": f.kind, "min": f.minimum, "max": f.maximum} for f in SCHEMA.features]

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
