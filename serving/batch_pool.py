"""Where /predict_batch's model calls (and /explain*'s) run: a thread pool of the worker's own size
and a bounded queue.

A 5,000-record batch keeps a core busy for tens of milliseconds, so it runs off the event loop
(where /predict's batches run). anyio's default pool would run up to 40 of them at once in a
worker that has one core, and queue any number more; here `threads` run (the worker's share of
the CPU) and at most `queue` wait, beyond which the request is refused at once with 503.
Work is counted in units of the caller's choosing (`weight`): a batch each for /predict_batch,
records for /explain*, whose batches cost milliseconds per record. `niceness` runs the threads
below the event loop's CPU priority, so their work yields to /predict's.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from bentoml.exceptions import ServiceUnavailable

T = TypeVar("T")


class BatchPool:
    def __init__(self, threads: int, queue: int, *, name: str = "predict-batch", unit: str = "batches", niceness: int = 0) -> None:
        self.threads = threads
        self.capacity = threads + queue
        self.pending = 0  # weight submitted and not finished, running or queued (changed on the event loop only)
        self.name, self.unit, self.niceness = name, unit, niceness
        self._executor: ThreadPoolExecutor | None = None

    def admit(self, weight: int = 1) -> None:
        """Refuse (503) when the queue is full: call before parsing, and run() with no await in between."""
        if self.pending and self.pending + weight > self.capacity:
            raise ServiceUnavailable(f"{self.pending} {self.unit} are already running or queued in this worker")

    async def run(self, fn: Callable[..., T], *args: Any, weight: int = 1) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=self.name, initializer=self._set_priority)
        loop = asyncio.get_running_loop()
        self.pending += weight
        future: Future[T] = self._executor.submit(fn, *args)
        # Counted until the thread is done with it, even when the request gave up (timeout, disconnect).
        future.add_done_callback(lambda _: loop.is_closed() or loop.call_soon_threadsafe(self._finished, weight))
        return await asyncio.wrap_future(future)

    def _finished(self, weight: int) -> None:
        self.pending -= weight

    def _set_priority(self) -> None:
        # On Linux each thread is a task of its own: setpriority on its thread id renices this thread only.
        if self.niceness:
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.niceness)
            except (AttributeError, OSError):  # not Linux, or not allowed: the event loop's priority
                pass
