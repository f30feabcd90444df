"""The unopened → open → closed state every backend goes through, in one place."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from asynctrain._exceptions import StateError


class Lifecycle:
    """Base class giving a backend its explicit state and async-context-manager protocol.

    Subclasses implement ``_open`` and ``_close``; ``_ensure_open`` opens on first use (once,
    even under concurrent first calls) and refuses use after close.
    """

    name = "backend"

    def __init__(self) -> None:
        self._state = "unopened"
        self._open_lock = asyncio.Lock()

    @property
    def state(self) -> str:
        """``"unopened"``, ``"open"`` or ``"closed"``."""
        return self._state

    async def _open(self) -> None:
        """Start workers; called once."""

    async def _close(self) -> None:
        """Stop workers and free resources; called once, only if opened."""

    async def _ensure_open(self) -> None:
        if self._state == "open":
            return
        async with self._open_lock:
            if self._state == "closed":
                raise StateError(f"{self!r} is closed; create a new {type(self).__name__}")
            if self._state == "unopened":
                await self._open()
                self._state = "open"

    async def aclose(self) -> None:
        """Stop the workers and free everything; idempotent."""
        if self._state == "open":
            self._state = "closed"
            await self._close()
        self._state = "closed"

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
