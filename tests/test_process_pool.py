"""The process pool's idle order (the worker used last takes the next task) and its
wake-ups: deaths of idle and just-used workers, start failures with tasks waiting, and
cancellation at any point leave a pool that serves, and no task waits for ever."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from asynctrain.backends import ProcessBackend

# -- functions the workers run ------------------------------------------------------------


def pid_when_told(fifo: str) -> int:
    """Block until the test writes to ``fifo``, then return this worker's pid."""
    with open(fifo) as pipe:
        pipe.read()
    return os.getpid()


def pid_after_spins(spins: int) -> int:
    """Compute a little (a task that is sometimes cancelled as it runs), return the pid."""
    total = 0
    for i in range(spins):
        total += i
    return os.getpid() if total >= 0 else -1


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "go.fifo"
    os.mkfifo(path)
    return path


async def killed_while_idle(backend: ProcessBackend, pid: int) -> None:
    """SIGKILL the idle worker ``pid`` and wait until the pool has seen it exit."""
    pool: Any = backend._pool
    (worker,) = [w for w in pool._workers if w.pid == pid]
    os.kill(pid, signal.SIGKILL)
    await worker.exited


# -- the idle order -------------------------------------------------------------------------


async def test_tasks_one_after_another_go_to_the_worker_used_last() -> None:
    async with ProcessBackend(workers=3) as backend:
        await backend.resize(3)  # all three idle
        pids = [await backend.run(os.getpid) for _ in range(6)]
        assert len(set(pids)) == 1  # round robin would give 3
        assert len(backend.pids) == 3


async def test_the_worker_that_finished_last_takes_the_next_task(fifo: Path) -> None:
    async with ProcessBackend(workers=3) as backend:
        await backend.resize(3)
        slow = asyncio.create_task(backend.run(pid_when_told, str(fifo)))
        quick = await backend.run(os.getpid)  # on another worker: the first is busy
        await asyncio.to_thread(fifo.write_text, "go")  # now the slow one finishes
        late = await slow
        assert late != quick
        assert {await backend.run(os.getpid) for _ in range(3)} == {late}


async def test_shrinking_keeps_the_worker_used_last() -> None:
    async with ProcessBackend(workers=3) as backend:
        await backend.resize(3)
        used = await backend.run(os.getpid)
        await backend.resize(1)
        assert backend.pids == [used]
        assert await backend.run(os.getpid) == used


# -- deaths -------------------------------------------------------------------------------


async def test_the_worker_used_last_killed_while_idle_is_skipped_and_replaced() -> None:
    async with ProcessBackend(workers=2) as backend:
        await backend.resize(2)
        used = await backend.run(os.getpid)
        await killed_while_idle(backend, used)
        other = await backend.run(os.getpid)
        assert other != used
        assert backend.stats.retries == 0  # skipped, not tried
        # Two at once: the second finds no idle worker and starts a replacement.
        await asyncio.gather(backend.run(os.getpid), backend.run(os.getpid))
        await backend.resize(2)  # waits for the start under way
        assert len(backend.pids) == 2
        assert used not in backend.pids
        assert backend.stats.workers_started == 3


async def test_the_worker_used_last_killed_before_the_pool_notices() -> None:
    async with ProcessBackend(workers=2) as backend:
        await backend.resize(2)
        used = await backend.run(os.getpid)
        os.kill(used, signal.SIGKILL)  # no await: the pool still counts it idle and alive
        other = await backend.run(os.getpid)
        assert other != used
        assert backend.stats.retries == 1  # the task went to the dead worker, then on
        assert used not in backend.pids


async def test_an_idle_worker_killed_when_others_are_busy(fifo: Path) -> None:
    async with ProcessBackend(workers=2) as backend:
        await backend.resize(2)
        busy = asyncio.create_task(backend.run(pid_when_told, str(fifo)))
        idle = await backend.run(os.getpid)
        await killed_while_idle(backend, idle)
        waiting = asyncio.create_task(backend.run(os.getpid))  # starts a replacement
        await asyncio.to_thread(fifo.write_text, "go")
        assert await waiting not in (idle, None)
        assert await busy != idle
        await backend.resize(2)
        assert len(backend.pids) == 2
        assert idle not in backend.pids


# -- start failures -------------------------------------------------------------------------


def _failing_starts(pool: Any, failures: int) -> list[int]:
    """Make the next ``failures`` worker starts of ``pool`` fail; returns a count of tries."""
    start, tries = pool._start_process, [0]

    def fail_then_start() -> Any:
        tries[0] += 1
        if tries[0] <= failures:
            raise OSError(24, "Too many open files")
        return start()

    pool._start_process = fail_then_start
    return tries


@pytest.mark.parametrize("waiting", [1, 3])
async def test_every_waiting_task_hears_of_starts_that_keep_failing(waiting: int) -> None:
    async with ProcessBackend(workers=1) as backend:
        await backend.resize(1)
        await killed_while_idle(backend, backend.pids[0])
        tries = _failing_starts(backend._pool, failures=waiting)
        tasks = [backend.run(pow, 2, 3) for _ in range(waiting)]
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        assert [type(o) for o in outcomes] == [OSError] * waiting
        assert tries[0] == waiting  # each heard of its own start, none of another's twice
        assert await backend.run(pow, 2, 3) == 8  # the next start succeeds
        assert len(backend.pids) == 1


async def test_one_failed_start_fails_one_waiting_task_and_the_others_run() -> None:
    async with ProcessBackend(workers=1) as backend:
        await backend.resize(1)
        await killed_while_idle(backend, backend.pids[0])
        _failing_starts(backend._pool, failures=1)
        tasks = [backend.run(pow, 2, i) for i in range(4)]
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        errors = [o for o in outcomes if isinstance(o, OSError)]
        assert len(errors) == 1
        assert all(o == 2**i for i, o in enumerate(outcomes) if not isinstance(o, OSError))
        assert len(backend.pids) == 1


# -- cancellation ---------------------------------------------------------------------------


async def test_a_wake_up_that_meets_a_cancel_goes_to_the_next_waiting_task() -> None:
    async with ProcessBackend(workers=1) as backend:
        await backend.resize(1)
        pool: Any = backend._pool
        worker = await pool._acquire()  # the only worker, now taken
        first = asyncio.create_task(pool._acquire())
        second = asyncio.create_task(pool._acquire())
        await asyncio.sleep(0)  # both run up to their wait
        assert len(pool._waiters) == 2
        pool._idle.append(worker)
        pool._wake()  # wakes ``first`` ...
        first.cancel()  # ... which is cancelled before it runs: ``second`` must hear
        assert await asyncio.wait_for(second, 10) is worker
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not pool._waiters
        pool._idle.append(worker)
        assert await backend.run(os.getpid) == worker.pid


async def test_a_cancelled_waiter_that_a_wake_up_passed_over_leaves_quietly() -> None:
    """Cancelled while waiting, then a wake-up (which skips a done waiter) takes it off
    the line before its task runs: it must not look for itself there (found in the modes
    bench, ssp on processes, as ``ValueError: ... not in deque``)."""
    async with ProcessBackend(workers=1) as backend:
        await backend.resize(1)
        pool: Any = backend._pool
        worker = await pool._acquire()
        first = asyncio.create_task(pool._acquire())
        second = asyncio.create_task(pool._acquire())
        await asyncio.sleep(0)
        assert len(pool._waiters) == 2
        first.cancel()  # its waiter is cancelled now; its task runs later
        pool._idle.append(worker)
        pool._wake()  # skips the cancelled waiter, wakes ``second``
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await asyncio.wait_for(second, 10) is worker
        assert not pool._waiters
        pool._idle.append(worker)
        assert await backend.run(os.getpid) == worker.pid


@pytest.mark.parametrize("seed", [0, 1])
async def test_cancelling_at_random_points_leaves_a_pool_that_serves(seed: int) -> None:
    rng = random.Random(seed)
    async with ProcessBackend(workers=2) as backend:
        for _ in range(12):
            spins = [rng.choice([0, 10_000, 300_000]) for _ in range(rng.randint(1, 5))]
            tasks = [asyncio.create_task(backend.run(pid_after_spins, n)) for n in spins]
            for _ in range(rng.randint(0, 12)):  # cancel after some loop iterations
                await asyncio.sleep(0)
            for task in rng.sample(tasks, rng.randint(0, len(tasks))):
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for outcome in outcomes:
                assert isinstance(outcome, (int, asyncio.CancelledError))
        pool: Any = backend._pool
        assert pool.busy == 0
        assert not pool._waiters
        pids = await asyncio.gather(*(backend.run(os.getpid) for _ in range(4)))
        await backend.resize(2)
        assert set(pids) <= set(backend.pids)
        assert len(backend.pids) == 2
