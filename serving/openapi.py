"""The OpenAPI document served at /docs.json (read by the docs page at / and by schemathesis).

Generated from the same pydantic types that validate requests (the served model's Contract), so
the documented contract and the enforced one cannot drift apart.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

from pydantic import TypeAdapter
from typing_extensions import TypedDict

from .contract import Contract, allowed
from .model_card import ModelCard
from .explain import DEFAULT_TOP, MAX_EXPLAIN_RECORDS, batch_explanations_type, explanation_type
from .settings import Settings


class ErrorDetail(TypedDict):
    loc: list[Any]
    msg: str
    type: str


class Error(TypedDict):
    error: str
    detail: list[ErrorDetail]


REF = "#/components/schemas/{model}"


def _schemas(contract: Contract) -> dict[str, Any]:
    explanation = explanation_type(contract)
    explanations = batch_explanations_type(contract)
    schemas: dict[str, Any] = {}
    for name, adapter in {
        "Record": contract.record_adapter,
        "BatchRequest": contract.batch_adapter,
        "Prediction": TypeAdapter(contract.prediction_type),
        "BatchResponse": TypeAdapter(contract.batch_response_type),
        "Explanation": TypeAdapter(explanation),
        "BatchExplanations": TypeAdapter(explanations),
        "Error": TypeAdapter(Error),
        "ModelCard": TypeAdapter(ModelCard),
    }.items():
        schema = _openapi_3_0(adapter.json_schema(ref_template=REF))
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    for feature in contract.schema.features:
        prop = schemas["Record"]["properties"][feature.name]
        prop["title"] = feature.name  # pydantic's title would be "Petal Length (Cm)"
        expected = f"expected {allowed(feature)}" + ("; null when missing" if feature.nullable else "")
        prop["description"] = f"{feature.description}; {expected}" if feature.description else expected
    if contract.schema.is_classification:
        n_classes = contract.schema.n_classes
        for name in ("Prediction", "BatchPrediction"):  # (a batch's records: a Prediction and its request_id)
            schemas[name]["properties"]["probabilities"].update(minItems=n_classes, maxItems=n_classes)
    # /explain_batch takes the same records, fewer of them (its answers cost ~3 ms a record).
    explain_batch = copy.deepcopy(schemas["BatchRequest"])
    explain_batch["properties"]["instances"]["maxItems"] = min(MAX_EXPLAIN_RECORDS, contract.max_records)
    schemas["ExplainBatchRequest"] = {**explain_batch, "title": "ExplainBatchRequest"}
    return schemas


def _openapi_3_0(schema: Any) -> Any:
    """OpenAPI 3.0 spells JSON Schema's `anyOf: [X, {"type": "null"}]` (pydantic's, for a nullable
    feature or an optional field) as X with `nullable: true`; an enum must then list null itself."""
    if isinstance(schema, list):
        return [_openapi_3_0(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _openapi_3_0(value) for key, value in schema.items()}
    options = schema.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        (kind,) = [option for option in schema.pop("anyOf") if option != {"type": "null"}]
        if "enum" in kind:
            kind = {**kind, "enum": [*kind["enum"], None]}
        schema = {**schema, **kind, "nullable": True}
    return schema


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=schema)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON or empty body",
        401: "Missing or wrong API key (only when XGB_API_KEY is set)",
        405: "Method not allowed",
        408: "The body did not arrive within XGB_REQUEST_TIMEOUT_S",
        413: "Body over the size limit",
        415: "Content type is not application/json, or the body is compressed",
        422: "Invalid input: the detail names each field and problem",
        503: "Overloaded or not ready; retry after the Retry-After header's seconds",
        504: "The prediction did not finish within XGB_REQUEST_TIMEOUT_S",
    }
    return {str(c): {"description": text[c], "content": _json("Error")} for c in codes}


def _probe(summary: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}, "503": {"description": "Not ready"}}}}


def _explain_parameters(contract: Contract) -> list[dict[str, Any]]:
    schema = contract.schema
    parameters = [{
        "name": "top", "in": "query", "required": False,
        "description": f"how many of the largest contributions (by absolute value) `top` lists; default {min(DEFAULT_TOP, schema.n_features)}",
        "schema": {"type": "integer", "minimum": 1, "maximum": schema.n_features},
    }]  # fmt: skip
    if schema.is_classification:
        parameters.append({
            "name": "class", "in": "query", "required": False,
            "description": "the class to explain, by name or index; default: the predicted class",
            "schema": {"type": "string", "enum": sorted({*schema.class_names, *map(str, range(schema.n_classes))})},
        })  # fmt: skip
    return parameters


def _version_header(versions: Sequence[str]) -> dict[str, Any]:
    return {
        "name": "X-Model-Version", "in": "header", "required": False,
        "description": "answer with this loaded model version (for comparing a candidate with the primary, or debugging); "
                       "default: the model the rollout picks. A version that is not loaded is a 422.",
        "schema": {"type": "string", "enum": list(versions)},
    }  # fmt: skip


# serving/request_ids.py
REQUEST_ID_PARAMETER = {
    "name": "X-Request-ID", "in": "header", "required": False,
    "description": "your id for this request (1-128 of A-Z a-z 0-9 . _ : -), echoed in the answer and stored with captured "
                   "records; a batch's records are <id>-<index>. Absent or invalid: the service makes one.",
    # No pattern here: an id that does not fit is replaced, not refused, so any string is a valid request.
    "schema": {"type": "string"},
}  # fmt: skip
REQUEST_ID_ANSWERED = {"description": "the request's id: the one sent, if valid, else a new one", "required": True, "schema": {"type": "string"}}

API_KEY_SCHEME = {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The value of XGB_API_KEY"}


def build(contract: Contract, settings: Settings, versions: Sequence[str]) -> dict[str, Any]:
    """The document for the served model's contract; `versions`: the loaded models' versions, which
    the X-Model-Version header may pin."""
    errors = _errors(400, 401, 405, 408, 413, 415, 422, 503, 504)
    body = {"required": True, "content": _json("Record")}
    body["content"]["application/json"]["example"] = contract.schema.example
    doc = {
        "openapi": "3.0.2",
        "info": {
            "title": "XGBoost prediction API",
            "version": "1",
            "description": (
                f"Predicts one record of {contract.schema.n_features} features (`/predict`) or many (`/predict_batch`) with "
                f"an XGBoost {contract.schema.task} model, served by BentoML with adaptive micro-batching. Every error is "
                'JSON: `{"error": "...", "detail": [...]}`, naming the field and the problem.'
            ),
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Predict one record",
                    "operationId": "predict",
                    "requestBody": body,
                    "responses": {"200": {"description": "The prediction", "content": _json("Prediction")}, **errors},
                }
            },
            "/predict_batch": {
                "post": {
                    "summary": f"Predict up to {settings.max_batch_records} records, answered in order",
                    "operationId": "predict_batch",
                    "requestBody": {"required": True, "content": _json("BatchRequest")},
                    "responses": {"200": {"description": "One prediction per record", "content": _json("BatchResponse")}, **errors},
                }
            },
            "/metadata": {
                "get": {
                    "summary": "The served model: tag, created, task, features, class names, metrics, provenance",
                    "operationId": "metadata",
                    "responses": {"200": {"description": "The model card", "content": _json("ModelCard")}, **_errors(401)},
                }
            },
            "/explain": {
                "post": {
                    "summary": "Explain one record's prediction: exact TreeSHAP contributions in the model's margin space",
                    "operationId": "explain",
                    "parameters": _explain_parameters(contract),
                    "requestBody": body,
                    "responses": {"200": {"description": "The prediction and its explanation", "content": _json("Explanation")}, **errors},
                }
            },
            "/explain_batch": {
                "post": {
                    "summary": f"Explain up to {MAX_EXPLAIN_RECORDS} records, answered in order",
                    "operationId": "explain_batch",
                    "parameters": _explain_parameters(contract),
                    "requestBody": {"required": True, "content": _json("ExplainBatchRequest")},
                    "responses": {"200": {"description": "One explanation per record", "content": _json("BatchExplanations")}, **errors},
                }
            },
            "/healthz": _probe("Liveness (alias of /livez)"),
            "/livez": _probe("Liveness: the process answers"),
            "/readyz": _probe("Readiness: the model is loaded"),
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}}}},
        },
        "components": {"schemas": _schemas(contract)},
    }
    for path in ("/predict", "/predict_batch", "/explain", "/explain_batch"):
        operation = doc["paths"][path]["post"]
        operation["parameters"] = [*operation.get("parameters", []), _version_header(versions), REQUEST_ID_PARAMETER]
        operation["responses"]["200"]["headers"] = {"X-Request-ID": REQUEST_ID_ANSWERED}
    if settings.api_key:  # the docs page then shows "Authorize", and "Try it out" sends the key
        doc["components"]["securitySchemes"] = {"ApiKey": API_KEY_SCHEME}
        for path in ("/predict", "/predict_batch", "/explain", "/explain_batch"):
            doc["paths"][path]["post"]["security"] = [{"ApiKey": []}]
        doc["paths"]["/metadata"]["get"]["security"] = [{"ApiKey": []}]
    return doc
