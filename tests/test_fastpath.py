"""The fast path's parts in process: body limits and the lingering close, deadlines, the batch pool."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from bentoml.exceptions import ServiceUnavailable

from serving import body as body_module
from serving.batch_pool import BatchPool
from serving.body import BodyTooLarge, read_body
from serving.contract import InputError
from serving.deadlines import COHORT_SECONDS, Deadlines, timed_out

pytestmark = pytest.mark.fast


def scope(headers: list[tuple[bytes, bytes]] = ()) -> dict:
    return {"path": "/predict", "headers": list(headers)}


def receiver(chunks: list[bytes], counted: list[int] | None = None, forever: bool = False):
    """An ASGI receive() handing out chunks (then, if forever, endless ones); counts its calls."""
    queue = list(chunks)

    async def receive() -> dict:
        if counted is not None:
            counted.append(1)
        if forever:
            await asyncio.sleep(0.001)
            return {"type": "http.request", "body": b"x" * 65536, "more_body": True}
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    return receive


def test_a_body_in_chunks_is_joined():
    assert asyncio.run(read_body(receiver([b'{"a"', b": 1}"]), 100, scope())) == b'{"a": 1}'


def test_an_empty_body_is_400():
    with pytest.raises(InputError) as refused:
        asyncio.run(read_body(receiver([b""]), 100, scope()))
    assert refused.value.status == 400


def test_an_oversize_declared_body_is_read_to_its_end_before_the_413():
    calls: list[int] = []
    with pytest.raises(BodyTooLarge) as refused:
        asyncio.run(read_body(receiver([b"x" * 60] * 5, calls), 100, scope([(b"content-length", b"300")])))
    assert refused.value.status == 413 and "300 bytes is over the 100-byte limit" in refused.value.error
    assert len(calls) == 5 and not refused.value.close_connection, "all read: the connection can be kept"


def test_an_oversize_chunked_body_is_read_to_its_end_before_the_413():
    calls: list[int] = []
    with pytest.raises(BodyTooLarge) as refused:
        asyncio.run(read_body(receiver([b"x" * 60] * 5, calls), 100, scope()))
    assert len(calls) == 5 and not refused.value.close_connection


def test_a_body_that_never_ends_is_dropped_for_a_bounded_time_then_the_connection_closes(monkeypatch):
    monkeypatch.setattr(body_module, "LINGER_SECONDS", 0.2)
    started = time.monotonic()
    with pytest.raises(BodyTooLarge) as refused:
        asyncio.run(read_body(receiver([], forever=True), 100, scope([(b"content-length", b"999999999")])))
    assert refused.value.close_connection and time.monotonic() - started < 2


def test_a_client_waiting_for_100_continue_is_answered_without_reading():
    calls: list[int] = []
    headers = [(b"content-length", b"300"), (b"expect", b"100-continue")]
    with pytest.raises(BodyTooLarge) as refused:
        asyncio.run(read_body(receiver([b"x"], calls), 100, scope(headers)))
    assert calls == [] and refused.value.close_connection


def test_deadlines_cancel_only_requests_still_running_after_the_timeout():
    async def main() -> tuple[list[bool], float]:
        deadlines = Deadlines(0.2)
        outcomes: list[bool] = []

        async def request(work_s: float) -> None:
            task = asyncio.current_task()
            cohort = deadlines.start(task)
            try:
                await asyncio.sleep(work_s)
                outcomes.append(False)
            except asyncio.CancelledError:
                outcomes.append(timed_out(cohort, task))
                assert task.cancelling() == 0, "the cancellation is taken back: the request can still answer"
            finally:
                cohort.discard(task)

        started = asyncio.get_running_loop().time()
        await asyncio.gather(request(0.05), request(5.0))
        return outcomes, asyncio.get_running_loop().time() - started

    outcomes, took = asyncio.run(main())
    assert outcomes == [False, True]
    assert 0.2 <= took < 0.2 + COHORT_SECONDS + 0.3


def test_a_cancellation_that_is_not_the_deadlines_is_not_taken():
    async def main() -> bool:
        deadlines = Deadlines(10)
        task = asyncio.current_task()
        cohort = deadlines.start(task)
        return timed_out(cohort, task)

    assert asyncio.run(main()) is False


def test_the_batch_pool_runs_threads_batches_and_refuses_beyond_its_queue():
    release = threading.Event()

    async def main() -> tuple[list, int]:
        pool = BatchPool(threads=1, queue=2)
        running = [asyncio.ensure_future(pool.run(release.wait, 5)) for _ in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceUnavailable):
            pool.admit()
        release.set()
        results = await asyncio.gather(*running)
        await asyncio.sleep(0.05)  # the threads' done-callbacks reach the loop
        pool.admit()
        return results, pool.pending

    results, pending = asyncio.run(main())
    assert results == [True, True, True] and pending == 0


def test_a_batch_given_up_on_still_holds_its_place_until_its_thread_is_done():
    release = threading.Event()

    async def main() -> tuple[int, int]:
        pool = BatchPool(threads=1, queue=0)
        waiting = asyncio.ensure_future(pool.run(release.wait, 5))
        await asyncio.sleep(0.05)
        waiting.cancel()  # the request timed out or its client left
        await asyncio.sleep(0.05)
        held = pool.pending
        release.set()
        await asyncio.sleep(0.1)
        return held, pool.pending

    assert asyncio.run(main()) == (1, 0)
