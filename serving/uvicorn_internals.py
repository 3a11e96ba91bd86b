"""The one place that reaches into uvicorn (what BentoML serves with) and the listening socket.

| reach                                              | used by                | checked at start             | public fallback                                |
|----------------------------------------------------|------------------------|------------------------------|------------------------------------------------|
| httptools_impl.RequestResponseCycle.transport      | send_response()        | check(): the class and its   | two send() calls, as any ASGI server           |
|   (swapped while one response is sent)             |                        |   `transport` slot           |   (`type(cycle) is not RequestResponseCycle`)  |
| protocols.http.auto.AutoHTTPProtocol (replaced by  | bound_slow_headers()   | check(): HttpToolsProtocol   | uvicorn's own protocol, unbounded: a warning   |
|   BoundedHeaders, before uvicorn's Config.load)    |                        |   has the methods overridden | names the missing check (put a proxy in front) |
| HttpToolsProtocol.timeout_keep_alive_task /        | BoundedHeaders         | (same)                       | (same)                                         |
|   timeout_keep_alive_handler (the idle timer)      |                        |                              |                                                |
| BentoML worker's `--fd N` / `--backlog` argv       | own_listening_socket() | the fd is a TCP socket       | the arbiter's shared socket (returns False)    |

Pinned: uvicorn==0.54.0 (requirements.in); serving/pins.py warns at start when another is installed.

send_response: uvicorn's httptools protocol writes a response's status line and headers with one
write() and its body with another, and uvloop sends each at once: two loopback segments, two
wake-ups of the client, per prediction. send_response() has uvicorn write both in one.

own_listening_socket: BentoML's arbiter binds one listening socket and every worker accepts from
it; whichever worker wakes first takes all pending connections, so keep-alive clients end up
unevenly spread and the busiest worker sets the tail latency (docs/performance.md has the split
measured). Each worker gets its own SO_REUSEPORT socket on the same address, as nginx's
`reuseport` does, so the kernel spreads new connections evenly.

bound_slow_headers: uvicorn arms no timer while a request's headers arrive, nor on a new
connection before its first byte (its keep-alive timer only runs between requests), so clients
that open connections and send their headers a byte at a time hold them open indefinitely.
BoundedHeaders, uvicorn's own httptools protocol with two timers more, closes
  - a new connection that sends nothing within XGB_IDLE_TIMEOUT_S (uvicorn's keep-alive timer,
    armed at connect as well as between requests), and
  - a request whose headers are not complete XGB_HEADER_TIMEOUT_S after its first byte, with a
    408 JSON answer (as nginx's client_header_timeout).
A keep-alive connection idle between requests is uvicorn's business as before (BentoML's
`--timeout-keep-alive`, 5 s by default); a slow body is serving/deadlines.py's (408 at
XGB_REQUEST_TIMEOUT_S).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, Callable

import orjson
import uvicorn.protocols.http.auto
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

logger = logging.getLogger("xgb_service")

UVICORN_VERSION = "0.54.0"
_OVERRIDDEN = ("connection_made", "connection_lost", "on_message_begin", "on_headers_complete", "timeout_keep_alive_handler")


class UvicornInternalsChanged(RuntimeError):
    """uvicorn no longer looks the way this module expects: re-check it against the new version."""


def check() -> None:
    """Raise UvicornInternalsChanged naming what moved (tests and bound_slow_headers call it)."""
    if "transport" not in RequestResponseCycle.__init__.__code__.co_names:
        raise UvicornInternalsChanged("uvicorn's RequestResponseCycle no longer keeps its transport as .transport")
    missing = [name for name in _OVERRIDDEN if not callable(getattr(HttpToolsProtocol, name, None))]
    if missing:
        raise UvicornInternalsChanged(f"uvicorn's HttpToolsProtocol has no {', '.join(missing)}")
    if "timeout_keep_alive_task" not in HttpToolsProtocol.__init__.__code__.co_names:
        raise UvicornInternalsChanged("uvicorn's HttpToolsProtocol no longer keeps its idle timer as timeout_keep_alive_task")


# -- one write per response ------------------------------------------------------------------


class _CollectingTransport:
    """Stands in for uvicorn's transport while one response is sent, collecting its writes."""

    __slots__ = ("real", "chunks", "close_requested")

    def __init__(self, real: Any) -> None:
        self.real = real
        self.chunks: list[bytes] = []
        self.close_requested = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def close(self) -> None:
        self.close_requested = True  # after the collected bytes are written

    def is_closing(self) -> bool:
        return self.real.is_closing()


async def send_response(send: Callable, start: dict[str, Any], body: dict[str, Any]) -> None:
    """Send an ASGI response start and its whole body; through uvicorn's httptools protocol, in one write().

    uvicorn's send() still does all its own work (status line, header checks, keep-alive, content
    length, completion); only the transport it writes to is swapped for the duration. Any other
    server (or a wrapped send, e.g. with CORS) gets the two messages as usual.
    """
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle:
        await send(start)
        await send(body)
        return
    real = cycle.transport
    collector = _CollectingTransport(real)
    cycle.transport = collector
    try:
        await send(start)
        await send(body)
    finally:
        cycle.transport = real
        if collector.chunks and not real.is_closing():
            real.write(b"".join(collector.chunks))
        if collector.close_requested:
            real.close()


# -- slow headers ----------------------------------------------------------------------------


def header_timeout_response(seconds: float) -> bytes:
    """What a client whose headers did not arrive in time gets before its connection is closed."""
    body = orjson.dumps({"error": f"request headers not received within {seconds:g} s (XGB_HEADER_TIMEOUT_S)", "detail": []})
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-content-type-options: nosniff\r\ncache-control: no-store\r\nconnection: close\r\n\r\n%s") % (len(body), body)  # fmt: skip


class BoundedHeaders(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline on a request's headers and on a new connection's first byte."""

    header_timeout_s = 10.0
    idle_timeout_s = 5.0
    on_timeout: Callable[[], None] = staticmethod(lambda: None)  # counts it (set by bound_slow_headers)

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self._header_timer: Any = None
        super().connection_made(transport)
        # uvicorn's own idle timer, which it otherwise arms only after a response: the first byte cancels it.
        self.timeout_keep_alive_task = self.loop.call_later(self.idle_timeout_s, self.timeout_keep_alive_handler)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.on_timeout()
            self.transport.write(header_timeout_response(self.header_timeout_s))
            self.transport.close()


def bound_slow_headers(header_timeout_s: float, idle_timeout_s: float, on_timeout: Callable[[], None]) -> bool:
    """Have uvicorn serve this process's connections with BoundedHeaders.

    Must run before uvicorn loads its config (BentoML's worker imports the service first, then
    builds uvicorn's Config): it replaces uvicorn's `auto` protocol, which Config.load() resolves.
    Returns False, and changes nothing, when uvicorn does not look as expected (logged).
    """
    try:
        check()
        if uvicorn.protocols.http.auto.AutoHTTPProtocol not in (HttpToolsProtocol, BoundedHeaders):
            raise UvicornInternalsChanged("uvicorn's auto protocol is not httptools' (is httptools installed?)")
    except UvicornInternalsChanged as exc:
        logger.warning("slow-header connections are not bounded (%s); serve behind a proxy with a header timeout", exc)
        return False
    BoundedHeaders.header_timeout_s = header_timeout_s
    BoundedHeaders.idle_timeout_s = idle_timeout_s
    BoundedHeaders.on_timeout = staticmethod(on_timeout)
    uvicorn.protocols.http.auto.AutoHTTPProtocol = BoundedHeaders
    return True


def in_bentoml_worker() -> bool:
    """Whether this process is a BentoML HTTP worker (`python -m _bentoml_impl.worker.service ... --fd N`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", None) == "_bentoml_impl.worker.service" and _worker_argument("--fd") is not None


# -- one listening socket per worker ---------------------------------------------------------


def _worker_argument(name: str) -> str | None:
    """A command-line option of BentoML's worker process (`python -m _bentoml_impl.worker.service ... --fd 3`)."""
    argv = sys.argv
    if name in argv[:-1]:
        return argv[argv.index(name) + 1]
    return None


def own_listening_socket() -> bool:
    """In a BentoML HTTP worker on Linux, listen on a socket of its own instead of the arbiter's.

    Must run before uvicorn starts listening: in a startup hook (uvicorn runs the lifespan start-up
    first). The arbiter's socket is passed to the worker as `--fd N`; this binds a new SO_REUSEPORT
    socket to the same address, stops the shared one listening (in every process: a listening
    socket is one kernel object), and puts the new socket at fd N, where uvicorn picks it up.
    A worker started later (or a replacement for one that died) does the same. Returns False, and
    changes nothing, where this does not apply.
    """
    fd = _worker_argument("--fd")
    if sys.platform != "linux" or fd is None or not fd.isdigit():
        return False
    fd_number = int(fd)
    shared = socket.socket(fileno=os.dup(fd_number))  # a second handle: closing it keeps fd N
    try:
        if shared.type != socket.SOCK_STREAM or shared.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        address = shared.getsockname()
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # lets our socket bind beside it
        own = socket.socket(shared.family, socket.SOCK_STREAM)
        try:
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            own.bind(address)
            backlog = _worker_argument("--backlog")
            own.listen(int(backlog) if backlog and backlog.isdigit() else socket.SOMAXCONN)
            if shared.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                shared.shutdown(socket.SHUT_RD)  # out of the reuseport group: nobody would accept from it
            os.dup2(own.fileno(), fd_number)
        finally:
            own.close()
    except OSError as exc:
        logger.warning("keeping the shared listening socket (own SO_REUSEPORT socket failed: %s)", exc)
        return False
    finally:
        shared.close()
    return True
