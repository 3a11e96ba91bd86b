"""The per-model schema as data, and the Contract the service builds from it (in-process)."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from model_store import ModelSchema
from model_store.bundle import encode
from model_store.dataset import SCHEMA
from model_store.schema import Feature
from serving.contract import Contract, InputError
from serving.settings import Settings

ODD = ModelSchema(
    task="multiclass",
    features=(
        Feature("petal length (cm)", "continuous", 0.0, 10.0),
        Feature("ratio a/b", "continuous", -1.0, 1.0, nullable=True),
        Feature("colour.name", "categorical", categories=("blue", "green", "rouge-é")),
        Feature("Größe", "binary", 0.0, 1.0),
    ),
    class_names=("setosa", "versicolor", "virginica"),
    example={"petal length (cm)": 1.5, "ratio a/b": None, "colour.name": "rouge-é", "Größe": 1.0},
)

pytestmark = pytest.mark.fast


def test_a_schema_round_trips_through_its_stored_form():
    for schema in (SCHEMA, ODD):
        stored = orjson.loads(orjson.dumps(schema.to_dict()))  # what the store keeps is plain JSON-like data
        assert ModelSchema.from_dict(stored) == schema


@pytest.mark.parametrize(
    "change,message",
    [
        ({"class_names": ["a", "a", "b"]}, "duplicate class"),
        ({"task": "ranking"}, "task 'ranking'"),
        ({"example": {"petal length (cm)": 1.5}}, "not allowed by the schema"),
        ({"example": {**ODD.example, "x": 1}}, "unknown field"),
    ],
)
def test_an_inconsistent_schema_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        ModelSchema.from_dict({**ODD.to_dict(), **change})


def test_the_contract_takes_any_column_name_and_encodes_categories_and_nulls():
    contract = Contract(ODD, Settings())
    rows = contract.parse_batch(orjson.dumps({"instances": [ODD.example, {**ODD.example, "ratio a/b": 0.5, "colour.name": "blue"}]}))
    assert rows.shape == (2, 4)
    assert math.isnan(rows[0, 1]) and rows[0, 2] == 2.0 and rows[1, 1] == 0.5 and rows[1, 2] == 0.0
    np.testing.assert_array_equal(contract.parse_record(orjson.dumps(ODD.example)), rows[:1])
    assert not contract.out_of_range(rows).any(), "a missing value is not out of range"


@pytest.mark.parametrize(
    "change,loc,text",
    [
        ({"colour.name": "red"}, ["colour.name"], "'blue', 'green' or 'rouge-é'"),
        ({"petal length (cm)": None}, ["petal length (cm)"], "number"),
        ({"Größe": "1"}, ["Größe"], "number"),
        ({"ratio a/b": "x"}, ["ratio a/b"], ""),
    ],
    ids=["unknown category", "null on a non-nullable feature", "string for a number", "string on a nullable number"],
)
def test_bad_values_are_422s_naming_the_field(change, loc, text):
    contract = Contract(ODD, Settings())
    for parse, body, prefix in (
        (contract.parse_record, {**ODD.example, **change}, []),
        (contract.parse_batch, {"instances": [ODD.example, {**ODD.example, **change}]}, ["instances", 1]),
    ):
        with pytest.raises(InputError) as caught:
            parse(orjson.dumps(body))
        assert caught.value.status == 422
        assert any(d["loc"][: len(prefix) + 1] == prefix + loc and text in d["msg"] for d in caught.value.detail), caught.value.detail


def test_missing_and_unknown_fields_are_named():
    contract = Contract(ODD, Settings())
    body = {k: v for k, v in ODD.example.items() if k != "ratio a/b"} | {"ratio a.b": 1}
    with pytest.raises(InputError) as caught:
        contract.parse_record(orjson.dumps(body))
    assert {tuple(d["loc"]) for d in caught.value.detail} == {("ratio a/b",), ("ratio a.b",)}


def test_answers_carry_the_class_name_when_classes_are_named():
    proba = np.array([[0.1, 0.7, 0.2]])
    named = Contract(ODD, Settings()).class_bodies(proba, np.array([1]), np.array([0.7]), "v1")
    assert named == [{"predicted_class": 1, "confidence": 0.7, "model_version": "v1", "features_used": 4,
                      "probabilities": [0.1, 0.7, 0.2], "predicted_label": "versicolor"}]  # fmt: skip
    default = Contract(SCHEMA, Settings()).class_bodies(np.full((1, 5), 0.2), np.array([0]), np.array([0.2]), "v1")
    assert list(default[0]) == ["predicted_class", "confidence", "model_version", "features_used", "probabilities"]


def test_regression_answers_are_float32s_shortest_decimal():
    schema = ModelSchema("regression", (Feature("x", "continuous", 0.0, 1.0),), (), {"x": 0.5})
    values = np.array([12.3, 1e-8, -250000.12], dtype=np.float32)
    bodies = Contract(schema, Settings()).value_bodies(values, "v1")
    assert [b["prediction"] for b in bodies] == [12.3, 1e-8, -250000.12]
    assert np.array([b["prediction"] for b in bodies], dtype=np.float32).tolist() == values.tolist()
    assert bodies[0] == {"prediction": 12.3, "model_version": "v1", "features_used": 1}


def test_encode_matches_the_contract_for_validated_records():
    records = [ODD.example, {**ODD.example, "colour.name": "green", "ratio a/b": -0.25}]
    np.testing.assert_array_equal(encode(ODD, records), Contract(ODD, Settings()).parse_batch(orjson.dumps({"instances": records})))


def test_the_openapi_record_is_the_schemas_in_openapi_3_0_terms():
    from serving import openapi

    odd = ModelSchema(ODD.task, (*ODD.features[:2], Feature("colour.name", "categorical", categories=("blue", "rouge-é"), nullable=True)),
                      ODD.class_names, {**dict(list(ODD.example.items())[:2]), "colour.name": "blue"})  # fmt: skip
    record = openapi.build(Contract(odd, Settings()), Settings(), ["v1"])["components"]["schemas"]["Record"]
    props = record["properties"]
    assert list(props) == list(odd.feature_names) and [p["title"] for p in props.values()] == list(odd.feature_names)
    assert props["petal length (cm)"]["type"] == "number" and "nullable" not in props["petal length (cm)"]
    assert props["ratio a/b"] == {"title": "ratio a/b", "type": "number", "nullable": True, "description": "expected between -1 and 1; null when missing"}
    assert props["colour.name"]["enum"] == ["blue", "rouge-é", None] and props["colour.name"]["nullable"] is True
    assert not any("anyOf" in p for p in props.values())
