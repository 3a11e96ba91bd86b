"""Reading a prediction request's body from ASGI, with a size limit that every client can see.

A body over the limit is refused with 413, but not before the rest of it has been read and
dropped (bounded in bytes and time), the way nginx's lingering close does it. Closing a
connection whose client is still sending makes the kernel reset it, and a client that writes its
whole body before reading (Python's urllib, requests when it sends `Connection: close`) then gets
ConnectionResetError or BrokenPipeError instead of the 413. Past the bounds the connection is
closed anyway: a client cannot hold a request slot for longer than LINGER_SECONDS.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from .contract import InputError

# Enough for any honest client on a real network to finish sending a body a few times our limits.
LINGER_BYTES = 64 * 1024 * 1024
LINGER_SECONDS = 2.0


class BodyTooLarge(InputError):
    """413; close_connection when part of the body is still unread (the connection cannot be reused)."""

    def __init__(self, error: str, close_connection: bool) -> None:
        super().__init__(413, error)
        self.close_connection = close_connection


async def read_body(receive: Callable, max_bytes: int, scope: dict[str, Any]) -> bytes:
    """The whole body; 413 over max_bytes (with or without Content-Length), 400 when empty or cut off."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            error = f"request body of {int(value)} bytes is over the {max_bytes}-byte limit of {scope['path']}"
            raise BodyTooLarge(error, await discard_rest(receive, scope, body_asked_for=False))
    message = await receive()  # a small body is all here already; a client that sent Expect gets its 100 now
    body = _chunk(message)
    if message.get("more_body", False):
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            chunks.append(_chunk(message))
            size += len(chunks[-1])
            if size > max_bytes:
                break
        body = b"".join(chunks)
    if len(body) > max_bytes:
        error = f"request body is over the {max_bytes}-byte limit of {scope['path']}"
        raise BodyTooLarge(error, message.get("more_body", False) and await discard_rest(receive, scope, body_asked_for=True))
    if not body:
        raise InputError(400, "empty body: send a JSON object")
    return body


def _chunk(message: dict[str, Any]) -> bytes:
    if message["type"] == "http.disconnect":
        raise InputError(400, "client disconnected before sending the whole body")
    return message.get("body", b"")


async def discard_rest(receive: Callable, scope: dict[str, Any], body_asked_for: bool) -> bool:
    """Read and drop the rest of a refused body, up to LINGER_BYTES or LINGER_SECONDS.

    True when some of it may still be unread, so the answer must close the connection. A client
    that waits for `100 Continue` and has not been asked for its body yet has not sent it: asking
    for it (receive() would send the 100) only to drop it would be waste, so the answer goes at
    once and closes. Once a receive() has sent the 100 (a chunked body has no length to refuse it
    by), the client is sending, and closing on it would reset the connection: curl sends
    `Expect: 100-continue` for bodies over 1 MiB and then lost the 413.
    """
    if not body_asked_for and (b"expect", b"100-continue") in scope["headers"]:
        return True
    dropped = 0
    try:
        async with asyncio.timeout(LINGER_SECONDS):
            while dropped <= LINGER_BYTES:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return True
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return False
    except TimeoutError:
        pass
    return True
