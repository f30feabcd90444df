"""ThreadPool, the thread backend's and the updater's threads, and its contract.

The oracle is the work itself, as in test_offloop: each call records on its own thread
whether it started and whether it finished, so "the caller's CancelledError came only
after the work ended, or the work never started" is read from the record, not from
timing. The autouse leak fixture then finds any ``asynctrain-*`` thread left running.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import asynctrain as at
from asynctrain._threads import ThreadPool, _Call, _Inbox
from asynctrain.backends import ThreadBackend

_request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


class _Record:
    """A call that says when it started and finished; it sleeps ``seconds`` or until
    ``release`` is set."""

    def __init__(self, seconds: float | None = None) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.finished = False
        self.seconds = seconds

    def __call__(self, value: Any = None) -> Any:
        self.started.set()
        if self.seconds is None:
            self.release.wait(10)  # a failed test does not hang the pool's shutdown
        else:
            time.sleep(self.seconds)
        self.finished = True
        return value


class Boom(BaseException):
    """Not an Exception: calls pass on whatever their function raises."""


def _block_until(condition: Callable[[], bool]) -> None:
    """Keep the loop's thread busy (not running the loop) until ``condition()``."""
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)


async def _started(*records: _Record) -> None:
    for record in records:
        await asyncio.to_thread(record.started.wait, 10)


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    pool = ThreadPool(2, name="asynctrain-test")
    yield pool
    pool.shutdown(cancel=True)


async def test_returns_the_result_in_the_callers_context(pool: ThreadPool) -> None:
    def where(base: int, exponent: int) -> tuple[int, str, str]:
        return pow(base, exponent), threading.current_thread().name, _request.get()

    _request.set("r1")
    value, name, seen = await pool.run(where, 2, 10)
    assert value == 1024
    assert name.startswith("asynctrain-test-")
    assert seen == "r1"


async def test_exceptions_propagate_as_they_are(pool: ThreadPool) -> None:
    error = ValueError("from the thread")

    def fail(exc: BaseException) -> None:
        raise exc

    with pytest.raises(ValueError, match="from the thread") as caught:
        await pool.run(fail, error)
    assert caught.value is error
    with pytest.raises(Boom):
        await pool.run(fail, Boom())
    assert await pool.run(pow, 3, 2) == 9  # the thread that raised still serves


async def test_many_calls_in_flight_each_get_their_own_result(pool: ThreadPool) -> None:
    results = await asyncio.gather(*(pool.run(pow, i, 2) for i in range(200)))
    assert results == [i * i for i in range(200)]


async def test_results_that_come_in_together_wake_the_loop_once(
    pool: ThreadPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    empties = []
    real_empty = _Inbox._empty

    def counted(inbox: _Inbox) -> None:
        empties.append(1)
        real_empty(inbox)

    monkeypatch.setattr(_Inbox, "_empty", counted)
    records = [_Record(seconds=0) for _ in range(4)]
    calls = [asyncio.ensure_future(pool.run(record, i)) for i, record in enumerate(records)]
    await asyncio.sleep(0)  # the calls are queued
    inbox = pool._inbox
    assert inbox is not None
    _block_until(lambda: len(inbox._calls) == len(records))  # every result is in
    assert await asyncio.gather(*calls) == [0, 1, 2, 3]
    assert len(empties) == 1


async def test_calls_awaited_one_after_another_stay_on_one_thread(pool: ThreadPool) -> None:
    # The thread idle the shortest takes the next call (its core has the data cached);
    # it counts itself idle before its result reaches the loop, so even a call made at
    # once on that result finds it there.
    names = [await pool.run(lambda: threading.current_thread().name) for _ in range(50)]
    assert len(set(names)) == 1


async def test_calls_in_flight_together_use_every_thread(pool: ThreadPool) -> None:
    first, second = _Record(), _Record()
    calls = [asyncio.ensure_future(pool.run(r, r)) for r in (first, second)]
    await _started(first, second)  # both run at once: one on each thread
    first.release.set()
    second.release.set()
    assert await asyncio.gather(*calls) == [first, second]


async def test_queued_calls_run_in_the_order_made() -> None:
    pool = ThreadPool(1, name="asynctrain-test")
    try:
        gate, order = _Record(), []
        blocked = asyncio.ensure_future(pool.run(gate))
        await _started(gate)
        queued = [asyncio.ensure_future(pool.run(order.append, i)) for i in range(20)]
        gate.release.set()
        await asyncio.gather(blocked, *queued)
        assert order == list(range(20))
    finally:
        pool.shutdown()


async def test_a_cancelled_caller_waits_for_its_started_call(pool: ThreadPool) -> None:
    record = _Record()
    task = asyncio.ensure_future(pool.run(record, "value"))
    await _started(record)
    task.cancel()
    await asyncio.sleep(0.02)
    task.cancel()  # a second cancel must not orphan the work either
    await asyncio.sleep(0.02)
    assert not task.done()
    record.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert record.finished


async def test_a_call_cancelled_before_it_starts_never_runs(pool: ThreadPool) -> None:
    blockers = [_Record() for _ in range(2)]
    busy = [asyncio.ensure_future(pool.run(b)) for b in blockers]
    await _started(*blockers)
    queued = _Record(seconds=0)
    task = asyncio.ensure_future(pool.run(queued))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # at once: both threads are still busy
    for b in blockers:
        b.release.set()
    await asyncio.gather(*busy)
    assert await pool.run(pow, 2, 3) == 8  # every queued call before this one is done
    assert not queued.started.is_set()


@pytest.mark.parametrize("seed", range(3))
async def test_cancelling_at_random_points_leaves_no_call_running(
    pool: ThreadPool, seed: int
) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        records = [_Record(seconds=rng.choice([0, 0.0005, 0.002])) for _ in range(3)]
        tasks = [asyncio.ensure_future(pool.run(r, i)) for i, r in enumerate(records)]
        await asyncio.sleep(rng.choice([0, 0, 0.0002, 0.001, 0.003]))
        victim = rng.randrange(len(tasks))
        tasks[victim].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for i, (record, outcome) in enumerate(zip(records, outcomes, strict=True)):
            # Whatever the outcome, no call is left running once its caller is done ...
            assert record.finished or not record.started.is_set()
            if isinstance(outcome, asyncio.CancelledError):
                assert i == victim
            else:
                assert outcome == i
                assert record.finished
        started = [r.started.is_set() for r in records]
        await pool.run(pow, 1, 1)  # both threads have taken every earlier call
        await pool.run(pow, 1, 1)
        # ... and a call dropped unstarted never starts later.
        assert [r.started.is_set() for r in records] == started


async def test_submit_returns_the_calls_future_settled_with_its_outcome(pool: ThreadPool) -> None:
    def where(base: int, exponent: int) -> tuple[int, str]:
        return base**exponent, _request.get()

    _request.set("mine")
    call = pool.submit(where, 2, 10)
    assert isinstance(call.future, asyncio.Future)
    assert await call.future == (1024, "mine")
    failing = pool.submit(operator_raises, Boom("boom"))
    with pytest.raises(Boom):
        await failing.future


def operator_raises(error: BaseException) -> None:
    raise error


async def test_a_submitted_call_cancelled_before_it_starts_never_runs(pool: ThreadPool) -> None:
    blockers = [_Record() for _ in range(2)]
    busy = [pool.submit(b).future for b in blockers]
    await _started(*blockers)
    queued = _Record(seconds=0)
    call = pool.submit(queued)
    call.cancel()
    assert call.future.cancelled()
    for b in blockers:
        b.release.set()
    await asyncio.gather(*busy)
    assert await pool.run(pow, 2, 3) == 8  # every queued call before this one is done
    assert await pool.run(pow, 2, 3) == 8
    assert not queued.started.is_set()


async def test_a_submitted_call_cancelled_while_it_runs_ends_before_shutdown_returns() -> None:
    pool = ThreadPool(1, name="asynctrain-test")
    running = _Record(seconds=0.05)
    call = pool.submit(running, "dropped")
    await _started(running)
    call.cancel()  # unlike run()'s caller, nothing waits: the call goes on ...
    assert not running.finished
    await asyncio.to_thread(pool.shutdown)  # ... and shutdown waits for it
    assert running.finished
    assert call.future.cancelled()


async def test_shutdown_drops_queued_calls_and_lets_the_running_one_finish() -> None:
    pool = ThreadPool(1, name="asynctrain-test")
    running, queued = _Record(), _Record(seconds=0)
    first = asyncio.ensure_future(pool.run(running, 1))
    await _started(running)
    second = asyncio.ensure_future(pool.run(queued, 2))
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(asyncio.to_thread(pool.shutdown, cancel=True))
    with pytest.raises(asyncio.CancelledError):
        await second
    running.release.set()
    await closing
    assert await first == 1
    assert not queued.started.is_set()
    assert not [t for t in threading.enumerate() if t.name.startswith("asynctrain-test")]
    with pytest.raises(RuntimeError, match="shut down"):
        await pool.run(pow, 2, 2)


async def test_shutdown_without_cancel_runs_every_queued_call() -> None:
    pool = ThreadPool(1, name="asynctrain-test")
    records = [_Record(seconds=0.001) for _ in range(5)]
    calls = [asyncio.ensure_future(pool.run(r, i)) for i, r in enumerate(records)]
    await asyncio.sleep(0)
    await asyncio.to_thread(pool.shutdown)
    assert await asyncio.gather(*calls) == list(range(5))


async def test_resizing_the_thread_backend_while_calls_run_and_get_cancelled() -> None:
    rng = random.Random(0)
    async with ThreadBackend(workers=2) as backend:
        records = [_Record(seconds=rng.choice([0, 0.001, 0.003])) for _ in range(30)]
        tasks = [asyncio.ensure_future(backend.run(r, i)) for i, r in enumerate(records)]
        for size in (1, 3, 2):
            await asyncio.sleep(0.002)
            tasks[rng.randrange(len(tasks))].cancel()
            await backend.resize(size)
            threads = [t for t in threading.enumerate() if t.name.startswith("asynctrain-worker")]
            assert len(threads) == size
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for i, (record, outcome) in enumerate(zip(records, outcomes, strict=True)):
        assert record.finished or not record.started.is_set()
        assert isinstance(outcome, asyncio.CancelledError) or outcome == i


def test_a_result_for_a_closed_loop_does_not_cost_the_pool_its_thread() -> None:
    pool = ThreadPool(1, name="asynctrain-test")
    loop = asyncio.new_event_loop()
    future: asyncio.Future[int] = loop.create_future()
    loop.close()  # the caller's loop is gone before its result comes back
    pool._put(_Call(lambda: 1, future, _Inbox(loop)))
    assert asyncio.run(pool.run(pow, 2, 5)) == 32  # the pool's one thread still serves
    pool.shutdown()


def test_a_pool_the_system_refuses_threads_for_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `--workers 1000000` started threads until the OS refused one: a RuntimeError
    # traceback ("can't start new thread"), the threads started so far left waiting for
    # the life of the process.
    start = threading.Thread.start
    started: list[threading.Thread] = []

    def limited(thread: threading.Thread) -> None:
        if len(started) == 3:
            raise RuntimeError("can't start new thread")
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", limited)
    with pytest.raises(at.ConfigError, match="started 3 of the 10 threads"):
        ThreadPool(10, name="asynctrain-test")
    assert not [thread for thread in started if thread.is_alive()]
