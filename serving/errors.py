"""Every error the service answers, in one place: the one error type, its status mapping and headers.

    InputError(status, error, detail)   what every refusal raises (validation, auth, size, timeouts):
                                        {"error": "...", "detail": [{"loc", "msg", "type"}, ...]}
    headers_for(exc)                    the headers a refusal's status needs (401 challenge, 405 Allow,
                                        Connection: close for a body left unread)
    rejection_reason(status)            its `reason` label in xgb_rejected_requests_total
    overloaded(), internal_error(), timed_out_answer()
                                        503 (+ Retry-After), 500, 408/504 bodies
    bentoml_route_sender(scope, send)   BentoML's own routes' plain-text 404/405 as the same JSON errors
    respond(send, status, body, ...)    one response, in one write (uvicorn_internals.send_response)
"""

from __future__ import annotations

from typing import Any, Callable

import orjson

from . import uvicorn_internals

RETRY_AFTER_SECONDS = b"1"
API_KEY_CHALLENGE = (b"www-authenticate", b"API-Key")  # with every 401
NOSNIFF = (b"x-content-type-options", b"nosniff")
SECURITY_HEADERS = [NOSNIFF, (b"cache-control", b"no-store")]
RETRY_AFTER = ((b"retry-after", RETRY_AFTER_SECONDS),)
_REASONS = {401: "unauthorized", 413: "too_large", 408: "timeout", 504: "timeout"}


class InputError(Exception):
    """A request the service refuses: status code, a summary, and per-field details."""

    def __init__(self, status: int, error: str, detail: list[dict[str, Any]] | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail or []

    def body(self) -> bytes:
        return orjson.dumps({"error": self.error, "detail": self.detail})


def rejection_reason(status: int) -> str:
    """The reason label of xgb_rejected_requests_total for a refusal's status."""
    return _REASONS.get(status, "invalid_input")


def headers_for(exc: InputError, allowed: bytes = b"POST") -> list[tuple[bytes, bytes]]:
    """The headers a refusal's status needs, beyond content type, length and cache control."""
    headers = [API_KEY_CHALLENGE] if exc.status == 401 else []
    if exc.status == 405:
        headers.append((b"allow", allowed))
    if getattr(exc, "close_connection", False):  # body.BodyTooLarge with part of the body unread
        headers.append((b"connection", b"close"))
    return headers


def not_found(scope: dict[str, Any]) -> InputError:
    return InputError(404, f"not found: {scope['path'][:200]}")


def not_allowed(scope: dict[str, Any], allowed: str = "GET") -> InputError:
    return InputError(405, f"method {scope['method']} not allowed on {scope['path'][:200]}: use {allowed}")


def overloaded() -> bytes:
    return orjson.dumps({"error": "overloaded: the prediction queue is full, retry shortly", "detail": []})


def internal_error() -> bytes:
    return orjson.dumps({"error": "internal error: the prediction failed; see the server log", "detail": []})


def timed_out_answer(reading_body: bool, timeout_s: float) -> tuple[int, bytes]:
    """408 for a client still trickling its body at the deadline, 504 for a prediction not done by then."""
    if reading_body:
        return 408, InputError(408, f"request body not received within {timeout_s:g} s").body()
    return 504, InputError(504, f"the prediction did not finish within {timeout_s:g} s (XGB_REQUEST_TIMEOUT_S)").body()


def bentoml_route_sender(scope: dict[str, Any], send: Callable) -> Callable:
    """BentoML's own routes (probes, metrics) get the same security headers as ours, and its router's
    plain-text "Not Found" and "Method Not Allowed" become our JSON errors, like every other error."""
    replaced = False

    async def wrapped(message: dict[str, Any]) -> None:
        nonlocal replaced
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", ()))
            if message["status"] in (404, 405) and not headers.get(b"content-type", b"").startswith(b"application/json"):
                replaced = True
                if message["status"] == 404:
                    return await respond(send, 404, not_found(scope).body())
                allowed = headers.get(b"allow", b"GET")
                return await respond(send, 405, not_allowed(scope, allowed.decode("latin-1")).body(), [(b"allow", allowed)])
            message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
        elif replaced:
            return  # the body of the response replaced above
        await send(message)

    return wrapped


async def respond(send: Callable, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]] | None = None,
                  content_type: bytes = b"application/json", cache_control: bytes = b"no-store") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), NOSNIFF, (b"cache-control", cache_control)]
    if extra_headers:
        headers.extend(extra_headers)
    start = {"type": "http.response.start", "status": status, "headers": headers}
    await uvicorn_internals.send_response(send, start, {"type": "http.response.body", "body": body})
