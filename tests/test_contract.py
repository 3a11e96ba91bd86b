"""The request contract's fast batch parser never accepts what the strict validator refuses."""

from __future__ import annotations

import numpy as np
import pytest

BATCHES = [
    b'{"instances": [RECORD, RECORD]}',
    b'{"instances": [RECORD], "extra": 1}',
    b'{"instances": []}',
    b'{"instances": RECORD}',
    b'[RECORD]',
    b'{"instances": [RECORD, {"feat1": true}]}',
    b'{"instances": [RECORD, 5]}',
    b'{"instances": [RECORD, null]}',
    b'{"instances": [RECORD, "RECORD"]}',
]


@pytest.mark.parametrize("template", BATCHES)
@pytest.mark.parametrize(
    "feat1", ["55.0", "55", "true", '"55"', "null", "1e999", "NaN", "-Infinity", "123456789012345678901234567890", "[1]", "-0.0"]
)
def test_the_fast_batch_parser_accepts_only_what_the_strict_validator_accepts(template, feat1):
    import orjson

    from model_store import EXAMPLE_RECORD
    from serving import contract

    record = orjson.dumps({**EXAMPLE_RECORD, "feat1": "__V__"}).replace(b'"__V__"', feat1.encode())
    body = template.replace(b'"RECORD"', b'"x"').replace(b"RECORD", record)
    fast = contract._parse_well_formed_batch(body, 5000)
    adapter = contract.make_batch_adapter(5000)
    try:
        strict = np.array([contract._record_values(r) for r in adapter.validate_json(body)["instances"]])
    except Exception:
        strict = None
    if fast is not None:
        assert strict is not None, f"fast parser accepted what the validator refuses: {body[:120]!r}"
        np.testing.assert_array_equal(fast, strict)
