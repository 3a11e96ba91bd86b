"""The one wait-until-ready loop: poll a condition until it holds, fail early if what it waits on died."""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NotReady(RuntimeError):
    """A wait ran out of time, or what it waited on exited first; the message says what and why."""


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1,
               alive: Callable[[], str | None] | None = None, errors: tuple[type[BaseException], ...] = ()) -> T:
    """Calls `condition` every `interval` s until it returns something truthy, and returns that.

    `alive` (if given) is asked first each round and returns None while the awaited thing runs, or
    why it is gone (then NotReady is raised at once, with that reason). Exceptions of the `errors`
    types count as "not yet" (a refused connection while a server starts).
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and (gone := alive()) is not None:
            raise NotReady(f"{gone} while waiting for {what}")
        try:
            value = condition()
            if value:
                return value
        except errors:
            pass
        if time.monotonic() >= deadline:
            raise NotReady(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_settled(read: Callable[[], T], timeout: float, what: str, interval: float = 1.5) -> T:
    """`read()` once two reads `interval` s apart agree: for counts that are exported a while after
    the requests that make them (metrics per batch, spans per schedule delay), where a loaded box
    is late and an earlier test's work may still be arriving."""
    last: list[T] = [read()]

    def agrees() -> tuple[T] | None:
        now = read()
        agreed, last[0] = now == last[0], now
        return (now,) if agreed else None

    time.sleep(interval)  # wait_until asks at once: the first comparison is one interval after the first read
    return wait_until(agrees, timeout, f"{what} to stop changing", interval)[0]


def http_status(url: str, timeout: float = 1) -> tuple[int, bytes]:
    """One GET: its status and body (an HTTP error status is an answer too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def http_ready(url: str, timeout: float, interval: float = 0.1, alive: Callable[[], str | None] | None = None,
               ready: Callable[[int], bool] = lambda status: status == 200) -> tuple[int, bytes]:
    """Polls `url` until its status is `ready` (by default: a 200); returns that (status, body)."""
    def answer() -> tuple[int, bytes] | None:
        got = http_status(url)
        return got if ready(got[0]) else None

    return wait_until(answer, timeout, url, interval, alive, errors=(OSError, http.client.HTTPException))
