"""The parent's side of one worker process: its pipe, its exit, and the one task it runs.

Replies and deaths arrive through the event loop (the pipe's readiness callbacks and
``add_reader`` on the process sentinel), so a worker's exit code or signal is known the
moment it dies, without polling; tasks go out through the same never-blocking pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import signal
import socket
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from asynctrain._exceptions import BackendError
from asynctrain.backends._process_pipe import Pipe
from asynctrain.backends._process_worker import task_id_bytes

Outcome = tuple[bool, Any]


class WorkerDied(Exception):
    """The worker running a task exited before replying (internal: the task is retried)."""

    def __init__(self, pid: int | None, exitcode: int | None) -> None:
        super().__init__(describe_exit(pid, exitcode))
        self.pid = pid
        self.exitcode = exitcode


class WorkerTimedOut(WorkerDied):
    """The task ran longer than the backend's ``task_timeout``: its worker was killed."""

    def __init__(self, pid: int | None, exitcode: int | None, timeout: float) -> None:
        super().__init__(pid, exitcode)
        self.timeout = timeout

    def __str__(self) -> str:
        return (
            f"worker pid {self.pid} ran the task past task_timeout={self.timeout:g}s "
            "(stopped or hung) and was killed"
        )


def describe_exit(pid: int | None, exitcode: int | None) -> str:
    """``"worker pid 12 killed by SIGKILL"`` or ``"worker pid 12 exited with code 7"``."""
    if exitcode is not None and exitcode < 0:
        try:
            how = f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"killed by signal {-exitcode}"
    else:
        how = f"exited with code {exitcode}"
    return f"worker pid {pid} {how}"


class Worker:
    """One worker process and the task it is running (at most one at a time)."""

    def __init__(self, process: BaseProcess, sock: socket.socket) -> None:
        self.process = process
        self.pid = process.pid
        self._loop = asyncio.get_running_loop()
        self.pipe = Pipe(sock, self._deliver)
        self.exited: asyncio.Future[int | None] = self._loop.create_future()
        self._reply: asyncio.Future[Outcome] | None = None
        self._task_id = 0
        self._timed_out: float | None = None  # the timeout that killed it, if one did
        self._loop.add_reader(process.sentinel, self._on_exit)

    @property
    def alive(self) -> bool:
        """False once the process has exited (or is being stopped)."""
        return not self.exited.done() and not self.pipe.closed

    @property
    def busy(self) -> bool:
        """Whether a task is in flight on this worker."""
        return self._reply is not None

    async def call(
        self, task_id: int, payload: Sequence[bytes], *, kill_after: float | None = None
    ) -> Outcome:
        """Send one encoded task (the parts of ``TaskEncoder.encode``) and wait for its
        ``(ok, value)``.

        With ``kill_after`` (seconds), a task that has not replied by then has its worker
        killed: a stopped (SIGSTOP) or hung process is as good as dead.

        Raises:
            WorkerDied: the process exited before replying (WorkerTimedOut: killed for
                running past ``kill_after``).
            asyncio.CancelledError: after killing the worker and seeing it exit, so the
                work never outlives its caller.
        """
        self._task_id = task_id
        reply: asyncio.Future[Outcome] = self._loop.create_future()
        self._reply = reply
        # Never blocks: what the socket cannot take now goes out as it drains. A broken
        # pipe means the process is exiting: its sentinel reports how.
        self.pipe.send((task_id_bytes(task_id), *payload))
        timer = None
        if kill_after is not None:
            timer = self._loop.call_later(kill_after, self._time_out, kill_after)
        try:
            return await reply
        except asyncio.CancelledError:
            self.kill()
            await asyncio.wait([self.exited])  # milliseconds after SIGKILL
            raise
        finally:
            self._reply = None
            if timer is not None:
                timer.cancel()

    def send_quietly(self, message: bytes) -> None:
        """Send a message that needs no reply; a dead worker is simply skipped."""
        if self.alive:
            self.pipe.send((message,))

    def stop(self) -> None:
        """Close the pipe: an idle worker reads end-of-file and exits by itself."""
        self.pipe.close()

    def kill(self) -> None:
        """SIGKILL the process (its exit is reported through ``exited`` as usual)."""
        if not self.exited.done():
            self.process.kill()

    def abandon(self) -> None:
        """Kill and reap the process and close its pipe without the loop it was started
        on, which has been closed (no sentinel callback will ever run); blocks while the
        process is reaped, so call it off the running loop."""
        if not self.exited.done():  # else _on_exit has reaped and closed it already
            self.process.kill()
            self.process.join()
            self.process.close()
        self.pipe.abandon()

    def _time_out(self, timeout: float) -> None:
        if self._reply is not None and not self._reply.done():
            self._timed_out = timeout
            self.kill()  # SIGKILL ends a stopped process too; its exit fails the task

    def _deliver(self, data: bytearray) -> None:
        reply = self._reply
        try:
            task_id, ok, value = pickle.loads(data)
        except BaseException as exc:  # unpickling runs the task's code: its SystemExit too
            task_id, ok = self._task_id, False
            value = (None, f"the reply of worker pid {self.pid} cannot be unpickled: {exc!r}")
        if reply is None or reply.done() or task_id != self._task_id:
            return  # a reply to a task whose caller has gone
        reply.set_result((True, value) if ok else (False, _rebuild(value, self.pid)))

    def _on_exit(self) -> None:
        self._loop.remove_reader(self.process.sentinel)
        self.pipe.drain()  # a reply sent just before the process died
        self.process.join()  # returns at once: the sentinel said the process has ended
        exitcode = self.process.exitcode
        self.stop()
        self.process.close()
        self.exited.set_result(exitcode)
        if self._reply is not None and not self._reply.done():
            died = (
                WorkerDied(self.pid, exitcode)
                if self._timed_out is None
                else WorkerTimedOut(self.pid, exitcode, self._timed_out)
            )
            self._reply.set_exception(died)

    def __repr__(self) -> str:
        state = "busy" if self.busy else "idle" if self.alive else "dead"
        return f"<Worker pid={self.pid} {state}>"


def _rebuild(value: tuple[bytes | None, str], pid: int | None) -> BaseException:
    """The worker's exception, with the worker's traceback attached as a note; a
    BackendError carrying that traceback if the exception cannot cross."""
    pickled, text = value
    if pickled is None:
        return BackendError(text)
    try:
        exc = pickle.loads(pickled)
    except BaseException as problem:  # raised by the task's code, on the loop: not ours
        return BackendError(
            f"the task raised an exception that cannot be rebuilt here ({problem!r}); its "
            f"traceback in worker pid {pid}:\n{text.rstrip()}"
        )
    if not isinstance(exc, BaseException):
        return BackendError(f"worker pid {pid} sent {exc!r} as an exception:\n{text}")
    with contextlib.suppress(TypeError):  # the task made ``__notes__`` other than a list
        exc.add_note(f"Traceback in worker pid {pid}:\n{text.rstrip()}")
    return exc
