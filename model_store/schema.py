"""A model's feature schema, as data: what a record is, what the model answers.

It is stored with the model (metadata "schema" in the BentoML store) and read back by the service,
which builds its validator, range check, OpenAPI document and metric labels from it. No code names
a feature: the embedded default dataset defines its own schema in model_store/dataset.py, a CSV's
schema is inferred from the CSV (train_export.py), an imported booster's from the booster.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal, get_args

Kind = Literal["continuous", "binary", "categorical"]
Task = Literal["binary", "multiclass", "regression"]
KINDS: tuple[str, ...] = get_args(Kind)
TASKS: tuple[str, ...] = get_args(Task)


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str  # the verbatim JSON key: spaces, '/', '.', upper case and non-ASCII are all legal
    kind: Kind
    # continuous/binary: allowed range (inclusive). Values outside it are plausible typos or unit
    # errors: the service counts them per feature and, with XGB_RANGE_CHECK=reject, refuses them.
    minimum: float | None = None
    maximum: float | None = None
    # categorical: the allowed values, in code order (the value XGBoost sees is the index here).
    categories: tuple[str, ...] = ()
    # JSON null accepted, and given to XGBoost as missing (NaN).
    nullable: bool = False
    description: str = ""

    @functools.cached_property
    def codes(self) -> dict[str, float]:
        """categorical: each allowed value's code, as the float XGBoost sees."""
        return {c: float(i) for i, c in enumerate(self.categories)}

    def in_range(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.kind == "categorical":
            return value in self.categories
        if self.kind == "binary":
            return value == 0.0 or value == 1.0
        return (self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)

    def to_dict(self) -> dict[str, Any]:
        """Stored form. BentoML's metadata refuses None: an absent bound is left out."""
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        d.update({key: value for key, value in (("minimum", self.minimum), ("maximum", self.maximum)) if value is not None})
        d.update(categories=list(self.categories), nullable=self.nullable, description=self.description)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Feature":
        feature = cls(
            name=str(d["name"]),
            kind=d["kind"],
            minimum=None if d.get("minimum") is None else float(d["minimum"]),
            maximum=None if d.get("maximum") is None else float(d["maximum"]),
            categories=tuple(str(c) for c in d.get("categories", ())),
            nullable=bool(d.get("nullable", False)),
            description=str(d.get("description", "")),
        )
        feature.check()
        return feature

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "categorical" and not self.categories:
            raise ValueError(f"feature {self.name!r} is categorical but has no categories")
        if self.kind != "categorical" and self.categories:
            raise ValueError(f"feature {self.name!r} is {self.kind} but has categories")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"feature {self.name!r} has duplicate categories")
        for bound in (self.minimum, self.maximum):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"feature {self.name!r}: range bound {bound!r} is not finite")


@dataclasses.dataclass(frozen=True)
class ModelSchema:
    task: Task
    features: tuple[Feature, ...]
    class_names: tuple[str, ...]  # () for regression; for classification, in the model's output order
    example: dict[str, Any]  # one record from the training data: the docs' and smoke tests' example

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if not self.features:
            raise ValueError("a model schema needs at least one feature")
        names = self.feature_names
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature name(s): {sorted({n for n in names if names.count(n) > 1})}")
        for f in self.features:
            f.check()
        expected_classes = {"binary": 2, "regression": 0}.get(self.task)
        if expected_classes is not None and len(self.class_names) != expected_classes:
            raise ValueError(f"a {self.task} model has {expected_classes} class names, got {list(self.class_names)}")
        if self.task == "multiclass" and len(self.class_names) < 3:
            raise ValueError(f"a multiclass model has at least 3 class names, got {list(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"duplicate class name(s) in {list(self.class_names)}")
        if list(self.example) != list(names):
            raise ValueError("the example record must have every feature, in order")
        bad = [f.name for f in self.features if not f.in_range(self.example[f.name])]
        if bad:
            raise ValueError(f"the example record's value of {', '.join(map(repr, bad))} is not allowed by the schema")

    # Derived once per schema (cached): encode() reads them for every request.
    @functools.cached_property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"

    @property
    def has_default_class_names(self) -> bool:
        """Class names "0".."k-1": answers carry the class index only (the seed's contract)."""
        return self.class_names == tuple(str(i) for i in range(self.n_classes))

    @functools.cached_property
    def records_are_float_rows(self) -> bool:
        """Every feature a number that must be present: a record is just a row of floats."""
        return all(f.kind != "categorical" and not f.nullable for f in self.features)

    def index(self, name: str) -> int:
        return self.feature_names.index(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "features": [f.to_dict() for f in self.features],
            "class_names": list(self.class_names),
            # BentoML's metadata refuses None: a null in the example is left out (from_dict puts it back).
            "example": {name: value for name, value in self.example.items() if value is not None},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSchema":
        features = tuple(Feature.from_dict(f) for f in d["features"])
        unknown = set(d["example"]) - {f.name for f in features}
        if unknown:
            raise ValueError(f"the example record has unknown field(s) {sorted(unknown)}")
        return cls(
            task=d["task"],
            features=features,
            class_names=tuple(str(c) for c in d.get("class_names", ())),
            example={f.name: d["example"].get(f.name) for f in features},
        )
