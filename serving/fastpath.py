"""/predict and /predict_batch, answered by a raw ASGI middleware in front of BentoML's router.

BentoML's own API route costs more per request than the prediction itself (see
bentoml_internals.py). This middleware sits inside BentoML's metrics, timeout and concurrency
middlewares (so requests are still counted, timed and limited) and answers the two prediction
routes directly: read the body with a size limit, validate it with pydantic-core, send single
records through BentoML's adaptive batching, and write the JSON with orjson.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Awaitable, Callable

import anyio.to_thread
import numpy as np
import orjson
from bentoml.exceptions import ServiceUnavailable

from . import bentoml_internals, metrics, openapi
from .contract import InputError, make_batch_adapter, out_of_range, parse_batch, parse_record, predicted, prediction_bodies, range_error
from .settings import Settings

logger = logging.getLogger("xgb_service")

BATCHED_API = "predict_rows"  # the batchable BentoML API the single-record path feeds
RETRY_AFTER_SECONDS = b"1"
_SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]


class PredictionRoutes:
    def __init__(self, app: Callable[..., Awaitable[None]], settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.api_key = settings.api_key.encode()
        self.batch_adapter = make_batch_adapter(settings.max_batch_records)
        self.routes: dict[str, tuple[Callable[[bytes], Awaitable[bytes]], int]] = {
            "/predict": (self.predict, settings.max_predict_bytes),
            "/predict_batch": (self.predict_batch, settings.max_batch_bytes),
        }
        self.openapi_document = openapi.document(settings)
        self.inflight = 0
        self._batched: Callable[[np.ndarray], Awaitable[np.ndarray]] | None = None
        self._service: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            if scope["type"] == "http" and scope["path"] == "/docs.json":
                return await respond(send, 200, self.openapi_document)
            if scope["type"] == "http" and scope["path"] == f"/{BATCHED_API}":
                # Internal: reachable only through /predict, which validates what it sends.
                return await respond(send, 404, InputError(404, "not found").body())
            return await self.app(scope, receive, send_with_security_headers(send))
        if self._service is None:
            factory = bentoml_internals.find_app_factory(scope["app"], BATCHED_API)
            self._batched = bentoml_internals.batch_caller(factory, BATCHED_API)
            self._service = bentoml_internals.service_instance(factory)
            bentoml_internals.bind_api_once(self._service, BATCHED_API)
            bentoml_internals.dispatch_without_holding(factory, BATCHED_API)
        handler, max_bytes = route
        self.inflight += 1
        try:
            self.check_request(scope)
            body = await read_body(receive, max_bytes, scope)
            if self.inflight > self.settings.max_inflight:
                raise ServiceUnavailable("too many predictions in flight")
            payload = await handler(body)
        except InputError as exc:
            metrics.rejected.labels(reason=_reason(exc.status)).inc()
            headers = [(b"www-authenticate", b"API-Key")] if exc.status == 401 else []
            if exc.status == 405:
                headers.append((b"allow", b"POST"))
            return await respond(send, exc.status, exc.body(), headers)
        except ServiceUnavailable:
            metrics.rejected.labels(reason="overloaded").inc()
            body = orjson.dumps({"error": "overloaded: the prediction queue is full, retry shortly", "detail": []})
            return await respond(send, 503, body, [(b"retry-after", RETRY_AFTER_SECONDS)])
        except Exception:
            logger.exception("prediction failed")
            body = orjson.dumps({"error": "internal error: the prediction failed; see the server log", "detail": []})
            return await respond(send, 500, body)
        finally:
            self.inflight -= 1
        await respond(send, 200, payload)

    def check_request(self, scope: dict[str, Any]) -> None:
        if scope["method"] != "POST":
            raise InputError(405, f"method {scope['method']} not allowed on {scope['path']}: use POST")
        headers = dict(scope["headers"])
        if self.api_key and not hmac.compare_digest(headers.get(b"x-api-key", b""), self.api_key):
            raise InputError(401, "missing or wrong API key: send it in the X-API-Key header")
        content_type = headers.get(b"content-type")
        if content_type is not None and content_type.split(b";")[0].strip().lower() != b"application/json":
            raise InputError(415, f"unsupported content type {content_type.decode('latin-1')[:100]!r}: send application/json")

    async def predict(self, body: bytes) -> bytes:
        rows = parse_record(body)
        self.check_ranges(rows, batch=False)
        assert self._batched is not None
        proba = await self._batched(rows)
        return orjson.dumps(self.answer(proba)[0])

    async def predict_batch(self, body: bytes) -> bytes:
        rows = parse_batch(body, self.batch_adapter, self.settings.max_batch_records)
        self.check_ranges(rows, batch=True)
        # Already a batch: straight to the model, off the event loop.
        proba = await anyio.to_thread.run_sync(self._service.bundle.predict_proba, rows)
        return orjson.dumps({"predictions": self.answer(proba)})

    def check_ranges(self, rows: np.ndarray, batch: bool) -> None:
        if self.settings.range_check == "off":
            return
        mask = out_of_range(rows)
        if mask.any():
            metrics.observe_out_of_range(mask)
            if self.settings.range_check == "reject":
                raise range_error(rows, mask, batch)

    def answer(self, proba: np.ndarray) -> list[dict[str, Any]]:
        bundle = self._service.bundle
        classes, confidence = predicted(proba)
        metrics.observe_predictions(classes, confidence, bundle.class_names)
        return prediction_bodies(proba, classes, confidence, bundle.version)


def _reason(status: int) -> str:
    return {401: "unauthorized", 413: "too_large"}.get(status, "invalid_input")


async def read_body(receive: Callable, max_bytes: int, scope: dict[str, Any]) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise InputError(413, f"request body of {int(value)} bytes is over the {max_bytes}-byte limit of {scope['path']}")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InputError(400, "client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise InputError(413, f"request body is over the {max_bytes}-byte limit of {scope['path']}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if not body:
        raise InputError(400, "empty body: send a JSON object")
    return body


def send_with_security_headers(send: Callable) -> Callable:
    """BentoML's own routes (probes, metrics, docs UI) get the same security headers as ours."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *_SECURITY_HEADERS]
        await send(message)

    return wrapped


async def respond(send: Callable, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *_SECURITY_HEADERS]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
