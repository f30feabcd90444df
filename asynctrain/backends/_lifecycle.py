"""The unopened → open → closed state every backend goes through, in one place."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from asynctrain._exceptions import StateError
from asynctrain._types import State


class Lifecycle:
    """Base class giving a backend its explicit state and async-context-manager protocol.

    Subclasses implement ``_open`` and ``_close``; ``_ensure_open`` opens on first use (once,
    even under concurrent first calls) and refuses use after close.
    """

    name = "backend"
    inline = False

    def __init__(self) -> None:
        self._state = State.UNOPENED
        self._open_lock = asyncio.Lock()

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

    async def _ensure_open(self) -> None:
        if self._state is State.OPEN:
            return
        async with self._open_lock:
            if self._state is State.CLOSED:
                raise StateError(f"{self!r} is closed; create a new {type(self).__name__}")
            if self._state is State.UNOPENED:
                await self._open()
                self._state = State.OPEN

    async def aclose(self) -> None:
        """Stop the workers and free everything; idempotent."""
        if self._state is State.OPEN:
            self._state = State.CLOSED
            await self._close()
        self._state = State.CLOSED

    async def __aenter__(self) -> Self:
        await self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
