"""The prediction routes as BentoML's own clients see them: input specs from the contract, /schema.json.

`bentoml.SyncHTTPClient(url)` and `AsyncHTTPClient` read /schema.json and make one method per route
listed there: `client.predict(**record)` POSTs the record as /predict's JSON body, and
`client.predict_batch(instances=[...])` POSTs {"instances": [...]}, exactly what the fast path
answers; likewise `explain` and `explain_batch` (with the default ?class= and ?top=: the clients
send no query). So the service declares those four as BentoML APIs whose input specs are built here
from the model's schema (any field name: spaces, dots, non-ASCII), and /schema.json lists them and
not the internal `predict_rows`.

Pydantic field names cannot be just any string (a leading underscore, or a BaseModel attribute
such as "schema" or "copy"), so each feature is field f<i> with its name as the alias: the JSON
schema and the wire format use the names, BentoML passes the fields as f0..fN.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from typing_extensions import Annotated

from .contract import Contract, _field_type

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, populate_by_name=False)


def record_spec(contract: Contract) -> type[BaseModel]:
    fields: dict[str, Any] = {
        f"f{i}": (_field_type(feature), Field(alias=feature.name, description=feature.description or None))
        for i, feature in enumerate(contract.schema.features)
    }
    return create_model("Record", __config__=_STRICT, **fields)


def batch_spec(record: type[BaseModel], max_records: int, name: str = "BatchRequest") -> type[BaseModel]:
    instances = Annotated[list[record], Field(min_length=1, max_length=max_records)]  # type: ignore[valid-type]
    return create_model(name, __config__=_STRICT, instances=(instances, ...))


def record_from(fields: dict[str, Any], contract: Contract) -> dict[str, Any]:
    """BentoML's f0..fN keyword arguments -> the record, keyed by feature name."""
    return dict(zip(contract.schema.feature_names, fields.values()))


def client_schema(service_schema: dict[str, Any], hidden: str) -> dict[str, Any]:
    """BentoML's /schema.json without the internal route."""
    return {**service_schema, "routes": [route for route in service_schema["routes"] if route["name"] != hidden]}
