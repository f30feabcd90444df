"""The unopened → open → closed state every backend goes through, in one place."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from asynctrain._checks import check_int
from asynctrain._exceptions import ConfigError, StateError
from asynctrain._offloop import off_loop, to_the_end
from asynctrain._types import State

T = TypeVar("T")


class Lifecycle:
    """Base class giving a backend its explicit state and async-context-manager protocol.

    Subclasses implement ``_open`` and ``_close``; ``_ensure_open`` opens on first use (once,
    even under concurrent first calls) and refuses use after close. Backends whose pool can
    change size implement ``_resize``; :meth:`resize` validates, serializes and refuses a
    closed backend for them.
    """

    name = "backend"
    inline = False
    local = False
    """True when the backend's workers are threads of this process, reading what it shares
    in place (inline and thread backends): a step too small to pay for handing its shards
    to a worker may then compute them on the event loop itself, with the same bits (see
    ``asynctrain._engine._step.Placement``). False for worker processes, which also keep
    a crashing model away from the caller. A backend without the attribute counts as
    False."""

    def __init__(self) -> None:
        self._state = State.UNOPENED
        self._open_lock = asyncio.Lock()  # opening and resizing: one at a time

    @property
    def state(self) -> State:
        """Where the backend is in its lifecycle: unopened, open or closed."""
        return self._state

    def check_picklable(self, *objects: object) -> None:
        """Refuse objects the workers could not receive; in-process workers take anything."""

    async def _open(self) -> None:
        """Start workers; called once."""

    async def _close(self) -> None:
        """Stop workers and free resources; called once, only if opened."""

    async def _resize(self, workers: int) -> None:
        """Make the pool ``workers`` strong (unopened: record it for the open); called one
        at a time, never on a closed backend."""
        raise ConfigError(
            f"{self!r} cannot change its number of workers; create a new "
            f"{type(self).__name__}(workers={workers}) instead"
        )

    async def resize(self, workers: int) -> None:
        """Change the number of workers to ``workers``, even while a fit runs.

        Returns once the pool has that size: new workers started, leaving workers done
        with the task they were running and gone. Shard results are reduced by shard
        index, never by worker, so a fit's parameters stay bit-identical whatever the pool
        does in the middle of it. An unopened backend only records the size (its pool
        starts that big); concurrent calls take effect one after another.

        Args:
            workers: the new number of workers (>= 1).

        Raises:
            ConfigTypeError: ``workers`` is not an int.
            ConfigError: ``workers`` < 1, or the backend cannot resize (inline: 1 only).
            StateError: the backend is closed (or was closed during the resize).

        Example:
            >>> import asynctrain
            >>> from asynctrain.backends import ThreadBackend
            >>> async def demo():
            ...     async with ThreadBackend(workers=2) as backend:
            ...         await backend.resize(3)
            ...         return backend.workers
            >>> asynctrain.run(demo())
            3
        """
        workers = check_int("workers", workers)
        async with self._open_lock:
            if self._state is State.CLOSED:
                raise StateError(f"{self!r} is closed; create a new {type(self).__name__}")
            await self._resize(workers)

    async def _ensure_open(self) -> None:
        if self._state is State.OPEN:
            return
        async with self._open_lock:
            if self._state is State.CLOSED:
                raise StateError(f"{self!r} is closed; create a new {type(self).__name__}")
            if self._state is State.UNOPENED:
                await self._open()
                if self.state is State.CLOSED:  # aclose came meanwhile, found nothing open
                    await self._close()
                    raise StateError(f"{self!r} was closed while it opened")
                self._state = State.OPEN

    async def aclose(self) -> None:
        """Stop the workers and free everything; idempotent. Called while the backend
        opens, it returns at once; the open then closes what it opened and raises
        StateError."""
        if self._state is State.OPEN:
            self._state = State.CLOSED
            # To the end even if the caller is cancelled meanwhile: a close cut short left
            # a stopped worker running and segments linked, and the backend, marked
            # closed, never closed them.
            await to_the_end(self._close())
        self._state = State.CLOSED

    async def __aenter__(self) -> Self:
        await self._ensure_open()
        return self

    def __copy__(self) -> Self:
        """An unopened backend's copy: a new, independent backend of the same settings
        (a deep copy, as a shallow one would share what the backend keeps of its own:
        the shared arrays it owns, its BLAS limit). An open or closed one refuses.

        Raises:
            StateError: the backend is open (a copy would share its workers, and
                closing either would stop them for both) or closed.
        """
        return copy.deepcopy(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        """See :meth:`__copy__`."""
        if self._state is not State.UNOPENED:
            why = (
                "its copy would share its workers, and closing either would stop them for both"
                if self._state is State.OPEN
                else "it is closed"
            )
            raise StateError(
                f"cannot copy {self!r}: {why}; create another {type(self).__name__} "
                "(an unopened backend copies into a new one)"
            )
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def on_opening_loop(
    loop: asyncio.AbstractEventLoop | None,
    make: Callable[[], Coroutine[Any, Any, T]],
    *,
    closed: Callable[[], T],
) -> T:
    """Await ``make()`` on ``loop``, the loop that opened what it touches, from whichever
    loop this runs on (``aclose`` or ``release`` after a second ``asyncio.run``, or from
    another thread's loop).

    What a backend opened on a loop (a pool's readers, a Dask client's connections and
    futures) completes only there: awaited from another loop it waits for ever or fails.
    So: on this loop (or with none recorded) it is awaited here; on a loop running in
    another thread it runs there, awaited from here; on a stopped loop it runs to
    completion on a thread of its own; a closed loop can run nothing, so ``closed()``
    runs instead, off this loop.
    """
    if loop is None or loop is asyncio.get_running_loop():
        return await make()
    if loop.is_running():
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), loop))
    if not loop.is_closed():
        return await off_loop(loop.run_until_complete, make())
    return await off_loop(closed)
