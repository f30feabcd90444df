"""ProcessBackend under real faults: killed workers, dying shards, a killed parent, cancels."""

from __future__ import annotations

import asyncio
import ctypes
import os
import select
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

import asynctrain as at
from asynctrain._shm import our_segments, sweep_stale_segments
from asynctrain.backends import ProcessBackend

# -- functions the workers run ------------------------------------------------------------


def report_then_sleep(fifo: str, marker: str, value: int) -> int:
    """First run: tell the test our pid, then hang (to be killed). Reruns: answer at once."""
    if not os.path.exists(marker):
        Path(marker).touch()
        with open(fifo, "w") as pipe:
            pipe.write(str(os.getpid()))
        time.sleep(60)
    return value * 2


def exit_always(code: int, task: Any = None) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


class UserProblem(ValueError):
    """An exception type defined by user code."""


def deep_user_error(value: int) -> None:
    def inner() -> None:
        raise UserProblem(f"bad value {value}")

    inner()


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("carries a lambda")
        self.fn = lambda: None


def raise_unpicklable() -> None:
    raise Unpicklable()


class FakeShard(NamedTuple):
    step: int
    shard: int


class KillOnce:
    """A model that SIGKILLs its worker on its ``at_call``-th shard, once per run."""

    def __init__(self, model: Any, counter: str, marker: str, at_call: int) -> None:
        self.model, self.counter, self.marker, self.at_call = model, counter, marker, at_call
        self.n_features, self.n_classes, self.dtype = model.n_features, model.n_classes, model.dtype

    def init(self, rng: np.random.Generator) -> Any:
        return self.model.init(rng)

    def predict(self, params: Any, X: Any) -> Any:
        return self.model.predict(params, X)

    def loss_and_grad(self, params: Any, X: Any, y: Any) -> Any:
        if self._is_the_call():
            os.kill(os.getpid(), signal.SIGKILL)
        return self.model.loss_and_grad(params, X, y)

    def _is_the_call(self) -> bool:
        """True in exactly one call, the ``at_call``-th, whichever processes race."""
        fd = os.open(self.counter, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, b".")  # O_APPEND: atomic; our own offset is our call number
            calls = os.lseek(fd, 0, os.SEEK_CUR)
        finally:
            os.close(fd)
        if calls != self.at_call:
            return False
        try:  # claim it: O_EXCL lets exactly one process create the marker
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


class KillAfterWriting(KillOnce):
    """A model whose ``at_call``-th shard SIGKILLs its worker (once) as the task function
    returns: after it wrote its results to shared memory, before its reply is sent."""

    def loss_and_grad(self, params: Any, X: Any, y: Any) -> Any:
        if self._is_the_call():
            frame = sys._getframe(1)
            while frame.f_back is not None and frame.f_code.co_name != "local_shard":
                frame = frame.f_back
            task_code = frame.f_code

            def kill_on_return(frame: Any, event: str, arg: Any) -> None:
                if event == "return" and frame.f_code is task_code:
                    os.kill(os.getpid(), signal.SIGKILL)

            sys.setprofile(kill_on_return)
        return self.model.loss_and_grad(params, X, y)


class FailOnce(KillOnce):
    """A model that raises UserProblem on its ``at_call``-th shard (once), while its
    sibling shards are still running slowly."""

    def loss_and_grad(self, params: Any, X: Any, y: Any) -> Any:
        if self._is_the_call():
            raise UserProblem("shard failed in user code")
        time.sleep(0.05)
        return self.model.loss_and_grad(params, X, y)


# -- helpers --------------------------------------------------------------------------------


async def read_fifo(path: Path) -> str:
    """Wait (on the event loop, no polling) for a worker to write to the FIFO ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, ready.set_result, None)
    try:
        await asyncio.wait_for(ready, 30)
        return os.read(fd, 100).decode()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Pids still alive after ``timeout`` seconds (pidfds: woken by each exit, no polling)."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    try:
        while fds and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(fds), [], [], left)
            for fd in ready:
                os.close(fd)
                del fds[fd]
        return sorted(fds.values())
    finally:
        for fd in fds:
            os.close(fd)


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pid.fifo"
    os.mkfifo(path)
    return path


# -- killed workers -------------------------------------------------------------------------


async def test_a_worker_killed_mid_task_is_replaced_and_the_task_rerun(
    fifo: Path, tmp_path: Path
) -> None:
    async with ProcessBackend(workers=1) as backend:
        task = asyncio.create_task(
            backend.run(report_then_sleep, str(fifo), str(tmp_path / "ran"), 21)
        )
        pid = int(await read_fifo(fifo))
        os.kill(pid, signal.SIGKILL)
        assert await task == 42
        assert backend.stats.retries == 1
        assert backend.stats.workers_started == 2
        assert pid not in backend.pids


async def test_a_shard_that_always_kills_its_worker_fails_after_the_budget() -> None:
    async with ProcessBackend(workers=2, max_retries=2) as backend:
        started = time.monotonic()
        with pytest.raises(at.ShardFailedError) as info:
            await backend.run(exit_always, 7, FakeShard(step=5, shard=1))
        assert time.monotonic() - started < 20
        error = info.value
        assert (error.step, error.shard) == (5, 1)
        assert len(error.attempts) == 3
        assert all("exited with code 7" in line for line in error.attempts)
        assert "shard 1 of step 5" in str(error)
        assert "attempt 3:" in str(error)
        assert await backend.run(pow, 2, 5) == 32  # the pool still works


async def test_other_tasks_that_kill_their_worker_fail_with_backend_error() -> None:
    async with ProcessBackend(workers=1, max_retries=0) as backend:
        with pytest.raises(at.BackendError, match=r"attempt 1: worker pid \d+ killed by SIGSEGV"):
            await backend.run(segfault)


async def test_user_exceptions_keep_their_type_and_the_worker_traceback() -> None:
    async with ProcessBackend(workers=1) as backend:
        with pytest.raises(UserProblem, match="bad value 3") as info:
            await backend.run(deep_user_error, 3)
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert "Traceback in worker pid" in notes
        assert "in inner" in notes
        assert backend.stats.retries == 0


async def test_an_unpicklable_exception_arrives_as_backend_error_with_its_text() -> None:
    async with ProcessBackend(workers=1) as backend:
        with pytest.raises(at.BackendError, match="carries a lambda") as info:
            await backend.run(raise_unpicklable)
        assert "raise_unpicklable" in str(info.value)


# -- the parent dies -----------------------------------------------------------------------

PARENT = """
import asyncio, sys, time
import numpy as np
from asynctrain.backends import ProcessBackend

async def main():
    backend = ProcessBackend(workers=2)
    await backend.__aenter__()
    await backend.share({"X": np.zeros((100, 10))})
    await asyncio.gather(*(backend.run(time.sleep, 0.2) for _ in range(2)))
    busy = asyncio.ensure_future(backend.run(time.sleep, 600))  # one busy, one idle
    await asyncio.sleep(0.2)
    print(*backend.pids, flush=True)
    await busy

if __name__ == "__main__":
    asyncio.run(main())
"""


async def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT))
    parent = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(parent.stdout.readline(), 60)
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2
    finally:
        parent.kill()
        await parent.communicate()  # to end-of-file: uvloop keeps an unread pipe open
    assert await asyncio.to_thread(wait_gone, pids, 5.0) == []
    sweep_stale_segments()
    assert not {s for s in our_segments() if s.startswith(f"asynctrain_{parent.pid}_")}


# -- cancellation and close -----------------------------------------------------------------


async def test_cancelling_a_running_task_kills_its_worker(fifo: Path, tmp_path: Path) -> None:
    async with ProcessBackend(workers=1) as backend:
        task = asyncio.create_task(
            backend.run(report_then_sleep, str(fifo), str(tmp_path / "ran"), 1)
        )
        pid = int(await read_fifo(fifo))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert wait_gone([pid], 0.0) == []  # gone by the time CancelledError arrived
        assert await backend.run(pow, 2, 3) == 8  # a replacement starts on demand


async def test_cancelling_a_waiting_task_leaves_the_busy_worker_alone() -> None:
    async with ProcessBackend(workers=1) as backend:
        running = asyncio.create_task(backend.run(time.sleep, 0.3))
        waiting = asyncio.create_task(backend.run(pow, 2, 2))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await running
        assert backend.stats.workers_started == 1


async def test_aclose_stops_busy_workers_and_fails_their_tasks(fifo: Path, tmp_path: Path) -> None:
    backend = ProcessBackend(workers=1)
    async with backend:
        await backend.share({"X": np.zeros(10)})
        task = asyncio.create_task(
            backend.run(report_then_sleep, str(fifo), str(tmp_path / "ran"), 1)
        )
        busy = int(await read_fifo(fifo))
        waiting = asyncio.create_task(backend.run(pow, 2, 2))
        await asyncio.sleep(0)  # it now waits for the only worker
        pids = backend.pids
        assert pids == [busy]
    for caller in (task, waiting):
        with pytest.raises(at.StateError, match="closed"):
            await caller
    assert wait_gone(pids, 0.0) == []
    with pytest.raises(at.StateError, match="closed"):
        await backend.run(pow, 2, 2)


async def test_a_cancelled_aclose_still_stops_every_worker_and_unlinks_every_segment() -> None:
    # aclose gives an idle worker 2 s to exit on end-of-file, then kills it. A cancel in
    # that wait (a second cancel of a task leaving `async with ProcessBackend()`) used to
    # cut the close short: the stopped worker was never killed, the segments stayed in
    # /dev/shm, and the backend, marked closed, never closed them.
    backend = ProcessBackend(workers=2)
    await backend.__aenter__()
    handle = await backend.share({"x": np.zeros(1000)})
    assert await asyncio.gather(*(backend.run(pow, 2, n) for n in range(4))) == [1, 2, 4, 8]
    pids = backend.pids
    os.kill(pids[0], signal.SIGSTOP)
    closing = asyncio.create_task(backend.aclose())
    await asyncio.sleep(0.2)  # in the wait for the stopped worker
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert wait_gone(pids, 0.0) == []
    assert handle.key not in our_segments()


# -- a real fit -----------------------------------------------------------------------------


async def _fit(backend: Any, model: Any, workers: int | None = None) -> dict[str, np.ndarray]:
    data = at.data.synthetic("mlp", n=1024, seed=1)
    async with at.Trainer(
        model,
        at.optim.adam(1e-2),
        backend=backend,
        workers=workers,
        shards=4,
        batch_size=256,
        seed=7,
    ) as trainer:
        result = await trainer.fit(data, epochs=5)
    return dict(result.params)


@pytest.mark.parametrize("workers", [1, 2, 4])
async def test_same_seed_same_bits_on_every_backend(workers: int) -> None:
    model = at.models.MLP((128, 32, 10))
    reference = await _fit("inline", model)
    for backend in ("thread", "process"):
        params = await _fit(backend, model, workers)
        for key, value in reference.items():
            np.testing.assert_array_equal(params[key], value, err_msg=f"{backend} {key}")


async def test_a_worker_killed_in_epoch_2_of_5_changes_no_bit(tmp_path: Path) -> None:
    mlp = at.models.MLP((128, 32, 10))
    reference = await _fit("inline", mlp)
    # 1024 samples / 256 per batch = 4 steps of 4 shards: calls 17..32 are epoch 2.
    model = KillOnce(mlp, str(tmp_path / "calls"), str(tmp_path / "killed"), at_call=22)
    async with ProcessBackend(workers=2) as backend:
        params = await _fit(backend, model)
        assert (tmp_path / "killed").exists()
        assert backend.stats.retries == 1
    for key, value in reference.items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)


async def test_a_local_round_rerun_after_its_worker_wrote_its_state_changes_no_bit(
    tmp_path: Path,
) -> None:
    # Local mode keeps each shard's optimizer state in a shared slot that the shard's task
    # rewrites. A worker killed after that write but before its reply has its task re-run:
    # the re-run must start from the committed state, not from the one the dead worker
    # wrote (which would apply the shard's Adam steps twice).
    async def fit(backend: Any, model: Any) -> dict[str, np.ndarray]:
        data = at.data.synthetic("softmax", n=2048, seed=0)
        async with at.Trainer(
            model, at.optim.adam(1e-2), backend=backend, shards=2, batch_size=256,
            mode="local", local_steps=2,
        ) as trainer:  # fmt: skip
            result = await trainer.fit(data, epochs=1)
        return dict(result.params)

    softmax = at.models.SoftmaxRegression(128, 10)
    reference = await fit("inline", softmax)
    # 2 shards x 2 local steps: calls 5..8 are round 2; call 6 ends shard 0's or 1's task.
    model = KillAfterWriting(softmax, str(tmp_path / "calls"), str(tmp_path / "killed"), 6)
    async with ProcessBackend(workers=2) as backend:
        params = await fit(backend, model)
        assert (tmp_path / "killed").exists()
        assert backend.stats.retries == 1
    for key, value in reference.items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)


async def test_a_user_error_in_one_shard_stops_the_fit_and_the_pool_recovers(
    tmp_path: Path,
) -> None:
    mlp = at.models.MLP((128, 32, 10))
    model = FailOnce(mlp, str(tmp_path / "calls"), str(tmp_path / "failed"), at_call=6)
    async with ProcessBackend(workers=2) as backend:
        with pytest.raises(UserProblem, match="shard failed") as info:
            await _fit(backend, model)
        assert "Traceback in worker pid" in "\n".join(info.value.__notes__)
        params = await _fit(backend, mlp)  # siblings were killed; replacements serve this fit
    reference = await _fit("inline", mlp)
    for key, value in reference.items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)


class StopAt:
    """A callback that signals the test at a given step."""

    def __init__(self, step: int) -> None:
        self.step, self.reached = step, asyncio.Event()

    def on_step(self, event: Any) -> None:
        if event.step == self.step:
            self.reached.set()

    def on_epoch(self, event: Any) -> None:
        pass


async def test_cancelling_a_fit_leaves_nothing_running() -> None:
    data = at.data.synthetic("mlp", n=4096, seed=1)
    model = at.models.MLP((128, 32, 10))
    stop = StopAt(step=3)
    async with ProcessBackend(workers=2) as backend:
        async with at.Trainer(model, backend=backend, shards=4, batch_size=256) as trainer:
            fit = asyncio.create_task(trainer.fit(data, epochs=50, callbacks=[stop]))
            await stop.reached.wait()
            fit.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fit
            assert backend.stats.tasks < 50 * 16
            assert trainer.state.step >= 4
        assert await backend.run(pow, 2, 4) == 16
