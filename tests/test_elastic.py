"""Elastic pools: ``backend.resize(n)`` in the middle of a fit keeps every bit, really
changes the pool (threads and processes as the OS sees them) and leaks nothing; and the
process backend's ``task_timeout`` replaces stopped or hung workers."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
from conftest import _children

import asynctrain as at
from asynctrain.backends import InlineBackend, ProcessBackend, StragglerBackend, ThreadBackend
from asynctrain.data import Dataset, synthetic
from asynctrain.models import SoftmaxRegression

MODES = [("sync", {}), ("local", {"local_steps": 3}), ("ssp", {"staleness": 2})]


class FakeShard(NamedTuple):
    step: int
    shard: int


def hang(seconds: float, task: Any = None) -> None:
    time.sleep(seconds)


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def thread_after(barrier: threading.Barrier) -> int:
    barrier.wait(10)  # passes only when barrier.parties tasks run at once
    return threading.get_ident()


@pytest.fixture(scope="module")
def train() -> Dataset:
    return synthetic("softmax", n=3000, seed=1)


def _bits(params: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {key: value.tobytes() for key, value in params.items()}


async def _fit(backend: Any, train: Dataset, mode: str = "sync", **options: Any) -> at.FitResult:
    callbacks = options.pop("callbacks", [])
    async with at.Trainer(
        SoftmaxRegression(128, 10),
        at.optim.adam(1e-2),
        backend=backend,
        batch_size=128,
        shards=4,
        seed=3,
        mode=mode,
        **options,
    ) as trainer:
        return await trainer.fit(train, epochs=1, callbacks=callbacks)


def running(pid: int) -> bool:
    """Whether the OS still runs process ``pid`` (a pidfd is readable once it has exited)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        return not select.select([fd], [], [], 0)[0]
    finally:
        os.close(fd)


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("asynctrain-worker")]


class Resizer(at.Callback):
    """At the k-th step event, resize the backend to ``plan[k]`` and check the pool."""

    def __init__(
        self, backend: Any, plan: dict[int, int], check: Callable[[Any, int], None]
    ) -> None:
        self.backend, self.plan, self.check = backend, plan, check
        self.events = 0
        self.sizes: list[int] = []

    async def on_step(self, event: at.StepEvent) -> None:
        self.events += 1
        size = self.plan.get(self.events)
        if size is not None:
            await self.backend.resize(size)
            self.check(self.backend, size)
            self.sizes.append(size)


class ProcessPoolCheck:
    """The pool as the OS sees it: the new child processes are exactly ``backend.pids``,
    all running, and every worker seen before and no longer listed has exited."""

    def __init__(self) -> None:
        self.before = _children()
        self.seen: set[int] = set()

    def __call__(self, backend: ProcessBackend, size: int) -> None:
        pids = set(backend.pids)
        assert backend.workers == len(pids) == size, (backend, pids)
        assert _children() - self.before == pids
        assert all(running(pid) for pid in pids)
        self.seen |= pids
        assert not [pid for pid in self.seen - pids if running(pid)]


def check_threads(backend: ThreadBackend, size: int) -> None:
    # The old pool's threads have ended; the new pool starts threads as tasks arrive.
    assert backend.workers == size
    assert len(worker_threads()) <= size


# -- resizing in the middle of a fit ------------------------------------------------------


@pytest.mark.parametrize(("mode", "options"), MODES, ids=[m for m, _ in MODES])
async def test_process_pool_2_1_3_mid_fit_keeps_every_bit(
    train: Dataset, mode: str, options: dict[str, int]
) -> None:
    reference = _bits((await _fit("inline", train, mode, **options)).params)
    check = ProcessPoolCheck()
    async with ProcessBackend(workers=2) as backend:
        resizer = Resizer(backend, {2: 1, 5: 3}, check)
        result = await _fit(backend, train, mode, callbacks=[resizer], **options)
        assert resizer.sizes == [1, 3]
        check(backend, 3)
        assert backend.stats.workers_started == 4  # 2, then one left, then 2 more
        assert backend.stats.retries == 0
    assert _bits(result.params) == reference
    assert not [pid for pid in check.seen if running(pid)]


@pytest.mark.parametrize(("mode", "options"), MODES, ids=[m for m, _ in MODES])
async def test_thread_pool_2_1_3_mid_fit_keeps_every_bit(
    train: Dataset, mode: str, options: dict[str, int]
) -> None:
    reference = _bits((await _fit("inline", train, mode, **options)).params)
    peak: list[int] = []

    class Watch(at.Callback):
        def on_step(self, event: at.StepEvent) -> None:
            peak.append(len(worker_threads()))

    async with ThreadBackend(workers=2) as backend:
        resizer = Resizer(backend, {2: 1, 5: 3}, check_threads)
        before = set(worker_threads())
        result = await _fit(backend, train, mode, callbacks=[resizer, Watch()], **options)
        assert not [t for t in before if t.is_alive()]  # the first pool's threads ended
        assert max(peak) <= 3
        assert max(peak[1:4]) <= 1  # one thread from the first resize to the second
        barrier = threading.Barrier(3)
        idents = await asyncio.gather(*(backend.run(thread_after, barrier) for _ in range(3)))
        assert len(set(idents)) == 3 == len(worker_threads())
    assert _bits(result.params) == reference
    assert worker_threads() == []


@pytest.mark.parametrize("kind", [ThreadBackend, ProcessBackend])
async def test_async_mode_runs_through_resizes(train: Dataset, kind: Any) -> None:
    """Async mode is not reproducible, but its lanes must go on through every resize."""
    sizes = {2: 1, 5: 3}
    async with kind(workers=2) as backend:

        def check(backend: Any, size: int) -> None:
            assert backend.workers == size

        result = await _fit(backend, train, "async", callbacks=[Resizer(backend, sizes, check)])
        assert result.steps >= 5
        assert backend.workers == 3
        assert np.isfinite(result.loss)


async def test_a_worker_killed_just_before_a_resize_changes_no_bit(train: Dataset) -> None:
    reference = _bits((await _fit("inline", train)).params)
    check = ProcessPoolCheck()
    killed: list[int] = []

    class KillThenResize(at.Callback):
        async def on_step(self, event: at.StepEvent) -> None:
            if event.step in (2, 6):
                killed.append(backend.pids[0])
                os.kill(killed[-1], signal.SIGKILL)  # its death is not seen yet
                await backend.resize(1 if event.step == 2 else 3)

    async with ProcessBackend(workers=2) as backend:
        result = await _fit(backend, train, callbacks=[KillThenResize()])
        check(backend, 3)
        assert not set(killed) & set(backend.pids)
    assert _bits(result.params) == reference
    assert not [pid for pid in killed if running(pid)]


async def test_shrinking_waits_for_the_tasks_of_leaving_workers() -> None:
    check = ProcessPoolCheck()
    async with ProcessBackend(workers=3) as backend:
        await backend.resize(3)  # the same size: returns once all three have started
        check(backend, 3)
        tasks = [asyncio.ensure_future(backend.run(pid_after, 0.5)) for _ in range(3)]
        await asyncio.sleep(0.1)  # the three are running (a shrink need not race them)
        await backend.resize(1)
        done = [task.done() for task in tasks]
        pids = await asyncio.gather(*tasks)
        assert len(set(pids)) == 3
        (staying,) = backend.pids
        assert all(d for d, pid in zip(done, pids, strict=True) if pid != staying)
        assert backend.stats.retries == 0
        check(backend, 1)


async def test_a_worker_killed_while_a_shrink_waits_for_it() -> None:
    check = ProcessPoolCheck()
    async with ProcessBackend(workers=2) as backend:
        await backend.resize(2)  # both started
        tasks = [asyncio.ensure_future(backend.run(pid_after, 1.0)) for _ in range(2)]
        await asyncio.sleep(0.2)
        shrink = asyncio.ensure_future(backend.resize(1))
        await asyncio.sleep(0)
        victim = backend.pids[0]
        os.kill(victim, signal.SIGKILL)  # the leaving one or the staying one: either works
        await shrink
        results = await asyncio.gather(*tasks)
        assert victim not in results  # its task ran again elsewhere
        assert backend.stats.retries == 1
        check(backend, 1)


async def test_concurrent_resizes_apply_one_after_another() -> None:
    check = ProcessPoolCheck()
    async with ProcessBackend(workers=2) as backend:
        await asyncio.gather(backend.resize(1), backend.resize(3), backend.resize(2))
        check(backend, 2)
    async with ThreadBackend(workers=2) as threads:
        await asyncio.gather(threads.resize(1), threads.resize(3), threads.resize(2))
        assert threads.workers == 2


async def test_growing_a_process_pool_under_load(train: Dataset) -> None:
    """Tasks waiting for a worker take the new ones as they start (not only after the step)."""
    check = ProcessPoolCheck()
    async with ProcessBackend(workers=1) as backend:
        tasks = [asyncio.ensure_future(backend.run(pid_after, 0.3)) for _ in range(4)]
        await backend.resize(4)
        pids = set(await asyncio.gather(*tasks))
        assert len(pids) >= 2
        check(backend, 4)


async def test_a_worker_that_fails_to_start_fails_the_resize_once() -> None:
    async with ProcessBackend(workers=1) as backend:
        await backend.resize(1)
        pool: Any = backend._pool
        start = pool._start_process

        def fail() -> None:
            raise OSError(24, "Too many open files")

        pool._start_process = fail
        with pytest.raises(at.BackendError, match=r"1 of the 3 workers.*Too many open files"):
            await backend.resize(3)
        pool._start_process = start
        assert await backend.run(pow, 2, 3) == 8  # no task hears of the failed starts again
        await backend.resize(3)
        assert len(backend.pids) == 3


# -- lifecycle and bad input ----------------------------------------------------------------


@pytest.mark.parametrize("kind", [ThreadBackend, ProcessBackend])
async def test_an_unopened_backend_records_the_size(kind: Any) -> None:
    backend = kind(workers=1)
    await backend.resize(3)
    assert backend.workers == 3
    assert "workers=3" in repr(backend)
    async with backend:
        if kind is ThreadBackend:
            barrier = threading.Barrier(3)
            idents = await asyncio.gather(*(backend.run(thread_after, barrier) for _ in range(3)))
            assert len(set(idents)) == 3
        else:
            await backend.resize(3)  # the same size: returns once all three have started
            assert len(backend.pids) == 3


@pytest.mark.parametrize("kind", [ThreadBackend, ProcessBackend, InlineBackend])
@pytest.mark.parametrize(
    ("workers", "error", "fragment"),
    [
        (0, at.ConfigError, "workers must be >= 1, got 0"),
        (-2, at.ConfigError, "got -2"),
        (1.5, at.ConfigTypeError, "got 1.5"),
        (True, at.ConfigTypeError, "got True"),
        ("2", at.ConfigTypeError, "got '2'"),
        (None, at.ConfigTypeError, "got None"),
    ],
)
async def test_bad_sizes_are_refused_naming_the_value(
    kind: Any, workers: object, error: type[Exception], fragment: str
) -> None:
    backend = kind() if kind is InlineBackend else kind(workers=1)
    async with backend:
        with pytest.raises(error, match=fragment):
            await backend.resize(workers)
        assert backend.workers == 1


@pytest.mark.parametrize("name", ["thread", "process"])
async def test_a_trainers_own_backend_resizes_between_fits(train: Dataset, name: str) -> None:
    """A trainer that made its backend from a name closes it after each fit; its
    ``backend`` is then the next fit's, unopened, of the last size: a resize between fits
    (or during one) sets the next fit's size. Before, ``trainer.backend.resize`` after a
    fit raised "closed; create a new ThreadBackend", which its user never made, and a
    size set during a fit was lost."""
    trainer = at.Trainer(SoftmaxRegression(128, 10), backend=name, workers=1, batch_size=400)

    class Grow(at.Callback):
        async def on_step(self, event: at.StepEvent) -> None:
            if event.step == 0:
                await trainer.backend.resize(2)

    first = await trainer.fit(train, epochs=1, callbacks=[Grow()])
    assert trainer.backend.state == "unopened"
    assert trainer.workers == 2
    await trainer.backend.resize(3)
    second = await trainer.fit(train, epochs=1)
    assert trainer.workers == 3
    assert trainer.backend.state == "unopened"
    async with at.Trainer(SoftmaxRegression(128, 10), backend="inline", batch_size=400) as ref:
        assert _bits((await ref.fit(train, epochs=1)).params) == _bits(first.params)
        assert _bits((await ref.fit(train, epochs=1)).params) == _bits(second.params)


async def test_the_inline_backend_has_one_worker() -> None:
    async with InlineBackend() as backend:
        await backend.resize(1)
        with pytest.raises(at.ConfigError, match="workers must be 1, got 2"):
            await backend.resize(2)
        assert backend.workers == 1


@pytest.mark.parametrize("kind", [ThreadBackend, ProcessBackend, InlineBackend])
async def test_a_closed_backend_refuses_to_resize(kind: Any) -> None:
    backend = kind() if kind is InlineBackend else kind(workers=1)
    async with backend:
        pass
    with pytest.raises(at.StateError, match="closed"):
        await backend.resize(1)


async def test_closing_during_a_shrink_fails_the_shrink_and_leaks_nothing() -> None:
    backend = ProcessBackend(workers=2)
    async with backend:
        tasks = [asyncio.ensure_future(backend.run(hang, 30.0)) for _ in range(2)]
        await asyncio.sleep(0.3)
        shrink = asyncio.ensure_future(backend.resize(1))
        await asyncio.sleep(0.1)
        assert not shrink.done()  # waits for a busy worker
    with pytest.raises(at.StateError, match="closed"):
        await shrink
    for task in tasks:
        with pytest.raises(at.StateError, match="closed"):
            await task
    assert backend.pids == []


async def test_closing_threads_during_a_resize_waits_for_it() -> None:
    backend = ThreadBackend(workers=2)
    async with backend:
        tasks = [asyncio.ensure_future(backend.run(hang, 0.3)) for _ in range(2)]
        await asyncio.sleep(0.05)
        resize = asyncio.ensure_future(backend.resize(1))
        late = asyncio.ensure_future(backend.run(pow, 2, 3))  # waits for the new pool
        await asyncio.sleep(0.05)
    with pytest.raises(at.StateError, match="closed while it resized"):  # as on processes
        await resize
    await asyncio.gather(*tasks)
    with pytest.raises(at.StateError, match="closed"):
        await late
    assert worker_threads() == []


async def test_a_cancelled_thread_resize_completes_before_it_raises() -> None:
    async with ThreadBackend(workers=2) as backend:
        old = worker_threads()
        tasks = [asyncio.ensure_future(backend.run(hang, 0.3)) for _ in range(2)]
        await asyncio.sleep(0.05)
        resize = asyncio.ensure_future(backend.resize(1))
        await asyncio.sleep(0.05)
        resize.cancel()
        with pytest.raises(asyncio.CancelledError):
            await resize
        assert all(task.done() for task in tasks)  # it waited for the old pool's tasks
        assert not [t for t in old if t.is_alive()]
        assert backend.workers == 1
        assert await backend.run(pow, 2, 3) == 8
        assert len(worker_threads()) == 1


async def test_a_cancelled_shrink_still_leaves_the_pool_that_size() -> None:
    check = ProcessPoolCheck()
    async with ProcessBackend(workers=2) as backend:
        tasks = [asyncio.ensure_future(backend.run(pid_after, 0.5)) for _ in range(2)]
        await asyncio.sleep(0.2)
        shrink = asyncio.ensure_future(backend.resize(1))
        await asyncio.sleep(0.05)
        shrink.cancel()
        with pytest.raises(asyncio.CancelledError):
            await shrink
        await asyncio.gather(*tasks)
        await backend.resize(1)  # already that size: returns at once
        assert backend.workers == 1
        await asyncio.gather(*(backend.run(pid_after, 0.0) for _ in range(3)))
        check(backend, 1)


async def test_wrappers_and_the_trainer_report_the_current_size() -> None:
    async with ThreadBackend(workers=2) as inner:
        slow = StragglerBackend(inner, shard=0, delay=0.0)
        trainer = at.Trainer(SoftmaxRegression(4, 2), backend=slow)
        await slow.resize(3)
        assert inner.workers == slow.workers == trainer.workers == 3
        assert "backend=thread+straggler(3)" in repr(trainer)


# -- stuck workers: task_timeout --------------------------------------------------------------


async def test_a_sigstopped_worker_is_replaced_and_the_fit_keeps_every_bit(
    train: Dataset,
) -> None:
    reference = _bits((await _fit("inline", train)).params)
    stopped: list[int] = []

    class Stop(at.Callback):
        def on_step(self, event: at.StepEvent) -> None:
            if event.step == 3:
                stopped.append(backend.pids[0])
                os.kill(stopped[0], signal.SIGSTOP)  # the next step sends it a shard

    async with ProcessBackend(workers=2, task_timeout=2.0) as backend:
        result = await _fit(backend, train, callbacks=[Stop()])
        assert backend.stats.retries == 1
        assert stopped[0] not in backend.pids
        assert len(backend.pids) == 2
    assert not running(stopped[0])
    assert _bits(result.params) == reference


async def test_a_shard_that_always_hangs_fails_naming_step_shard_and_timeout() -> None:
    async with ProcessBackend(workers=2, max_retries=1, task_timeout=0.3) as backend:
        started = time.monotonic()
        with pytest.raises(at.ShardFailedError) as info:
            await backend.run(hang, 30.0, FakeShard(step=4, shard=2))
        assert time.monotonic() - started < 20
        error = info.value
        assert (error.step, error.shard) == (4, 2)
        assert len(error.attempts) == 2
        assert all("past task_timeout=0.3s" in line for line in error.attempts)
        assert "shard 2 of step 4" in str(error)
        assert await backend.run(pow, 2, 5) == 32  # replaced workers serve on
        assert len(backend.pids) == 2


async def test_without_a_timeout_a_slow_task_is_left_alone() -> None:
    async with ProcessBackend(workers=1, task_timeout=5.0) as backend:
        (pid,) = {await backend.run(pid_after, 0.0)}
        assert await backend.run(pid_after, 0.3) == pid
        assert backend.stats.retries == 0


@pytest.mark.parametrize(
    ("timeout", "error", "fragment"),
    [
        (0, at.ConfigError, r"task_timeout must be in \(0.0"),
        (-1.0, at.ConfigError, "got -1.0"),
        (float("nan"), at.ConfigError, "finite"),
        (float("inf"), at.ConfigError, "finite"),
        ("1", at.ConfigTypeError, "got '1'"),
        (True, at.ConfigTypeError, "got True"),
    ],
)
def test_bad_task_timeouts_are_refused(
    timeout: object, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        ProcessBackend(workers=1, task_timeout=timeout)  # type: ignore[arg-type]
