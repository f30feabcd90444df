"""Running blocking work off the event loop without leaving it running behind a cancel.

``asyncio.to_thread`` and ``run_in_executor`` let a cancelled caller go on while its work
still runs in a thread: a cancelled fit or request would leave threads busy (and arrays
or files in use) after ``CancelledError`` reached the caller. Every "run this off the
loop" in asynctrain goes through :func:`off_loop`, whose invariant is in
:func:`await_without_orphans`: the caller's ``CancelledError`` propagates only once the
work is cancelled (not started yet) or has finished.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def await_without_orphans(
    future: concurrent.futures.Future[T],
    *,
    on_cancel: Callable[[], object] | None = None,
    discard: Callable[[T], object] | None = None,
) -> T:
    """Await ``future``; on cancellation, cancel it or wait until it has finished.

    When the awaiting task is cancelled, ``on_cancel`` is called first (to ask started
    work to stop early, e.g. set a ``threading.Event`` it checks); then work not started
    yet is cancelled and started work is waited for, through further cancellations too,
    before ``CancelledError`` propagates. The outcome of that work is dropped (its
    exception is marked retrieved, so the loop logs nothing); a result is passed to
    ``discard`` if given (e.g. to free what the work allocated).
    """
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        if not future.cancel():
            waiter = asyncio.wrap_future(future)
            while not waiter.done():
                # A second cancel must not orphan the work either: the first is re-raised.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([waiter])
            if not waiter.cancelled() and waiter.exception() is None and discard is not None:
                discard(waiter.result())
        raise


async def to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` (a clean-up: a close, a release) to its end, through cancellations of
    the caller too; a cancel that came meanwhile is raised once ``work`` is done.

    Cut short at an ``await``, a close leaves what it had yet to free (a stopped worker
    never killed, a segment never unlinked) and its owner marked closed or open wrongly;
    a second cancel of a cancelled task, or a timeout expiring while a fit ends, did that.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


async def off_loop(
    fn: Callable[..., T],
    /,
    *args: Any,
    executor: concurrent.futures.Executor | None = None,
    on_cancel: Callable[[], object] | None = None,
    discard: Callable[[T], object] | None = None,
) -> T:
    """Run ``fn(*args)`` off the event loop and return its result (or raise its exception).

    Without ``executor`` it runs on a thread of its own (``asynctrain-off-loop-<fn>``)
    that has ended when this returns or raises; with one it runs there (the owner's
    threads: the updater's, a checkpoint writer's, a feed's). Either way it runs in a copy
    of the caller's context (contextvars), like ``asyncio.to_thread``, and a cancelled
    caller waits for it: see :func:`await_without_orphans` (``on_cancel`` and ``discard``
    are passed on).

    Example:
        >>> import asynctrain
        >>> asynctrain.run(off_loop(pow, 2, 10))
        1024
    """
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    if executor is not None:
        return await await_without_orphans(
            executor.submit(call), on_cancel=on_cancel, discard=discard
        )
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    named = fn.func if isinstance(fn, functools.partial) else fn
    name = getattr(named, "__qualname__", type(named).__qualname__)
    thread = threading.Thread(target=_run, args=(future, call), name=f"asynctrain-off-loop-{name}")
    thread.start()
    try:
        return await await_without_orphans(future, on_cancel=on_cancel, discard=discard)
    finally:
        thread.join()  # its work is over: only the thread's exit is left, so this is immediate


def _run(future: concurrent.futures.Future[T], call: Callable[[], T]) -> None:
    if not future.set_running_or_notify_cancel():
        return  # cancelled before it started
    try:
        result = call()
    except BaseException as exc:  # like concurrent.futures: the awaiter gets it, whatever it is
        future.set_exception(exc)
    else:
        future.set_result(result)
