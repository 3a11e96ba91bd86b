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
