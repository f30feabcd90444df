"""A small asyncio-native process pool: idle workers in a queue, dead ones replaced on demand.

Unlike ``concurrent.futures.ProcessPoolExecutor``, the death of one worker breaks nothing:
its task fails with :class:`WorkerDied` (the backend decides whether to retry), the worker
leaves the pool, and the next task that finds no idle worker starts a replacement. The
pool can grow and shrink while tasks run (:meth:`Pool.resize`): a worker chosen to leave
finishes the task it is running first.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Sequence
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any, TypeGuard

from asynctrain._exceptions import BackendError, StateError
from asynctrain._offloop import off_loop
from asynctrain.backends._process_worker import main as worker_main
from asynctrain.backends._process_worker_handle import Outcome, Worker

STOP_TIMEOUT = 2.0  # seconds an idle worker gets to exit on its own before SIGKILL
SOCKET_BUFFER = 1 << 20  # bytes: one send on the loop copies at most this much
_Item = Worker | BaseException | None  # None: "something changed (a death, a close), look again"


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
        self._idle: asyncio.Queue[_Item] = asyncio.Queue()
        self._starts: set[asyncio.Task[None]] = set()
        self._start_lock = threading.Lock()
        self._ids = itertools.count(1)

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

    async def call(self, payload: Sequence[bytes], *, kill_after: float | None = None) -> Outcome:
        """Run one encoded task on an idle worker; see :meth:`Worker.call`."""
        worker = await self._acquire()
        try:
            return await worker.call(next(self._ids), payload, kill_after=kill_after)
        finally:
            if worker in self._leaving:
                self._retire(worker)
            elif worker.alive:
                self._idle.put_nowait(worker)

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
        await self._fill()
        self._choose_leaving()
        if self._leaving:
            await asyncio.wait([w.exited for w in self._leaving])
        if self._live() < size and not self.closing:
            await self._fill()  # a death seen meanwhile (a worker killed just before)
        if self.closing:
            raise StateError("the process backend was closed while it was resized")
        errors = self._take_start_errors() if self._live() < size else []
        if errors:
            raise BackendError(
                f"the process pool has {self._live()} of the {size} workers asked for: a "
                f"worker failed to start ({errors[0]!r}); a task that needs one starts it again"
            ) from errors[0]

    async def _fill(self) -> None:
        """Start workers up to ``size`` and wait until every start under way has ended."""
        self.start()
        if self._starts:
            await asyncio.wait(set(self._starts))

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
        self._idle.put_nowait(None)  # wake waiters: they see ``closing``

    async def _acquire(self) -> Worker:
        while True:
            while not self._idle.empty():
                if self._usable(item := self._idle.get_nowait()):
                    return item
            if self.closing:
                raise StateError("the process backend was closed")
            self.start()
            if self._usable(item := await self._idle.get()):
                return item

    def _usable(self, item: _Item) -> TypeGuard[Worker]:
        if self.closing:
            self._idle.put_nowait(None)  # pass the wake-up on: every waiter must hear of it
            raise StateError("the process backend was closed while a task waited for a worker")
        if isinstance(item, BaseException):
            raise item  # a worker failed to start: this caller hears of it
        return item is not None and item.alive

    def _live(self) -> int:
        staying = sum(w.alive and w not in self._leaving for w in self._workers)
        return staying + len(self._starts)

    def _choose_leaving(self) -> None:
        """Pick the workers beyond ``size``, idle ones first: idle ones are stopped now,
        busy ones marked to stop after their task."""
        excess = self._live() - self.size
        if excess <= 0:
            return
        queued = [self._idle.get_nowait() for _ in range(self._idle.qsize())]
        idle = [item for item in queued if isinstance(item, Worker) and item.alive]
        chosen = idle[:excess]
        for item in queued:
            if item not in chosen:
                self._idle.put_nowait(item)
        busy = [w for w in self._workers if w.alive and w.busy and w not in self._leaving]
        chosen += busy[: excess - len(chosen)]
        for worker in chosen:
            self._leaving.add(worker)
            if not worker.busy:
                self._retire(worker)

    def _take_start_errors(self) -> list[BaseException]:
        queued = [self._idle.get_nowait() for _ in range(self._idle.qsize())]
        for item in queued:
            if not isinstance(item, BaseException):
                self._idle.put_nowait(item)
        return [item for item in queued if isinstance(item, BaseException)]

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

    async def _spawn(self) -> None:
        # Starting a process blocks (the first start also launches the forkserver): a thread.
        try:
            process, sock = await off_loop(self._start_process)
        except Exception as exc:
            # One waiter gets the error; the token makes another try a fresh start.
            self._idle.put_nowait(exc)
            self._idle.put_nowait(None)
            return
        worker = Worker(process, sock)
        self._workers.add(worker)
        worker.exited.add_done_callback(lambda _: self._forget(worker))
        self.started += 1
        self._idle.put_nowait(worker)

    def _start_process(self) -> tuple[BaseProcess, socket.socket]:
        with self._start_lock:
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
            return process, parent

    def _forget(self, worker: Worker) -> None:
        self._workers.discard(worker)
        self._leaving.discard(worker)
        if not self.closing:
            self._idle.put_nowait(None)  # wake a waiter: it may start a replacement

    def __repr__(self) -> str:
        return f"<Pool size={self.size} live={len(self.pids)} busy={self.busy}>"
