"""The request contract's fast batch parser never accepts what the strict validator refuses."""

from __future__ import annotations

import numpy as np
import pytest

WELL_FORMED = b'{"instances": [RECORD, RECORD]}'
BATCHES = [
    WELL_FORMED,
    b'{"instances": [RECORD], "extra": 1}',
    b'{"instances": []}',
    b'{"instances": RECORD}',
    b'[RECORD]',
    b'{"instances": [RECORD, {"feat1": true}]}',
    b'{"instances": [RECORD, 5]}',
    b'{"instances": [RECORD, null]}',
    b'{"instances": [RECORD, "RECORD"]}',
]

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("template", BATCHES)
@pytest.mark.parametrize(
    "feat1", ["55.0", "55", "true", '"55"', "null", "1e999", "NaN", "-Infinity", "123456789012345678901234567890", "[1]", "-0.0"]
)
def test_the_fast_batch_parser_accepts_only_what_the_strict_validator_accepts(template, feat1):
    import orjson

    from model_store.dataset import EXAMPLE_RECORD, SCHEMA
    from serving.contract import Contract
    from serving.settings import Settings

    contract = Contract(SCHEMA, Settings())
    record = orjson.dumps({**EXAMPLE_RECORD, "feat1": "__V__"}).replace(b'"__V__"', feat1.encode())
    body = template.replace(b'"RECORD"', b'"x"').replace(b"RECORD", record)
    fast = contract._parse_well_formed_batch(body)
    try:
        strict = np.array([contract._values(r) for r in contract.batch_adapter.validate_json(body)["instances"]])
    except Exception:
        strict = None
    if fast is not None:
        assert strict is not None, f"fast parser accepted what the validator refuses: {body[:120]!r}"
        np.testing.assert_array_equal(fast, strict)
    if template == WELL_FORMED and feat1 in ("55.0", "55", "-0.0", "123456789012345678901234567890"):
        # The common case must not fall back to the slower validator (a parser that always
        # declines would pass the check above).
        assert fast is not None, f"fast parser declined a well-formed batch: {body[:120]!r}"
        assert fast.shape == (2, len(SCHEMA.features))


def test_the_422_summary_says_how_many_problems_it_does_not_name():
    import orjson

    from model_store.dataset import EXAMPLE_RECORD, SCHEMA
    from serving.contract import Contract, InputError
    from serving.settings import Settings

    parse_record = Contract(SCHEMA, Settings()).parse_record
    with pytest.raises(InputError) as many:
        parse_record(orjson.dumps({"feat99": 1}))
    assert many.value.error == "invalid input: 37 problem(s) at feat1, feat2, feat3, feat4, feat5 and 32 more (see detail)"
    with pytest.raises(InputError) as few:
        parse_record(orjson.dumps({**EXAMPLE_RECORD, "feat1": "55", "feat99": 1}))
    assert few.value.error == "invalid input: 2 problem(s) at feat1, feat99"


RECORD_TWICE = {
    "a field twice": (b'{"feat1": 2, REST, "feat1": 99}', False, ["feat1"]),
    "with spaces before the colon": (b'{"feat1" : 2, REST, "feat1"  :  99}', False, ["feat1"]),
    "the second spelt with an escape": (b'{"feat1": 2, REST, "fea\\u00741": 99}', False, ["feat1"]),
    "in the third record of a batch": (b'{"instances": [RECORD, RECORD, {"feat1": 2, REST, "feat1": 3}]}', True, ["instances", 2, "feat1"]),
    "instances twice": (b'{"instances": [RECORD], "instances": [RECORD]}', True, ["instances"]),
    # the parsers keep the last "instances": its first record is instances.0, not the third object seen
    "in the kept one of two instances": (b'{"instances": [RECORD, RECORD], "instances": [{"feat1": 2, REST, "feat1": 3}]}', True,
                                         ["instances", 0, "feat1"]),
}


@pytest.mark.parametrize("template,batch,loc", RECORD_TWICE.values(), ids=RECORD_TWICE)
def test_a_field_given_twice_is_refused_naming_it(template, batch, loc):
    """JSON parsers keep the last of a repeated name: the model would silently get one of two values."""
    import orjson

    from model_store.dataset import EXAMPLE_RECORD, SCHEMA
    from serving.contract import Contract, InputError
    from serving.settings import Settings

    contract = Contract(SCHEMA, Settings())
    rest = orjson.dumps({k: v for k, v in EXAMPLE_RECORD.items() if k != "feat1"})[1:-1]
    body = template.replace(b"REST", rest).replace(b"RECORD", orjson.dumps(EXAMPLE_RECORD))
    with pytest.raises(InputError) as refused:
        (contract.parse_batch if batch else contract.parse_record)(body)
    assert refused.value.status == 422
    assert {"loc": loc, "msg": "given more than once: a field may appear once", "type": "repeated_field"} in refused.value.detail


def test_many_repeats_are_summed_up_like_any_other_invalid_input():
    import orjson

    from model_store.dataset import EXAMPLE_RECORD, SCHEMA
    from serving.contract import Contract, InputError
    from serving.settings import Settings

    record = orjson.dumps({**EXAMPLE_RECORD, "feat1": 2})[:-1] + b', "feat1": 3}'
    with pytest.raises(InputError) as refused:
        Contract(SCHEMA, Settings()).parse_batch(b'{"instances": [' + b", ".join([record] * 7) + b"]}")
    assert refused.value.error == ("invalid input: 7 problem(s) at instances.0.feat1, instances.1.feat1, instances.2.feat1, "
                                   "instances.3.feat1, instances.4.feat1 and 2 more (see detail)")


def test_colons_and_escapes_inside_names_and_values_are_not_taken_for_a_repeat():
    import json

    from model_store.schema import Feature, ModelSchema
    from serving.contract import Contract
    from serving.settings import Settings

    schema = ModelSchema(task="binary", features=(Feature("time: hh:mm", "categorical", categories=("09:30", "12:00", "zürich")),
                                                  Feature("x", "continuous")),  # fmt: skip
                         class_names=("no", "yes"), example={"time: hh:mm": "09:30", "x": 1.0})
    contract = Contract(schema, Settings())
    records = [{"time: hh:mm": t, "x": 1.5} for t in ("09:30", "12:00", "zürich")]
    for ascii_only in (True, False):  # Python's json escapes non-ASCII text by default
        assert contract.parse_record(json.dumps(records[0], ensure_ascii=ascii_only).encode()).shape == (1, 2)
        assert contract.parse_batch(json.dumps({"instances": records}, ensure_ascii=ascii_only).encode()).shape == (3, 2)
