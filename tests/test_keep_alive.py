"""Keep-alive against the ALB's idle timeout, on a real `bentoml serve` (issue 24, item 3).

The ALB reuses an idle connection to a target for up to its idle timeout; if the target closes it
first, the request the ALB sends on it gets a 502. The task's `bentoml serve --timeout-keep-alive`
comes from the stack's `albIdleTimeout` (ml_api_infra/settings.py keep_alive_seconds). A small idle
timeout keeps the test short: a connection left idle for longer than the ALB's timeout (and longer
than uvicorn's 5 s default, which the control server shows closing it) still answers."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from testkit.probes import read_response
from testkit.servers import Server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "infra_pulumi"))
from ml_api_infra.service import serve_command  # noqa: E402
from ml_api_infra.settings import StackSettings  # noqa: E402

ALB_IDLE_TIMEOUT = 6  # > uvicorn's default keep-alive (5 s), so the control server fails the same wait
REQUEST = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"


def answered(sock: socket.socket) -> bytes:
    """One whole response (or b"" when the server has closed the connection)."""
    sock.sendall(REQUEST)
    return read_response(sock)


def idle_then_request(server: Server, idle: float) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert answered(sock).startswith(b"HTTP/1.1 200"), server.log()[-2000:]
        time.sleep(idle)
        try:
            return answered(sock)
        except (ConnectionResetError, BrokenPipeError):
            return b""


def test_an_idle_connection_outlives_the_albs_idle_timeout(server_factory):
    settings = StackSettings(alb_idle_timeout=ALB_IDLE_TIMEOUT).validate()
    command = serve_command(settings)
    assert command[0] == "serve" and int(command[2]) > ALB_IDLE_TIMEOUT
    tuned = server_factory(workers=1, service=("service:XGBoostService", *command[1:]))
    default = server_factory(workers=1)
    assert idle_then_request(tuned, ALB_IDLE_TIMEOUT + 1).startswith(b"HTTP/1.1 200"), \
        "the task closed an idle connection the ALB could still reuse (a 502 at the ALB)"
    # Control: BentoML's default (uvicorn's 5 s) closes it within the same wait.
    assert idle_then_request(default, ALB_IDLE_TIMEOUT + 1) == b""
