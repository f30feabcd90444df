"""off_loop, the one runner of blocking work off the event loop, and its contract.

The oracle is the work itself: each blocking function records, on its own thread, whether
it ran and whether it finished, and is held on a ``threading.Event`` the test releases;
so "the caller's CancelledError came only after the work ended" is read from the record,
not from timing. The autouse leak fixture then finds any ``asynctrain-*`` thread left.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from asynctrain._offloop import off_loop

_request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


class _Held:
    """Blocking work that says when it started and finished, held until released."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.finished = False

    def __call__(self, value: Any = None) -> Any:
        self.started.set()
        self.release.wait()
        self.finished = True
        return value


def _off_loop_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("asynctrain-off-loop")]


@pytest.fixture(params=["own thread", "executor"])
def executor(request: pytest.FixtureRequest) -> Iterator[concurrent.futures.Executor | None]:
    """No executor (off_loop's own thread), or an owned one as the updater and writer have."""
    if request.param == "own thread":
        yield None
        return
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="asynctrain-test") as pool:
        yield pool


async def test_returns_the_result_computed_on_another_thread(
    executor: concurrent.futures.Executor | None,
) -> None:
    def where(base: int, exponent: int) -> tuple[int, int, str]:
        return pow(base, exponent), threading.get_ident(), _request.get()

    _request.set("r1")
    value, ident, seen = await off_loop(where, 2, 10, executor=executor)
    assert value == 1024
    assert ident != threading.get_ident()
    assert seen == "r1"  # the caller's context, as with asyncio.to_thread
    assert _off_loop_threads() == []  # its own thread has ended when it returns


async def test_an_exception_keeps_its_type_and_object(
    executor: concurrent.futures.Executor | None,
) -> None:
    class ModelBug(Exception):
        pass

    bug = ModelBug("in predict")

    def fail() -> None:
        raise bug

    with pytest.raises(ModelBug) as raised:
        await off_loop(fail, executor=executor)
    assert raised.value is bug
    assert _off_loop_threads() == []


@pytest.mark.parametrize("cancels", [1, 2])
async def test_a_cancelled_caller_waits_for_work_that_started(
    executor: concurrent.futures.Executor | None, cancels: int
) -> None:
    work = _Held()
    task = asyncio.ensure_future(off_loop(work, "late", executor=executor))
    try:
        await asyncio.to_thread(work.started.wait)
        for _ in range(cancels):  # a second cancel must not orphan it either
            task.cancel()
            for _ in range(5):
                await asyncio.sleep(0)
            assert not task.done(), "CancelledError propagated while the work still ran"
        work.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert work.finished
        assert _off_loop_threads() == []
    finally:
        work.release.set()


async def test_a_cancelled_caller_cancels_work_not_started() -> None:
    blocker, never = _Held(), _Held()
    never.release.set()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="asynctrain-test") as pool:
        try:
            pool.submit(blocker)  # the one thread is busy: the next call waits in the queue
            await asyncio.to_thread(blocker.started.wait)
            task = asyncio.ensure_future(off_loop(never, executor=pool))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task  # at once, although the executor is still busy
            assert not blocker.finished
        finally:
            blocker.release.set()
    assert not never.started.is_set()


async def test_on_cancel_asks_started_work_to_stop_before_it_is_waited_for(
    executor: concurrent.futures.Executor | None,
) -> None:
    work = _Held()  # it stops only when released: on_cancel is what releases it
    task = asyncio.ensure_future(off_loop(work, executor=executor, on_cancel=work.release.set))
    try:
        await asyncio.to_thread(work.started.wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert work.finished
    finally:
        work.release.set()


async def test_the_result_of_work_finished_for_a_cancelled_caller_goes_to_discard(
    executor: concurrent.futures.Executor | None,
) -> None:
    work, discarded = _Held(), []  # e.g. the process backend frees a segment it built
    task = asyncio.ensure_future(
        off_loop(work, "built", executor=executor, discard=discarded.append)
    )
    try:
        await asyncio.to_thread(work.started.wait)
        task.cancel()
        await asyncio.sleep(0)
        work.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert discarded == ["built"]
    finally:
        work.release.set()
    assert await off_loop(work, "kept", executor=executor, discard=discarded.append) == "kept"
    assert discarded == ["built"]  # a result the caller received is not discarded


async def test_the_test_loops_run_in_debug_mode() -> None:
    # pyproject's asyncio_debug: thread-safety and unawaited-coroutine checks on both loops.
    assert asyncio.get_running_loop().get_debug()
