"""The feature schema: the one definition of what a record is.

Training, the service's validation, the tests and the load tests all read it from here, so a
feature cannot be added, renamed or re-ordered in one place and not the others.

The names and the seed's example record come from the original API (`feat1` ... `feat36`):
`feat1`-`feat10` are continuous measurements, `feat11`-`feat36` are 0/1 indicators.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Kind = Literal["continuous", "binary"]


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    kind: Kind
    # Allowed range (inclusive). Values outside it are plausible typos or unit errors: the service
    # counts them per feature and, with XGB_RANGE_CHECK=reject, refuses them.
    minimum: float
    maximum: float
    description: str = ""

    def in_range(self, value: float) -> bool:
        if self.kind == "binary":
            return value == 0.0 or value == 1.0
        return self.minimum <= value <= self.maximum


def _continuous(name: str, lo: float, hi: float, description: str) -> Feature:
    return Feature(name, "continuous", lo, hi, description)


def _binary(name: str, description: str) -> Feature:
    return Feature(name, "binary", 0.0, 1.0, description)


# One-hot groups among the binary features: exactly one member is 1 in generated data.
ONE_HOT_GROUPS: dict[str, tuple[str, ...]] = {
    "region": tuple(f"feat{i}" for i in range(11, 29)),  # 18 regions
    "channel": ("feat29", "feat30", "feat31"),
    "plan": ("feat32", "feat33", "feat34"),
}
INDEPENDENT_FLAGS = ("feat35", "feat36")

_GROUP_OF = {name: group for group, names in ONE_HOT_GROUPS.items() for name in names}

FEATURES: tuple[Feature, ...] = (
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
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
N_FEATURES = len(FEATURES)

CLASS_NAMES: tuple[str, ...] = ("0", "1", "2", "3", "4")
N_CLASSES = len(CLASS_NAMES)

# The seed's example request, verbatim: docs, tests and smoke checks use it.
EXAMPLE_RECORD: dict[str, float] = {
    "feat1": 55.0, "feat2": 2.0, "feat3": 6750.0, "feat4": 33.0, "feat5": 32.0,
    "feat6": 22.0, "feat7": 2.0, "feat8": 0.0, "feat9": 14.0, "feat10": 66.0,
    **{f"feat{i}": 0.0 for i in range(11, 37)},
    "feat28": 1.0, "feat31": 1.0, "feat34": 1.0,
}  # fmt: skip


def schema_fingerprint() -> list[dict[str, object]]:
    """The schema as stored in model metadata; the service refuses a model whose copy differs."""
    return [
        {"name": f.name, "kind": f.kind, "min": f.minimum, "max": f.maximum} for f in FEATURES
    ]


assert N_FEATURES == 36 and FEATURE_NAMES == tuple(f"feat{i}" for i in range(1, 37))
