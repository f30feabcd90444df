"""ProcessBackend: worker processes with shared-memory arrays, crash recovery and no leaks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_choice, check_float, check_int
from asynctrain._exceptions import BackendError, ConfigTypeError, ShardFailedError, StateError
from asynctrain._offloop import off_loop
from asynctrain._shm import sweep_stale_segments
from asynctrain.backends._blas import BlasLimit
from asynctrain.backends._lifecycle import Lifecycle, on_opening_loop
from asynctrain.backends._priority import NICENESS
from asynctrain.backends._process_context import get_context
from asynctrain.backends._process_main import check_main_guard
from asynctrain.backends._process_pickle import check_picklable
from asynctrain.backends._process_pool import Pool
from asynctrain.backends._process_shared import (
    ProcessShared,
    create_shared,
    owner_maps,
    release_shared,
)
from asynctrain.backends._process_task import TaskEncoder
from asynctrain.backends._process_worker import PRUNE, encode_forget
from asynctrain.backends._process_worker_handle import WorkerDied
from asynctrain.backends._thread import default_workers

T = TypeVar("T")
START_METHODS = ("forkserver", "spawn")  # never fork: the parent runs an event loop, threads
_COPY_IN_THREAD = 1 << 20  # bytes; smaller shares are allocated and copied on the loop


class ProcessStats(NamedTuple):
    """Counters since the backend opened: tasks run, retries, bytes sent, workers started."""

    tasks: int
    retries: int
    bytes_sent: int
    workers_started: int


class ProcessBackend(Lifecycle):
    """Run shard functions in worker processes that share the data through shared memory.

    Use it when shard math holds the GIL (per-sample Python code, small batches): each worker
    is a separate interpreter. The pool starts once (on ``async with`` or first use) and
    serves every fit and trainer until ``aclose``. Arrays given to :meth:`share` live in
    shared memory (or stay in their memory-mapped ``.npy`` file), so a task carries only
    indices and slot numbers. A worker that dies mid-task is replaced and the task re-run,
    up to ``max_retries`` times. Workers run at a lower priority, with one BLAS thread
    each (whatever the pool's size), and exit when this process dies.

    :meth:`resize` grows or shrinks the pool while a fit runs (see ``docs/elastic.md``).
    With ``task_timeout``, a worker whose task runs longer (a stopped or hung process) is
    killed and replaced and the task re-run, within the same retry budget as a crash.

    Args:
        workers: worker processes; defaults to the number of usable cores.
        max_retries: re-runs of a task whose worker died (not of a Python exception).
        start_method: ``"forkserver"`` (default; fast starts) or ``"spawn"``.
        task_timeout: seconds a task may run before its worker is killed (it counts as
            a death: the task is re-run); None (default) waits for ever.

    Raises:
        ConfigError: ``workers`` < 1, ``max_retries`` < 0, ``task_timeout`` not > 0 and
            finite, or an unknown start method.

    Example:
        >>> import asynctrain
        >>> async def demo():
        ...     async with ProcessBackend(workers=2) as backend:
        ...         return await backend.run(pow, 2, 10)
        >>> asynctrain.run(demo())  # in a script: under ``if __name__ == "__main__":``
        1024
    """

    name = "process"
    inline = False
    idle_work = True
    """Tasks may leave work for their worker's idle time after the reply (``_idle``)."""

    def __init__(
        self,
        workers: int | None = None,
        *,
        max_retries: int = 3,
        start_method: str = "forkserver",
        task_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self._workers = default_workers() if workers is None else check_int("workers", workers)
        self.max_retries = check_int("max_retries", max_retries, minimum=0)
        self.start_method = check_choice("start_method", start_method, START_METHODS)
        self.task_timeout = (
            None
            if task_timeout is None
            else check_float("task_timeout", task_timeout, inclusive=False)
        )
        # One BLAS thread per worker, even when workers < cores: a multi-threaded BLAS call
        # whose threads wait on each other ran 4-16x slower whenever another process took a
        # core (measured here), and the parent's updater and event loop need one too.
        self.blas_threads = 1
        # The parent too, while the pool is open: a BLAS call here (evaluation, the
        # caller's own math) would otherwise spin threads on the workers' cores.
        self._blas = BlasLimit(1)
        self._pool: Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owned: dict[str, ProcessShared] = {}
        self._encoder = TaskEncoder()
        # id of an owner map -> its finalizer, which prunes the workers' maps when it dies
        self._watched: dict[int, weakref.finalize[Any, Any]] = {}
        self._tasks = self._retries = self._bytes = 0

    async def _open(self) -> None:
        check_main_guard()
        sweep_stale_segments()
        context = get_context(self.start_method)
        self._loop = asyncio.get_running_loop()
        self._pool = Pool(context, self._workers, self.blas_threads, NICENESS)
        self._pool.start()
        self._blas.apply()  # once started: a pool that fails to start holds nothing

    @property
    def workers(self) -> int:
        """Worker processes in the pool: the size given, or of the last :meth:`resize`
        (already reported while that resize waits for leaving workers)."""
        return self._workers

    async def _resize(self, workers: int) -> None:
        """Grow or shrink the pool; see :meth:`Pool.resize`. Unopened: record the size."""
        self._workers = workers
        if self._pool is not None:
            await self._own_pool().resize(workers)

    async def _close(self) -> None:
        try:
            if self._pool is not None:
                await self._close_pool(self._pool)
            for shared in self._owned.values():
                release_shared(shared)
            self._owned.clear()
        finally:
            self._unwatch_files()
            self._blas.restore()

    async def _close_pool(self, pool: Pool) -> None:
        """Close ``pool`` on the loop that opened it, whichever loop ``aclose`` runs on.

        The pool's readers and futures live on that loop: awaited from another loop they
        never complete (``aclose`` hung for ever after ``asyncio.run`` had returned). A
        loop still running in another thread closes the pool itself; one stopped runs the
        close on a thread of its own; one closed can run nothing, so the workers are
        killed and reaped directly.
        """
        await on_opening_loop(self._loop, pool.close, closed=pool.abandon)

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn(*args)`` in a worker process and return its result.

        Raises:
            ConfigTypeError: ``fn`` or an argument cannot be pickled.
            ShardFailedError: the worker died (or ran past ``task_timeout``) on every attempt
                of a shard task (an argument with ``step`` and ``shard``); BackendError for
                any other task.
            Exception: whatever ``fn`` raised, with the worker's traceback as a note.
        """
        pool = await self._opened_pool()
        message = self._encode(fn, args)
        task = _shard_task(args)
        shard = None if task is None else task.shard
        self._tasks += 1
        self._bytes += sum(map(len, message))
        failures: list[str] = []
        while True:
            try:
                ok, value = await pool.call(message, kill_after=self.task_timeout, shard=shard)
            except WorkerDied as died:
                failures.append(str(died))
                if pool.closing:
                    raise StateError(f"{self!r} was closed while the task ran") from None
                if len(failures) > self.max_retries:
                    raise _exhausted(fn, args, failures) from None
                self._retries += 1
                continue
            if ok:
                return value  # type: ignore[no-any-return]
            raise value

    async def share(
        self, arrays: Mapping[str, npt.NDArray[Any]], *, slots: int = 1
    ) -> ProcessShared:
        """Copy ``arrays`` into shared memory, once per slot, and return a handle to them.

        A whole memory-mapped ``.npy`` array (``np.load(path, mmap_mode="r")``) shared with
        one slot is not copied: workers map the same file. The same goes for an array in
        asynctrain's shared memory (``Dataset.to_shared()``, ``synthetic``, ``load``).

        Raises:
            ConfigTypeError: an array of Python objects.
        """
        await self._opened_pool()
        slots = check_int("slots", slots)
        size = sum(np.asarray(value).nbytes for value in arrays.values()) * slots
        # Allocating the segment (posix_fallocate) and copying into it take milliseconds
        # per 10 MB: off the loop unless small.
        build = functools.partial(_build_shared, arrays, slots)
        shared = (
            build() if size < _COPY_IN_THREAD else await off_loop(build, discard=release_shared)
        )
        self._owned[shared.key] = shared
        self._watch_files(shared)
        return shared

    async def release(self, shared: Any) -> None:
        """Unlink the shared memory of ``shared`` and unmap it in the workers; idempotent.

        Safe on another event loop than the one that opened the pool, as :meth:`aclose`
        is: the workers are told on the opening loop (whose pipes they are), or not at
        all once that loop is closed (its workers then go with :meth:`aclose`).
        """
        if not isinstance(shared, ProcessShared) or self._owned.pop(shared.key, None) is None:
            return
        release_shared(shared)
        self._encoder.forget(shared.key)
        if self._pool is not None:
            self._on_pool_loop(self._pool.broadcast, encode_forget(shared.key))

    def _on_pool_loop(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Call ``fn(*args)`` on the loop that opened the pool (now, if that is this one):
        the pool's pipes are watched by it and written by it alone."""
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop():
            fn(*args)
        elif not loop.is_closed():  # running in another thread, or stopped: when it runs
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn, *args)

    def _watch_files(self, shared: ProcessShared) -> None:
        """Workers keep their maps of shared files across handles (``_process_shared``):
        when the owner's array of such a file dies, tell them to drop maps of files gone."""
        for base in owner_maps(shared):
            if id(base) not in self._watched:
                gone = weakref.finalize(base, _file_gone, weakref.ref(self), id(base))
                gone.atexit = False  # at exit the pool is going anyway
                self._watched[id(base)] = gone

    def _unwatch_files(self) -> None:
        """Drop the watches of a closing backend: the files' arrays may live on (a
        service's dataset, shared fit after fit on a backend of each fit's own), and each
        watch, kept until they die, was one more finalizer per backend for ever."""
        watched, self._watched = self._watched, {}
        for gone in list(watched.values()):  # a finalizer may run meanwhile, on any thread
            gone.detach()

    def _prune_file_maps(self) -> None:
        if self._pool is not None and not self._pool.closing:
            self._pool.broadcast(encode_forget(PRUNE))

    def check_picklable(self, *objects: object) -> None:
        """Raise ConfigTypeError if any of ``objects`` cannot be sent to a worker process."""
        check_picklable(*objects)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (empty until opened)."""
        return [] if self._pool is None else self._pool.pids

    @property
    def stats(self) -> ProcessStats:
        """Counters since the backend opened; see :class:`ProcessStats`."""
        started = 0 if self._pool is None else self._pool.started
        return ProcessStats(self._tasks, self._retries, self._bytes, started)

    async def _opened_pool(self) -> Pool:
        await self._ensure_open()
        return self._own_pool()

    def _own_pool(self) -> Pool:
        if asyncio.get_running_loop() is not self._loop:
            raise StateError(f"{self!r} belongs to the event loop that opened it")
        assert self._pool is not None
        return self._pool

    def _encode(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[bytes, ...]:
        try:
            return self._encoder.encode(fn, args)
        except Exception as exc:
            check_picklable(fn, *args)  # names the culprit
            raise ConfigTypeError(f"the task {fn!r} cannot be pickled: {exc}") from exc

    def __repr__(self) -> str:
        live = "" if self._pool is None else f" live={len(self.pids)} busy={self._pool.busy}"
        return f"<ProcessBackend workers={self._workers} {self.start_method} {self.state}{live}>"


def _file_gone(backend: weakref.ref[ProcessBackend], ident: int) -> None:
    """A shared file's owner array died (on whichever thread collected it): have the
    backend's workers drop their maps of files gone, from its loop."""
    owner = backend()
    if owner is None:
        return
    owner._watched.pop(ident, None)
    loop = owner._loop
    if loop is not None and not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(owner._prune_file_maps)


def _shard_task(args: tuple[Any, ...]) -> Any | None:
    """The argument that names the step and shard a task computes (a shard task or
    group: a ``step`` and an ``int`` ``shard``), if any; else None."""
    for arg in args:
        if type(getattr(arg, "shard", None)) is int and hasattr(arg, "step"):
            return arg
    return None


def _exhausted(fn: Callable[..., Any], args: tuple[Any, ...], failures: list[str]) -> BackendError:
    attempts = [f"attempt {i}: {failure}" for i, failure in enumerate(failures, 1)]
    listed = "; ".join(attempts)
    task = _shard_task(args)
    if task is None:
        name = getattr(fn, "__qualname__", repr(fn))
        return BackendError(f"{name} lost its worker on all {len(failures)} attempts: {listed}")
    return ShardFailedError(
        f"shard {task.shard} of step {task.step} lost its worker on all {len(failures)} "
        f"attempts (1 + max_retries): {listed}",
        step=int(task.step),
        shard=int(task.shard),
        attempts=attempts,
    )


def _build_shared(arrays: Mapping[str, npt.NDArray[Any]], slots: int) -> ProcessShared:
    shared, fill = create_shared(arrays, slots)
    try:
        fill()
    except BaseException:
        release_shared(shared)
        raise
    return shared
