"""Worker threads that take calls from an event loop and hand the results back cheaply.

A :class:`ThreadPool` keeps its threads for its whole life. A call awaited with
:meth:`ThreadPool.run` costs, besides its function: one queue append and a lock release
(a futex wake of an idle thread), one asyncio future, and one wake of the loop when the
result is in. Calls whose results come in together share that wake: a finished call is
put in its loop's :class:`_Inbox`, and only a call that finds the inbox not yet due to
be emptied asks the loop to empty it. ``ThreadPoolExecutor`` plus
``asyncio.wrap_future`` pay, for the same call, a ``concurrent.futures.Future`` (with
its condition variable), a work item, the executor's locks and semaphore, a chain of
callbacks from one future to the other and a loop wake per call; on threads that share
the GIL with the loop every line a worker runs there also delays the loop and the other
workers.

Idle threads wait in a stack, each on a lock of its own, and a call wakes the thread that
went idle last: calls awaited one after another (a step's one task, say) keep running on
one thread, whose core has the call's data in its caches, instead of taking turns on every
thread of the pool as a shared queue would have them. A thread counts itself idle *before*
it hands its result to the loop, so the call the loop makes next, on the result, finds it
there. Calls queued together wake one thread at a time, each woken thread waking the next
while calls remain (as ``queue.SimpleQueue``'s waiters chain), so they do not all wake at
once to wait for the GIL the caller holds.

The invariant is :func:`~asynctrain._offloop.await_without_orphans`': when the awaiting
task is cancelled, a call that has not started never will, and one that has started is
waited for (through further cancellations too) before ``CancelledError`` propagates, its
outcome dropped. Whoever first *claims* a call (a lock taken without blocking) decides:
a worker claims it to run it, a cancelled caller or :meth:`ThreadPool.shutdown` to drop it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from asynctrain._exceptions import ConfigError

T = TypeVar("T")


class _Call(Generic[T]):
    """One call: what to run, the future its caller awaits, and its outcome."""

    __slots__ = ("_claim", "_error", "_result", "_waiter", "finished", "fn", "future", "inbox")

    def __init__(self, fn: Callable[[], T], future: asyncio.Future[T], inbox: _Inbox) -> None:
        self.fn, self.future, self.inbox = fn, future, inbox
        self._claim = threading.Lock()
        self._result: T | None = None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.finished = False  # settled on the loop: the outcome is known there

    def claim(self) -> bool:
        """True for the first caller only (any thread): it runs or drops the call."""
        return self._claim.acquire(blocking=False)

    def cancel(self) -> None:
        """Cancel the future (on the loop); drop the call unless a thread has taken it
        (one that has runs to its end, its outcome dropped)."""
        self.claim()
        self.future.cancel()

    def run(self) -> None:
        """Run the call (on a worker, after claiming it); :meth:`deliver` hands the outcome
        to the loop."""
        try:
            self._result = self.fn()
        except BaseException as exc:  # like concurrent.futures: the awaiter gets it, whatever it is
            self._error = exc

    def deliver(self) -> None:
        """Hand the outcome of :meth:`run` to the loop (from any thread)."""
        self.inbox.put(self)

    def drop(self) -> None:
        """Hand the loop a cancellation instead of an outcome (after claiming the call)."""
        self._error = asyncio.CancelledError()
        self.inbox.put(self)

    def settle(self) -> None:
        """On the loop: pass the outcome to the awaiting future, unless it was cancelled."""
        self.finished = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.future.done():
            return  # its caller was cancelled and waited for it: the outcome is dropped
        if isinstance(self._error, asyncio.CancelledError):
            self.future.cancel()
        elif self._error is not None:
            self.future.set_exception(self._error)
        else:
            self.future.set_result(self._result)  # type: ignore[arg-type]
        self._error = self._result = None  # no reference cycle through the traceback

    async def finish(self) -> None:
        """Wait until the call has been settled, through cancellations too."""
        if self.finished:
            return
        waiter = self._waiter = self.future.get_loop().create_future()
        while not waiter.done():
            # A second cancel must not orphan the work either: the first is re-raised.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([waiter])


class _Inbox:
    """Finished calls waiting for their loop: one wake of the loop per batch of them."""

    __slots__ = ("_calls", "_due", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._calls: collections.deque[_Call[Any]] = collections.deque()
        self._due = False

    def put(self, call: _Call[Any]) -> None:
        """From any thread: add ``call``; wake the loop unless it is due to empty us anyway.

        ``_due`` is cleared before the loop takes the first call out, so a call put after
        the loop's last look finds it cleared and wakes the loop again.
        """
        self._calls.append(call)
        if not self._due:
            self._due = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self._empty)

    def _empty(self) -> None:
        self._due = False
        while self._calls:
            self._calls.popleft().settle()


class ThreadPool:
    """``size`` threads that run calls for event loops; see the module docstring.

    Args:
        size: threads, started at once and kept until :meth:`shutdown`.
        name: the threads' name prefix (``<name>-0``, ``<name>-1``, ...).
        initializer: run first on each thread (e.g. to lower its priority).

    Example:
        >>> import asynctrain
        >>> pool = ThreadPool(2, name="asynctrain-demo")
        >>> asynctrain.run(pool.run(pow, 2, 10))
        1024
        >>> pool.shutdown()
    """

    def __init__(
        self, size: int, *, name: str, initializer: Callable[[], object] | None = None
    ) -> None:
        self.size = size
        self._lock = threading.Lock()  # guards _calls and _idle
        self._calls: collections.deque[_Call[Any] | None] = collections.deque()  # None: stop
        self._idle: list[threading.Lock] = []  # idle threads' wake locks, the last idle on top
        self._waking = False  # a thread was woken and has not taken its call yet
        self._inbox: _Inbox | None = None
        self._shut = False
        self._initializer = initializer
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        started = 0
        try:
            for thread in self._threads:
                thread.start()
                started += 1
        except RuntimeError as exc:  # "can't start new thread": the OS's limit
            # Those started would wait for calls for the life of the process.
            self._threads = self._threads[:started]
            self.shutdown()
            raise ConfigError(
                f"{name}: the system started {started} of the {size} threads asked for "
                f"({exc}); ask for fewer workers"
            ) from None

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn(*args)`` on a thread of the pool, in a copy of the caller's context.

        Its exception propagates as it is. Cancelled, it drops a call not started yet and
        waits for one that has started before ``CancelledError`` propagates.

        Raises:
            RuntimeError: the pool has been shut down.
        """
        call = self._call(fn, args)
        self._put(call)
        try:
            return await call.future
        except asyncio.CancelledError:
            if not call.claim():  # started (or done, or dropped by shutdown): wait for it
                await call.finish()
            raise

    def submit(self, fn: Callable[..., T], /, *args: Any) -> _Call[T]:
        """Start ``fn(*args)`` on a thread of the pool, as :meth:`run` does, and return
        the call: its ``future`` settles with the outcome, with no coroutine around it,
        so a caller that finds it done awaits it without a turn of the loop.

        ``call.cancel()`` drops the call if no thread has taken it yet; one already
        running runs to its end, its outcome dropped (:meth:`shutdown` waits for it). So
        unlike :meth:`run`'s, a cancelled call's work may not be over.

        Raises:
            RuntimeError: the pool has been shut down.
        """
        call = self._call(fn, args)
        self._put(call)
        return call

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> _Call[T]:
        """A call of ``fn(*args)`` in a copy of the caller's context, for the running loop."""
        if self._shut:
            raise RuntimeError(f"{self!r} is shut down")
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        if inbox is None or inbox.loop is not loop:
            inbox = self._inbox = _Inbox(loop)
        context = contextvars.copy_context()
        return _Call(functools.partial(context.run, fn, *args), loop.create_future(), inbox)

    def shutdown(self, *, cancel: bool = False) -> None:
        """Let the threads end once the calls queued so far are done, and join them (blocks).

        With ``cancel``, calls not started yet are dropped instead: their callers see
        ``CancelledError``. Later calls raise RuntimeError.
        """
        self._shut = True
        if cancel:
            with self._lock:
                dropped = [call for call in self._calls if call is not None]
                self._calls.clear()
            for call in dropped:
                if call.claim():
                    call.drop()
        for _ in self._threads:
            self._put(None)
        for thread in self._threads:
            thread.join()

    def _put(self, call: _Call[Any] | None) -> None:
        """Queue ``call`` (None: one thread stops) and wake the thread idle the shortest,
        unless a thread woken earlier has yet to take its call (it wakes the next)."""
        with self._lock:
            self._calls.append(call)
            wake = self._next_awake()
        if wake is not None:
            wake.release()

    def _next_awake(self) -> threading.Lock | None:
        """Under the lock: the wake lock of the idle thread to wake for a queued call, if
        one is to be woken now. One thread wakes at a time, and each woken thread wakes
        the next while calls remain: calls queued together do not wake every thread at
        once to fight over the GIL the caller holds."""
        if self._waking or not self._idle or not self._calls:
            return None
        self._waking = True
        return self._idle.pop()

    def _work(self) -> None:
        if self._initializer is not None:
            self._initializer()
        wake = threading.Lock()  # released to wake this thread, once per idle spell
        wake.acquire()
        done: _Call[Any] | None = None  # run, its outcome not yet handed to the loop
        woken = False
        while True:
            with self._lock:
                if woken:
                    self._waking = woken = False
                idle = not self._calls
                if idle:  # before delivering: the loop's next call, made on it, wakes us
                    self._idle.append(wake)
                    after = None
                else:
                    call = self._calls.popleft()
                    after = self._next_awake()
            if after is not None:
                after.release()
            if done is not None:
                done.deliver()
                done = None
            if idle:
                wake.acquire()
                woken = True
                continue
            if call is None:
                return
            if call.claim():
                call.run()
                done = call
            del call  # hold nothing of it while waiting for the next

    def __repr__(self) -> str:
        return f"<ThreadPool size={self.size}>"
