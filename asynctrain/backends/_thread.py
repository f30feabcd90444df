"""ThreadBackend: a thread pool for shard math that runs in BLAS (which releases the GIL)."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy.typing as npt

from asynctrain._checks import check_int
from asynctrain._exceptions import StateError
from asynctrain._offloop import off_loop
from asynctrain._threads import ThreadPool
from asynctrain._types import State
from asynctrain.backends._base import LocalShared
from asynctrain.backends._blas import BlasLimit
from asynctrain.backends._lifecycle import Lifecycle
from asynctrain.backends._priority import lower_priority

T = TypeVar("T")


def default_workers() -> int:
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ThreadBackend(Lifecycle):
    """Run shard functions on a pool of threads in this process.

    Good when each shard's time goes into large numpy/BLAS calls, which release the GIL.
    BLAS runs one thread per worker while the backend is open: workers × BLAS threads
    never exceed the cores asked for, and a multi-threaded BLAS call never competes with
    another busy process for the same cores (measured here: 2-thread BLAS ran 10–30×
    slower beside another busy process, one thread per worker did not).
    On Linux the worker threads run at a lower priority (nice +5) than the event loop's
    thread, so a loop that wakes gets a core at once; the GIL still binds them (see
    ``docs/service.md``).

    :meth:`resize` changes the number of threads between tasks, even while a fit runs:
    tasks submitted before it finish on the old threads, later ones run on the new pool
    (see ``docs/elastic.md``). BLAS stays at one thread per worker whatever the size.

    Args:
        workers: threads in the pool; defaults to the number of usable cores.

    Raises:
        ConfigError: ``workers`` < 1 (ConfigTypeError if it is not an int).

    Example:
        >>> import asynctrain
        >>> async def demo():
        ...     async with ThreadBackend(workers=2) as backend:
        ...         return await backend.run(pow, 2, 10)
        >>> asynctrain.run(demo())
        1024
    """

    name = "thread"
    inline = False
    local = True

    def __init__(self, workers: int | None = None) -> None:
        super().__init__()
        self._workers = default_workers() if workers is None else check_int("workers", workers)
        self._pool: ThreadPool | None = None
        self._resized: asyncio.Event | None = None  # while a resize swaps the pool
        self._blas = BlasLimit(1)

    @property
    def workers(self) -> int:
        """Threads in the pool: the size given, or of the last :meth:`resize` (already
        reported while that resize waits for the old pool's tasks)."""
        return self._workers

    async def _open(self) -> None:
        self._blas.apply()
        self._pool = self._new_pool()

    def _new_pool(self) -> ThreadPool:
        return ThreadPool(self._workers, name="asynctrain-worker", initializer=lower_priority)

    async def _close(self) -> None:
        if self._resized is not None:
            await self._resized.wait()  # the old pool's tasks are done; no new one starts
        pool, self._pool = self._pool, None
        if pool is not None:
            await off_loop(functools.partial(pool.shutdown, cancel=True))
        self._blas.restore()

    async def _resize(self, workers: int) -> None:
        """Replace the pool with one of ``workers`` threads once the old one's tasks are done.

        The old pool is shut down (its submitted tasks run to the end, then its threads
        end), and tasks arriving meanwhile wait for the new pool, so no more than
        ``max(old, new)`` threads ever compute at once.
        """
        if workers == self._workers:
            return
        old, self._workers = self._pool, workers
        if old is None:
            return  # unopened: the pool starts this big
        resized = self._resized = asyncio.Event()
        self._pool = None
        try:
            await off_loop(old.shutdown)  # cancelled, it still waits: no thread outlives it
        finally:
            if self._state is State.OPEN:
                self._pool = self._new_pool()
            self._resized = None
            resized.set()
        if self._state is not State.OPEN:  # as Lifecycle.resize says, and processes do
            raise StateError(f"{self!r} was closed while it resized; create a new ThreadBackend")

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn(*args)`` on a worker thread; see :class:`~asynctrain.backends.Backend`."""
        await self._ensure_open()
        pool = self._pool or await self._resized_pool()
        return await pool.run(fn, *args)

    async def _resized_pool(self) -> ThreadPool:
        if self._resized is not None:
            await self._resized.wait()
        if self._pool is None:
            raise StateError(f"{self!r} was closed while the task waited for a thread")
        return self._pool

    async def share(self, arrays: Mapping[str, npt.NDArray[Any]], *, slots: int = 1) -> LocalShared:
        """Threads share memory already: return an in-process handle (no copy)."""
        await self._ensure_open()
        return LocalShared(arrays, slots)

    async def release(self, shared: Any) -> None:
        """Nothing to free: the arrays belong to their owner."""

    def __repr__(self) -> str:
        return f"<ThreadBackend workers={self._workers} {self.state}>"
