"""Connections that send their headers slowly, or nothing, are closed at XGB_HEADER_TIMEOUT_S /
XGB_IDLE_TIMEOUT_S by a real `bentoml serve`, while normal requests keep being answered and idle
keep-alive connections stay governed by the keep-alive timeout (serving/uvicorn_internals.py)."""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import time

import requests

from model_store.dataset import EXAMPLE_RECORD

SLOW_CLIENTS = 3000
SILENT_CLIENTS = 100
HEADER_TIMEOUT_S = 3.0
IDLE_TIMEOUT_S = 4.0  # below BentoML's 5 s keep-alive timeout: a keep-alive connection idle 4.5 s must survive both
REQUEST = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Padding: " + b"a" * 200 + b"\r\n"


def _connect(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def _closed_by_server(sock: socket.socket) -> tuple[bool, bytes]:
    """Whether the server has closed the connection (EOF or reset), and what it sent first."""
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True, received
            received += chunk
    except BlockingIOError:
        return False, received
    except ConnectionResetError:
        return True, received


def test_slow_header_and_silent_connections_are_closed_while_requests_are_answered(server_factory):
    server = server_factory({"XGB_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S), "XGB_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S)}, workers=1)
    port = server.port
    body = json.dumps(EXAMPLE_RECORD).encode()
    keep_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    keep_alive.request("POST", "/predict", body, {"Content-Type": "application/json"})
    assert keep_alive.getresponse().read()
    began = time.monotonic()

    silent = _connect(port, SILENT_CLIENTS)
    slow = _connect(port, SLOW_CLIENTS)
    opened = time.monotonic()
    print(f"{len(slow)} slow-header and {len(silent)} silent connections opened in {opened - began:.1f} s")
    sent = 0
    answered = []
    closed_at: dict[int, float] = {}
    first_bytes: dict[int, bytes] = {}
    # One header byte per connection every 0.25 s: never done within the timeout (REQUEST is > 200 bytes).
    while time.monotonic() - opened < HEADER_TIMEOUT_S + 6 and len(closed_at) < len(slow):
        for i, sock in enumerate(slow):
            if i in closed_at:
                continue
            try:
                sock.send(REQUEST[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                pass
            closed, received = _closed_by_server(sock)
            first_bytes[i] = first_bytes.get(i, b"") + received
            if closed:
                closed_at[i] = time.monotonic() - opened
        sent += 1
        started = time.monotonic()
        answer = requests.post(f"{server.url}/predict", json=EXAMPLE_RECORD, timeout=10)
        answered.append((answer.status_code, time.monotonic() - started))
        time.sleep(0.25)
    assert sent < len(REQUEST), "the slow clients never finished their headers"
    print(f"slow connections closed: {len(closed_at)}/{len(slow)}, first at {min(closed_at.values(), default=0):.1f} s, "
          f"last at {max(closed_at.values(), default=0):.1f} s; {len(answered)} requests answered meanwhile, "
          f"slowest {max(t for _, t in answered) * 1000:.0f} ms")  # fmt: skip
    assert len(closed_at) == len(slow), f"{len(slow) - len(closed_at)} slow-header connections still open {HEADER_TIMEOUT_S + 6:g} s on"
    assert min(closed_at.values()) >= HEADER_TIMEOUT_S - 0.5, "closed before the header timeout"
    timed_out = [b for b in first_bytes.values() if b.startswith(b"HTTP/1.1 408 ")]
    assert len(timed_out) >= 0.9 * len(slow), f"only {len(timed_out)} got the 408; e.g. {list(first_bytes.values())[:2]}"
    assert b"XGB_HEADER_TIMEOUT_S" in timed_out[0]
    assert all(status == 200 for status, _ in answered), f"normal requests must be answered meanwhile: {answered}"

    silent_closed_at: dict[int, float] = {}
    # Their idle timers started when the server accepted them, after `began` (they were opened
    # before the slow ones), so their times count from there.
    while len(silent_closed_at) < len(silent) and time.monotonic() - began < IDLE_TIMEOUT_S + 5:
        for i, sock in enumerate(silent):
            if i not in silent_closed_at and _closed_by_server(sock)[0]:
                silent_closed_at[i] = time.monotonic() - began
        time.sleep(0.1)
    assert len(silent_closed_at) == len(silent), f"{len(silent) - len(silent_closed_at)} silent connections still open"
    assert min(silent_closed_at.values()) >= IDLE_TIMEOUT_S - 0.5, "silent connections closed before the idle timeout"
    print(f"slow/silent phase took {time.monotonic() - opened:.1f} s")

    # A well-behaved keep-alive connection idle past the header and idle timeouts, within BentoML's
    # 5 s keep-alive timeout, is still open; past the keep-alive timeout it is closed (uvicorn's).
    keep_alive.close()
    keep_alive.connect()
    keep_alive.request("POST", "/predict", body, {"Content-Type": "application/json"})
    assert keep_alive.getresponse().read()
    time.sleep(4.5)
    keep_alive.request("POST", "/predict", body, {"Content-Type": "application/json"})
    assert keep_alive.getresponse().status == 200, "an idle keep-alive connection is not cut by the header or idle timeout"
    keep_alive.sock.setblocking(False)
    time.sleep(6)
    assert _closed_by_server(keep_alive.sock)[0], "past the keep-alive timeout uvicorn closes it"
    keep_alive.close()
    for sock in slow + silent:
        sock.close()
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    counted = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith('xgb_rejected_requests_total{reason="header_timeout"}'))
    assert counted == len(timed_out)
