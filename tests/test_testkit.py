"""The one launcher and the one wait loop the tests, benchmarks, container and monitoring checks share."""

from __future__ import annotations

import itertools
import sys
import time

import pytest

from testkit import servers
from testkit.servers import Server
from testkit.waiting import NotReady, http_ready, wait_until

pytestmark = pytest.mark.fast


def test_wait_until_returns_the_first_truthy_value():
    calls = itertools.count(1)
    assert wait_until(lambda: (n := next(calls)) >= 3 and n, 5, "three calls", 0.01) == 3


def test_wait_until_names_what_it_waited_for_when_time_runs_out():
    started = time.monotonic()
    with pytest.raises(NotReady, match=r"timed out after 0.2 s waiting for the moon"):
        wait_until(lambda: False, 0.2, "the moon", 0.05)
    assert time.monotonic() - started < 2


def test_wait_until_stops_at_once_when_what_it_waits_on_is_gone_and_says_why():
    started = time.monotonic()
    with pytest.raises(NotReady, match=r"it crashed while waiting for x"):
        wait_until(lambda: False, 30, "x", 0.05, alive=lambda: "it crashed")
    assert time.monotonic() - started < 1


def test_wait_until_counts_the_listed_errors_as_not_yet_and_raises_others():
    answers = iter([ConnectionRefusedError(), ConnectionRefusedError(), "up"])

    def probe():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_until(probe, 5, "up", 0.01, errors=(OSError,)) == "up"
    with pytest.raises(ZeroDivisionError):
        wait_until(lambda: 1 / 0, 5, "never", 0.01, errors=(OSError,))


def test_a_server_is_ready_counted_while_alive_and_stopped():
    server = Server([sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"], name="http-server", ready_path="/")
    starts = servers.STARTS
    seconds = server.start(timeout=30)
    try:
        assert seconds > 0 and servers.STARTS == starts + 1 and server in servers.LIVE
        assert http_ready(server.url + "/", 5)[0] == 200
    finally:
        code = server.stop()
    assert code is not None and server not in servers.LIVE and server.exited() is not None


def test_a_server_that_exits_while_starting_fails_at_once_with_its_log():
    server = Server([sys.executable, "-c", "print('cannot start: no model'); raise SystemExit(3)"], name="doomed")
    started = time.monotonic()
    with pytest.raises(servers.ServerError, match=r"(?s)doomed exited with 3.*cannot start: no model"):
        server.start(timeout=60)
    assert time.monotonic() - started < 30 and server not in servers.LIVE


def test_free_ports_are_bindable_and_outside_the_range_outgoing_connections_take_theirs_from():
    import socket

    from testkit.servers import LOWEST_PORT, ephemeral_ports, free_port

    low, _ = ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    assert all(LOWEST_PORT <= p < low for p in ports), ports
    assert len(set(ports)) > 40, "random, not a sequence every process repeats"
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))
