"""Where /predict_batch's model calls run: a thread pool of the worker's own size and a bounded queue.

A 5,000-record batch keeps a core busy for tens of milliseconds, so it runs off the event loop
(where /predict's batches run). anyio's default pool would run up to 40 of them at once in a
worker that has one core, and queue any number more; here `threads` run (the worker's share of
the CPU) and at most `queue` wait, beyond which the request is refused at once with 503.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from bentoml.exceptions import ServiceUnavailable

T = TypeVar("T")


class BatchPool:
    def __init__(self, threads: int, queue: int) -> None:
        self.threads = threads
        self.capacity = threads + queue
        self.pending = 0  # submitted and not finished, running or queued (changed on the event loop only)
        self._executor: ThreadPoolExecutor | None = None

    def admit(self) -> None:
        """Refuse (503) when the queue is full: call before parsing, and run() with no await in between."""
        if self.pending >= self.capacity:
            raise ServiceUnavailable(f"{self.pending} batches are already running or queued in this worker")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="predict-batch")
        loop = asyncio.get_running_loop()
        self.pending += 1
        future: Future[T] = self._executor.submit(fn, *args)
        # Counted until the thread is done with it, even when the request gave up (timeout, disconnect).
        future.add_done_callback(lambda _: loop.is_closed() or loop.call_soon_threadsafe(self._finished))
        return await asyncio.wrap_future(future)

    def _finished(self) -> None:
        self.pending -= 1
