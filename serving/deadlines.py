"""The end-to-end request timeout of the prediction routes (XGB_REQUEST_TIMEOUT_S), at almost no cost per request.

BentoML enforces its request timeout in a middleware the fast path goes around, with a task and a
timer per request. Here requests are grouped by arrival into cohorts of COHORT_SECONDS, and one
timer per cohort cancels those of its requests still running: a request costs a set insert and
removal. A request is cancelled between timeout_s and timeout_s + COHORT_SECONDS after it arrived,
at the point where it waits (for its body, the batch dispatcher or the batch thread pool). Model
code running on the event loop cannot be interrupted; that is why its calls are short.
"""

from __future__ import annotations

import asyncio

COHORT_SECONDS = 0.1


class Cohort(set):
    """The requests that arrived in one COHORT_SECONDS window and are still running."""

    expired = False


class Deadlines:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._cohort = Cohort()
        self._cohort_ends = float("-inf")
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, task: asyncio.Task) -> Cohort:
        """Put a request (its task) under the deadline; remove it from the returned cohort when it is answered."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._cohort_ends:
            self._cohort = Cohort()
            self._cohort_ends = now + COHORT_SECONDS
            # The cohort's last arrival has had timeout_s by then, its first timeout_s + COHORT_SECONDS.
            loop.call_at(self._cohort_ends + self.timeout_s, _expire, self._cohort)
        self._cohort.add(task)
        return self._cohort


def _expire(cohort: Cohort) -> None:
    cohort.expired = True
    for task in cohort:
        task.cancel()


def timed_out(cohort: Cohort, task: asyncio.Task) -> bool:
    """Whether the deadline cancelled this task (it expired while the task was in its cohort); if so
    the cancellation is taken back, so that the task can still answer."""
    if not (cohort.expired and task in cohort):
        return False
    task.uncancel()
    return True
