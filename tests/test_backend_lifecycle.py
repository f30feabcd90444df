"""Backend lifecycle defects: errors of user code, process-wide state (BLAS limits, the
forkserver) and exceptions nobody retrieved."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import multiprocessing.forkserver
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _loops import OPENERS, used_then_another_loop
from conftest import LOOPS, _children
from threadpoolctl import threadpool_info, threadpool_limits

import asynctrain as at
from asynctrain.backends import InlineBackend, ProcessBackend, ThreadBackend
from asynctrain.backends._lifecycle import Lifecycle


class NeedsTwo(Exception):
    """Pickles, but cannot be rebuilt from its args: unpickling calls ``NeedsTwo(a)``."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)
        self.b = b


def raise_needs_two() -> None:
    raise NeedsTwo("first", "second")


def raise_interrupt() -> None:
    raise KeyboardInterrupt("from user code")


@pytest.mark.parametrize(
    ("fn", "args", "kind"),
    [(sys.exit, (3,), SystemExit), (raise_interrupt, (), KeyboardInterrupt)],
    ids=["SystemExit", "KeyboardInterrupt"],
)
async def test_system_exit_and_interrupt_in_user_code_are_user_errors(
    fn: Any, args: tuple[Any, ...], kind: type[BaseException]
) -> None:
    async with ProcessBackend(workers=1) as backend:
        await backend.run(pow, 2, 2)
        (pid,) = backend.pids
        with pytest.raises(kind) as info:
            await backend.run(fn, *args)
        assert "Traceback in worker pid" in "\n".join(getattr(info.value, "__notes__", []))
        assert backend.stats.retries == 0  # not a worker death: never retried
        assert backend.pids == [pid]  # the same worker serves on
        assert await backend.run(pow, 2, 3) == 8


async def test_an_exception_that_cannot_be_rebuilt_keeps_the_worker_traceback() -> None:
    async with ProcessBackend(workers=1) as backend:
        with pytest.raises(at.BackendError, match="cannot be rebuilt") as info:
            await backend.run(raise_needs_two)
    assert "NeedsTwo: first" in str(info.value)
    assert "in raise_needs_two" in str(info.value)


class NotesTuple(Exception):
    """Its ``__notes__`` is a tuple: ``add_note`` refuses it."""


def raise_notes_tuple() -> None:
    error = NotesTuple("noted")
    error.__notes__ = ("set by user code",)  # type: ignore[assignment]
    raise error


def _exit_if_parent() -> str:
    if multiprocessing.parent_process() is None:  # unpickled in the parent, on its loop
        raise SystemExit("from unpickling")
    return "unpickled in the worker"


class ExitsOnUnpickle:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _exit_if_parent, ()


def return_exits_on_unpickle() -> ExitsOnUnpickle:
    return ExitsOnUnpickle()


class ExitsOnUnpickleError(Exception):
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _exit_if_parent, ()


def raise_exits_on_unpickle() -> None:
    raise ExitsOnUnpickleError()


async def test_a_reply_that_cannot_be_rebuilt_never_hangs_nor_stops_the_loop() -> None:
    # An exception whose note could not be added left the task waiting for ever; a
    # SystemExit raised while unpickling a reply escaped the loop's callback.
    async with ProcessBackend(workers=1) as backend:
        with pytest.raises(NotesTuple, match="noted"):
            await asyncio.wait_for(backend.run(raise_notes_tuple), 30)
        with pytest.raises(at.BackendError, match="cannot be unpickled: SystemExit"):
            await asyncio.wait_for(backend.run(return_exits_on_unpickle), 30)
        with pytest.raises(at.BackendError, match=r"cannot be rebuilt here \(SystemExit"):
            await asyncio.wait_for(backend.run(raise_exits_on_unpickle), 30)
        assert backend.stats.retries == 0
        assert await backend.run(pow, 2, 3) == 8


class Boom(ValueError):
    pass


class FailingModel:
    """Its first gradient fails at once, every later one after a while: the siblings of
    the first failing shard are still running when the fit gives up on them."""

    def __init__(self) -> None:
        self.inner = at.models.LogisticRegression(4)
        self.n_features, self.n_classes, self.dtype = 4, 2, self.inner.dtype
        self._calls = 0
        self._lock = threading.Lock()

    def init(self, rng: np.random.Generator) -> Any:
        return self.inner.init(rng)

    def predict(self, params: Any, X: Any) -> Any:
        return self.inner.predict(params, X)

    def loss_and_grad(self, params: Any, X: Any, y: Any) -> Any:
        with self._lock:
            self._calls += 1
            first = self._calls == 1
        if not first:
            time.sleep(0.05)
        raise Boom("shard failed")


async def test_failing_shards_on_threads_leave_no_unretrieved_exception() -> None:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
    rng = np.random.default_rng(0)
    data = at.data.Dataset(rng.normal(size=(400, 4)), (rng.random(400) > 0.5).astype(int))
    try:
        trainer = at.Trainer(FailingModel(), backend="thread", workers=2, shards=4)
        async with trainer:
            with pytest.raises(Boom):
                await trainer.fit(data, epochs=1)
        await asyncio.sleep(0.2)  # the sibling shards finish
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


def _blas_threads() -> set[int]:
    return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


@pytest.mark.parametrize("first_kind", [ThreadBackend, InlineBackend])
async def test_blas_limits_are_reference_counted_across_backends(first_kind: Any) -> None:
    # The inline backend held none: its math ran on the caller's BLAS threads (2 here),
    # which rounded some products otherwise than every other backend's one thread did.
    if not _blas_threads():
        pytest.skip("no BLAS library loaded")
    with threadpool_limits(limits=2, user_api="blas"):
        first = first_kind() if first_kind is InlineBackend else first_kind(workers=1)
        second = ThreadBackend(workers=1)
        await first.__aenter__()
        assert _blas_threads() == {1}
        await second.__aenter__()
        assert _blas_threads() == {1}
        await first.aclose()
        assert _blas_threads() == {1}  # the second backend still runs
        await second.aclose()
        assert _blas_threads() == {2}  # what was there before the first


async def test_an_inline_backend_never_closed_gives_the_blas_limit_back_when_garbage() -> None:
    # A trainer given a backend opens it on first use and leaves it open: the limit of
    # that backend held BLAS to one thread for the rest of the process.
    if not _blas_threads():
        pytest.skip("no BLAS library loaded")
    with threadpool_limits(limits=2, user_api="blas"):
        backend = InlineBackend()
        assert await backend.run(pow, 2, 3) == 8  # opened on first use
        assert _blas_threads() == {1}
        del backend
        gc.collect()
        assert _blas_threads() == {2}


async def test_the_process_backend_leaves_the_global_forkserver_alone() -> None:
    server: Any = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]
    before = list(server._preload_modules)
    server.set_forkserver_preload(["json"])  # what some other library in the process chose
    try:
        async with ProcessBackend(workers=1) as backend:
            assert await backend.run(pow, 2, 5) == 32
        assert server._preload_modules == ["json"]
    finally:
        server.set_forkserver_preload(before)


@pytest.mark.parametrize("new_loop", list(LOOPS.values()), ids=list(LOOPS))
@pytest.mark.parametrize("opener", OPENERS)
def test_aclose_on_another_loop_stops_the_workers_of_the_opening_one(
    new_loop: Any, opener: str
) -> None:
    # The pool's readers and futures belong to the loop that opened it: awaited from a
    # second asyncio.run, aclose waited for them for ever.
    backend = ProcessBackend(workers=2)

    async def use() -> int:
        await backend.share({"x": np.ones(4)})
        return await backend.run(pow, 2, 3)

    with used_then_another_loop(new_loop, opener, use) as (result, _, second):
        assert result == 8
        pids = backend.pids
        second.run_until_complete(asyncio.wait_for(backend.aclose(), 30))
    assert backend.state == "closed"
    assert backend.pids == []
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


@pytest.mark.parametrize("new_loop", list(LOOPS.values()), ids=list(LOOPS))
def test_aclose_after_the_opening_loop_closed_mid_start_leaves_no_worker(new_loop: Any) -> None:
    # A worker starts on a thread of its own and joins the pool when its loop resumes the
    # start. A loop closed while starts were under way (opened, then closed at once) never
    # resumes them, and aclose from another loop killed only the workers that had joined:
    # the processes those threads went on to start lived on, with their sockets.
    before = _children()
    backend = ProcessBackend(workers=2)

    async def use() -> None:
        await backend.share({"x": np.ones(4)})  # opens the pool: both starts under way

    first = new_loop()
    first.run_until_complete(use())
    first.close()
    second = new_loop()
    try:
        second.run_until_complete(asyncio.wait_for(backend.aclose(), 30))
    finally:
        second.close()
    for thread in threading.enumerate():  # the starts' threads, which ran on meanwhile
        if thread.name.startswith("asynctrain-off-loop-"):
            thread.join(30)
    assert _children() - before == set()
    assert backend.state == "closed"


@pytest.mark.parametrize("new_loop", list(LOOPS.values()), ids=list(LOOPS))
@pytest.mark.parametrize("opener", OPENERS)
def test_release_on_another_loop_tells_the_workers_on_the_opening_one(
    new_loop: Any, opener: str
) -> None:
    # As aclose: the pool's pipes belong to the loop that opened it. release() from a
    # second loop wrote to them from there (racing the first loop's own writes when it
    # runs in another thread, or watching a pipe with a closed loop).
    backend = ProcessBackend(workers=2)
    told: list[asyncio.AbstractEventLoop | None] = []

    async def use() -> Any:
        shared = await backend.share({"x": np.ones(4)})
        assert await backend.run(pow, 2, 3) == 8
        pool: Any = backend._pool
        broadcast = pool.broadcast

        def recorded(message: bytes) -> None:
            told.append(asyncio._get_running_loop())
            broadcast(message)

        pool.broadcast = recorded
        return shared

    with used_then_another_loop(new_loop, opener, use) as (shared, first, second):
        segment = Path("/dev/shm") / shared.key
        assert segment.exists()
        second.run_until_complete(asyncio.wait_for(backend.release(shared), 30))
        assert not segment.exists()  # unlinked at once, whichever loop
        if opener == "running":  # the opening loop tells its workers on its next turn
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), first).result(timeout=30)
        second.run_until_complete(asyncio.wait_for(backend.aclose(), 30))
    # Told on the opening loop (a stopped one: when aclose ran it); a closed loop's
    # workers are told nothing, only killed.
    assert told == ([] if opener == "closed" else [first])
    assert backend.state == "closed"


UNGUARDED = """
import asynctrain as at
from asynctrain.backends import ProcessBackend

async def main():
    async with ProcessBackend(workers=2) as backend:
        print(await backend.run(pow, 2, 10))

{call}
"""


@pytest.mark.parametrize("guarded", [False, True], ids=["unguarded", "guarded"])
def test_a_script_without_the_main_guard_is_told_so_once(tmp_path: Path, guarded: bool) -> None:
    call = 'if __name__ == "__main__":\n    at.run(main())' if guarded else "at.run(main())"
    script = tmp_path / "script.py"
    script.write_text(UNGUARDED.format(call=call))
    env = {**os.environ, "PYTHONPATH": str(Path(at.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    if guarded:
        assert (done.returncode, done.stdout) == (0, "1024\n"), done.stderr
        return
    assert done.returncode == 1
    assert done.stderr.count("Traceback") == 1  # the parent's alone: no worker started
    assert 'without the guard `if __name__ == "__main__":`' in done.stderr
    assert f"{script}, line 9" in done.stderr


NEVER_CLOSED = """
import asyncio
import os
import signal

from asynctrain.backends import ProcessBackend


def ignore_sigterm() -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # model code: the worker outlives SIGTERM
    return os.getpid()


if __name__ == "__main__":
    backend = ProcessBackend(workers=2)

    async def main() -> None:
        await asyncio.gather(backend.run(ignore_sigterm), backend.run(ignore_sigterm))

    asyncio.run(main())
    print("exiting without aclose", flush=True)
"""


def test_an_unclosed_pool_whose_workers_ignore_sigterm_lets_python_exit(tmp_path: Path) -> None:
    # multiprocessing SIGTERMs daemonic workers at exit and joins them: the exit hung.
    script = tmp_path / "never_closed.py"
    script.write_text(NEVER_CLOSED)
    env = {**os.environ, "PYTHONPATH": str(Path(at.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "exiting without aclose\n"), done.stderr


class SlowToOpen(Lifecycle):
    """A backend whose open waits for ``go`` (``entered`` once it does), recording its
    opens and closes."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.go = asyncio.Event(), asyncio.Event()
        self.calls: list[str] = []

    async def _open(self) -> None:
        self.calls.append("open")
        self.entered.set()
        await self.go.wait()
        self.calls.append("opened")

    async def _close(self) -> None:
        self.calls.append("close")


async def test_aclose_while_the_backend_opens_is_not_lost() -> None:
    """aclose() during an open found nothing open, marked the backend closed and returned;
    the open then marked it open: the caller's call ran on a backend it had closed, and
    what it started (a Dask LocalCluster's worker processes) ran on until a second
    aclose. The opener now closes what it opened and raises StateError."""
    backend = SlowToOpen()
    opening = asyncio.ensure_future(backend.__aenter__())
    await backend.entered.wait()
    await backend.aclose()
    assert backend.state == "closed"
    backend.go.set()
    with pytest.raises(at.StateError, match="closed while it opened"):
        await opening
    assert backend.state == "closed"
    assert backend.calls == ["open", "opened", "close"]
