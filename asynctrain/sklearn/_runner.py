"""Run a training coroutine from synchronous code, whether or not a loop is running."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from asynctrain._runtime import run

T = TypeVar("T")


def run_blocking(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to completion and return its result, blocking the calling thread.

    Without a running event loop in this thread, ``main()`` runs on a new loop here
    (:func:`asynctrain.run`). With one (a notebook cell, a request handler), ``main()``
    runs on a new loop in a helper thread while this thread waits: the caller's loop is
    blocked until training ends, so code on a loop should await the async twin instead.
    An interrupt while waiting (``KeyboardInterrupt``) cancels the training, waits for
    it to wind down and then propagates.

    Example:
        >>> async def answer():
        ...     return 42
        >>> run_blocking(answer)
        42
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run(_boxed(main)).value
    return _Helper(main).run()


class _Box(Generic[T]):
    """A result with a constant-time repr.

    On Python 3.11, ``asyncio.Runner`` formats its main task when it restores the SIGINT
    handler (``signal.getsignal`` reprs the handler, a partial holding the task), and the
    task's repr includes its result: a fit's history costs milliseconds to format.
    """

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


async def _boxed(main: Callable[[], Coroutine[Any, Any, T]]) -> _Box[T]:
    return _Box(await main())


class _Helper(Generic[T]):
    """Runs ``main()`` on its own loop in a helper thread; cancellable from the waiter."""

    def __init__(self, main: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._main = main
        self._lock = threading.Lock()
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False

    def run(self) -> T:
        with concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="asynctrain-sklearn"
        ) as pool:
            future = pool.submit(run, self._guarded())
            try:
                return future.result()
            except BaseException:
                if not future.done():
                    self._cancel()
                    concurrent.futures.wait([future])
                raise

    async def _guarded(self) -> T:
        with self._lock:
            if self._cancelled:
                raise asyncio.CancelledError
            self._task = asyncio.current_task()
        return await self._main()

    def _cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            task = self._task
        if task is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: training already ended
            task.get_loop().call_soon_threadsafe(task.cancel)
