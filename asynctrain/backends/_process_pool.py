"""A small asyncio-native process pool: idle workers most recently used first, dead ones
replaced on demand.

Unlike ``concurrent.futures.ProcessPoolExecutor``, the death of one worker breaks nothing:
its task fails with :class:`WorkerDied` (the backend decides whether to retry), the worker
leaves the pool, and the next task that finds no idle worker starts a replacement. The
pool can grow and shrink while tasks run (:meth:`Pool.resize`): a worker chosen to leave
finishes the task it is running first.

A task takes the idle worker that finished last (last in, first out): a step whose shards
run as one task keeps going to the same worker, whose caches, maps and decoded task head
are warm and which has just run, rather than to each worker in turn (round robin had
every such step wake a worker that had slept through the one before, and each worker's
state go cold). A shard's task goes first to the worker that ran that shard last, if it
is idle: that worker holds the shard's rows gathered ahead (``_engine/_work.py``), where
last in, first out would swap a step's two shards between two workers about every other
step.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import itertools
import socket
import threading
import weakref
from collections.abc import Sequence
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from asynctrain._exceptions import BackendError, StateError
from asynctrain._offloop import off_loop
from asynctrain.backends._process_worker import main as worker_main
from asynctrain.backends._process_worker_handle import Outcome, Worker

STOP_TIMEOUT = 2.0  # seconds an idle worker gets to exit on its own before SIGKILL
SOCKET_BUFFER = 1 << 20  # bytes: one send on the loop copies at most this much


class Pool:
    """``size`` worker processes started from ``context``, reused for every task.

    Args:
        context: a forkserver or spawn multiprocessing context.
        size: the number of workers kept running.
        blas_threads: BLAS threads per worker.
        niceness: added to each worker's nice value.
    """

    def __init__(self, context: BaseContext, size: int, blas_threads: int, niceness: int) -> None:
        self.size = size
        self.closing = False
        self.started = 0
        self._context = context
        self._worker_args = (blas_threads, niceness)
        self._workers: set[Worker] = set()
        self._leaving: set[Worker] = set()  # chosen to leave: stopped once their task is done
        self._idle: collections.deque[Worker] = collections.deque()  # the last used last
        # Tasks waiting for a worker; each is woken to look again (at idle workers, a
        # start error, a close) when one of those may have changed.
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._starts: set[asyncio.Task[BaseException | None]] = set()  # each: its error
        self._start_lock = threading.Lock()
        # Started on a start's thread, not yet a Worker (the start's task adopts it when
        # its loop resumes it): what abandon() must kill if that loop never does. Under
        # _start_lock, as is _abandoned, after which no process starts.
        self._unadopted: dict[BaseProcess, socket.socket] = {}
        self._abandoned = False
        self._ids = itertools.count(1)
        self._shards: dict[int, Worker] = {}  # shard -> the worker that ran it last
        # A pool never closed (no aclose) meets interpreter exit: multiprocessing then
        # SIGTERMs its daemonic workers and joins them, and a worker whose model ignored
        # SIGTERM held the exit for ever. This runs first (atexit runs the last registered
        # first) and SIGKILLs them.
        self._at_exit = functools.partial(_kill_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return sorted(w.pid for w in self._workers if w.alive and w.pid is not None)

    @property
    def busy(self) -> int:
        """Workers running a task now."""
        return sum(w.busy for w in self._workers)

    def start(self) -> None:
        """Start workers until ``size`` are running or starting (returns at once)."""
        while self._live() < self.size:
            self._start_one()

    async def call(
        self, payload: Sequence[bytes], *, kill_after: float | None = None, shard: int | None = None
    ) -> Outcome:
        """Run one encoded task on an idle worker; see :meth:`Worker.call`. ``shard``: the
        shard the task computes, if any (its worker of last time is preferred)."""
        worker = await self._acquire(shard)
        if shard is not None:
            self._shards[shard] = worker
        try:
            return await worker.call(next(self._ids), payload, kill_after=kill_after)
        finally:
            if worker in self._leaving:
                self._retire(worker)
            elif worker.alive:
                self._idle.append(worker)
                self._wake()

    async def resize(self, size: int) -> None:
        """Grow or shrink to ``size`` workers; return once the pool is that size.

        Growing starts workers (off the loop) and waits for them. Shrinking stops idle
        workers at once and busy ones as soon as their task is done, and waits until they
        have exited; tasks waiting for a worker take whichever remains. The same size
        again waits for what an earlier (cancelled) resize left under way.

        Raises:
            StateError: the pool was closed meanwhile.
            BackendError: a worker failed to start (told here only: tasks that need a
                worker start one again).
        """
        self.size = size
        errors = await self._fill()
        self._choose_leaving()
        if self._leaving:
            await asyncio.wait([w.exited for w in self._leaving])
        if self._live() < size and not self.closing:
            errors += await self._fill()  # a death seen meanwhile (a worker killed just before)
        if self.closing:
            raise StateError("the process backend was closed while it was resized")
        if errors and self._live() < size:
            raise BackendError(
                f"the process pool has {self._live()} of the {size} workers asked for: a "
                f"worker failed to start ({errors[0]!r}); a task that needs one starts it again"
            ) from errors[0]

    async def _fill(self) -> list[BaseException]:
        """Start workers up to ``size``, wait until every start under way has ended, and
        return the errors of those that failed."""
        self.start()
        if not self._starts:
            return []
        ended, _ = await asyncio.wait(set(self._starts))
        return [error for task in ended if (error := task.result()) is not None]

    def broadcast(self, message: bytes) -> None:
        """Send a no-reply message to every live worker (busy ones read it after their task)."""
        for worker in self._workers:
            worker.send_quietly(message)

    async def close(self) -> None:
        """Stop every worker: idle ones by end-of-file (SIGKILL after :data:`STOP_TIMEOUT`),
        busy ones by SIGKILL at once (their callers get StateError)."""
        self.closing = True
        if self._starts:
            await asyncio.wait(self._starts)
        workers = list(self._workers)
        for worker in workers:
            if worker.busy:
                worker.kill()
            worker.stop()
        exits = [w.exited for w in workers]
        if exits:
            _, late = await asyncio.wait(exits, timeout=STOP_TIMEOUT)
            for worker in workers:
                if worker.exited in late:
                    worker.kill()
            if late:
                await asyncio.wait(late)
        self._workers.clear()
        self._idle.clear()
        self._shards.clear()
        atexit.unregister(self._at_exit)
        self._wake(len(self._waiters))  # every waiter sees ``closing``

    def abandon(self) -> None:
        """Stop every worker by SIGKILL, without the event loop the pool ran on, which has
        been closed (``asyncio.run`` returned): its callbacks, which :meth:`close` waits
        for, will never run. Blocks while the workers are reaped."""
        self.closing = True
        with self._start_lock:  # waits for a start under way on its thread
            self._abandoned = True
            unadopted, self._unadopted = self._unadopted, {}
        for process, sock in unadopted.items():  # started for a loop that never resumed
            process.kill()
            process.join()
            process.close()
            sock.close()
        for worker in list(self._workers):
            worker.abandon()
        self._workers.clear()
        self._idle.clear()
        self._shards.clear()
        atexit.unregister(self._at_exit)

    async def _acquire(self, shard: int | None = None) -> Worker:
        """The idle worker that ran ``shard`` last, else the idle worker used last; else
        wait, starting a worker if the pool is short.

        Raises:
            StateError: the pool is closing.
            Exception: a worker failed to start while this caller waited longest (the
                next one to wait starts another).
        """
        waited = False
        while True:
            if self.closing:
                during = " while a task waited for a worker" if waited else ""
                raise StateError(f"the process backend was closed{during}")
            ran = None if shard is None else self._shards.get(shard)
            if ran is not None and ran.alive and ran in self._idle:
                self._idle.remove(ran)
                return ran
            while self._idle:
                if (worker := self._idle.pop()).alive:
                    return worker
            self.start()
            await self._wait()
            waited = True

    async def _wait(self) -> None:
        """Wait for :meth:`_wake` (or a failed start's error, :meth:`_spawn`); a wake-up
        that arrives as the caller is cancelled is passed on to the next waiter, so no
        worker stays idle while a task waits."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                if waiter in self._waiters:  # a wake-up may have dropped it (skipped: done)
                    self._waiters.remove(waiter)
            else:
                waiter.exception()  # retrieved: a start error meant for this caller
                self._wake()
            raise

    def _wake(self, count: int = 1, *, error: BaseException | None = None) -> None:
        """Wake the ``count`` longest-waiting tasks to look again; with ``error``, the
        first of them hears of it instead."""
        while count > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled: its task leaves on its own
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
                error = None
            count -= 1

    def _live(self) -> int:
        staying = sum(w.alive and w not in self._leaving for w in self._workers)
        return staying + len(self._starts)

    def _choose_leaving(self) -> None:
        """Pick the workers beyond ``size``, idle ones first (the least recently used:
        the warm ones stay): idle ones are stopped now, busy ones marked to stop after
        their task."""
        excess = self._live() - self.size
        if excess <= 0:
            return
        chosen = [w for w in self._idle if w.alive][:excess]
        for worker in chosen:
            self._idle.remove(worker)
        busy = [w for w in self._workers if w.alive and w.busy and w not in self._leaving]
        chosen += busy[: excess - len(chosen)]
        for worker in chosen:
            self._leaving.add(worker)
            if not worker.busy:
                self._retire(worker)

    def _retire(self, worker: Worker) -> None:
        """Stop ``worker`` (it exits on end-of-file); SIGKILL it after :data:`STOP_TIMEOUT`
        if it does not (a stopped or hung process)."""
        worker.stop()
        timer = asyncio.get_running_loop().call_later(STOP_TIMEOUT, worker.kill)
        worker.exited.add_done_callback(lambda _: timer.cancel())

    def _start_one(self) -> None:
        task = asyncio.get_running_loop().create_task(self._spawn())
        self._starts.add(task)
        task.add_done_callback(self._starts.discard)

    async def _spawn(self) -> BaseException | None:
        """Start one worker and wake a task waiting for one; return the error if the
        start failed (for :meth:`resize`), which the task that has waited longest hears
        of too, while the next is woken to start another."""
        # Starting a process blocks (the first start also launches the forkserver): a thread.
        try:
            process, sock = await off_loop(self._start_process)
            with self._start_lock:
                self._unadopted.pop(process, None)  # ours now (abandon() needs this loop closed)
        except Exception as exc:
            self._starts.discard(asyncio.current_task())  # no longer under way: the
            self._wake(2, error=exc)  # second task woken (the first hears why) starts anew
            return exc
        worker = Worker(process, sock)
        self._workers.add(worker)
        worker.exited.add_done_callback(lambda _: self._forget(worker))
        self.started += 1
        self._idle.append(worker)
        self._wake()
        return None

    def _start_process(self) -> tuple[BaseProcess, socket.socket]:
        with self._start_lock:
            if self._abandoned:  # its loop is closed: nothing would ever adopt or stop it
                raise StateError("the process pool was abandoned (its event loop closed)")
            parent, child = socket.socketpair()
            for end in (parent, child):  # fewer wake-ups per large frame; capped by the kernel
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            ctx: Any = self._context
            process: BaseProcess = ctx.Process(
                target=worker_main,
                args=(child, *self._worker_args),
                name="asynctrain-worker",
                daemon=True,  # terminated at interpreter exit if the backend was never closed
            )
            try:
                process.start()
            except BaseException:
                parent.close()
                raise
            finally:
                child.close()
            self._unadopted[process] = parent
            return process, parent

    def _forget(self, worker: Worker) -> None:
        self._workers.discard(worker)
        self._leaving.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        for shard in [s for s, ran in self._shards.items() if ran is worker]:
            del self._shards[shard]
        if not self.closing:
            self._wake()  # a waiter may start a replacement

    def __repr__(self) -> str:
        return f"<Pool size={self.size} live={len(self.pids)} busy={self.busy}>"


def _kill_at_exit(pool: weakref.ref[Pool]) -> None:
    """SIGKILL the workers of a pool still open at interpreter exit (see ``Pool``)."""
    owner = pool()
    if owner is None:
        return
    for process in list(owner._unadopted):
        process.kill()
    for worker in list(owner._workers):
        worker.kill()  # one already reaped is skipped: its pid may be another's now
