"""How a stream's source is read: asynchronously, its blocking parts off the event loop.

An async iterable is awaited directly; a sync one has its ``next()`` run on a thread, so a
source that reads files or a socket never stalls the loop. Whatever happens, the source
is closed afterwards (``aclose()`` / ``close()``), so a generator's ``finally`` runs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

from asynctrain._offloop import off_loop

T = TypeVar("T")

_END = object()


class OffLoop:
    """Runs blocking work (a feed's; the trainer's input preparation) on two threads of
    its own, or inline for inline backends.

    Two threads: a sync source blocked in ``next()`` never holds up re-cutting rows that
    already arrived.
    """

    def __init__(self, *, inline: bool) -> None:
        self._executor = (
            None
            if inline
            else concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="asynctrain-stream")
        )

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` off the loop (never leaving it running if cancelled)."""
        if self._executor is None:
            return fn(*args, **kwargs)
        return await off_loop(functools.partial(fn, *args, **kwargs), executor=self._executor)

    async def aclose(self) -> None:
        """Stop the threads."""
        if self._executor is not None:
            await off_loop(self._executor.shutdown)


@contextlib.asynccontextmanager
async def iterate(
    source: Iterable[Any] | AsyncIterable[Any], off: OffLoop
) -> AsyncIterator[AsyncIterator[Any]]:
    """Iterate ``source`` asynchronously; close it on the way out."""
    if isinstance(source, AsyncIterable):
        iterator: Any = aiter(source)
        try:
            yield iterator
        finally:
            if hasattr(iterator, "aclose"):
                await iterator.aclose()
    else:
        sync = iter(source)
        try:
            yield _SyncItems(sync, off)
        finally:
            if hasattr(sync, "close"):
                await off.call(sync.close)


class _SyncItems:
    """A sync iterator as an async one whose ``next()`` runs off the loop."""

    def __init__(self, iterator: Iterator[Any], off: OffLoop) -> None:
        self._iterator, self._off = iterator, off

    def __aiter__(self) -> _SyncItems:
        return self

    async def __anext__(self) -> Any:
        item = await self._off.call(next, self._iterator, _END)
        if item is _END:
            raise StopAsyncIteration
        return item
