"""InlineBackend: runs every shard on the event loop itself; the deterministic test double."""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy.typing as npt

from asynctrain._exceptions import ConfigError
from asynctrain._types import State
from asynctrain.backends._base import LocalShared
from asynctrain.backends._blas import BlasLimit
from asynctrain.backends._lifecycle import Lifecycle

T = TypeVar("T")


class InlineBackend(Lifecycle):
    """Run shard functions directly on the calling event loop, one at a time.

    Use it in tests and for debugging: no threads, no processes, tracebacks point straight
    at the model code. It blocks the loop while a shard computes, so never use it in a
    service that must stay responsive. Its one worker is the loop: ``resize(1)`` is
    accepted (nothing changes), any other size raises ConfigError.

    While it is open, BLAS runs one thread, as in every other backend's workers: a
    product split over several BLAS threads can round differently (the reference
    softmax's validation loss did, in its last bit), and the math must be the same
    wherever it runs for the bits to be. Closing it (or, never closed, its garbage
    collection) gives the limit back.

    Example:
        >>> import asynctrain
        >>> async def demo():
        ...     async with InlineBackend() as backend:
        ...         return await backend.run(sum, [1, 2, 3])
        >>> asynctrain.run(demo())
        6
    """

    name = "inline"
    inline = True
    local = True

    def __init__(self) -> None:
        super().__init__()
        self.workers = 1
        self._blas = BlasLimit(1)
        self._unhold: weakref.finalize[Any, Any] | None = None

    async def _open(self) -> None:
        self._blas.apply()
        # An open backend nobody closes (a trainer given one it opened on first use) gives
        # the limit back when it is garbage, not at the end of the process.
        self._unhold = weakref.finalize(self, self._blas.restore)

    async def _close(self) -> None:
        if self._unhold is not None:
            self._unhold()

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Call ``fn(*args)`` on the loop and return its result.

        Like every other backend's ``run``, it suspends once before the work (other tasks
        run, a pending cancellation lands), and a cancellation requested while ``fn`` ran
        is raised before the result is returned: callers need no path of their own for
        this backend. ``fn`` runs in a copy of the caller's context, as a thread or
        process worker runs it: what it sets there (numpy's error state, ``np.seterr``)
        ends with the call instead of reaching the caller.
        """
        if self._state is not State.OPEN:  # opened already (the usual case): no coroutine
            await self._ensure_open()
        await asyncio.sleep(0)
        current = asyncio.current_task()
        requested = current.cancelling() if current is not None else 0
        result = contextvars.copy_context().run(fn, *args)
        if current is not None and current.cancelling() > requested:
            await asyncio.sleep(0)  # raises the CancelledError requested meanwhile
        return result

    async def _resize(self, workers: int) -> None:
        if workers != 1:
            raise ConfigError(
                f"{self!r} runs one shard at a time on the event loop, so workers must be 1, "
                f"got {workers}; use ThreadBackend or ProcessBackend to change the pool's size"
            )

    async def share(self, arrays: Mapping[str, npt.NDArray[Any]], *, slots: int = 1) -> LocalShared:
        """Return an in-process handle to ``arrays`` (no copy)."""
        await self._ensure_open()
        return LocalShared(arrays, slots)

    async def release(self, shared: Any) -> None:
        """Nothing to free: the arrays belong to their owner."""

    def __repr__(self) -> str:
        return f"<InlineBackend {self.state}>"
