"""How a stream's source is read: asynchronously, its blocking parts off the event loop.

An async iterable is awaited directly; a sync one has its ``next()`` run on a thread, so a
source that reads files or a socket never stalls the loop. Each item is handed to a
function run off the loop (the feed's check): for a sync source in the same trip as its
``next()``, since every trip costs wake-ups and GIL hand-offs that training feels.
asynctrain's own Parquet stream, whose batches are new arrays nobody touches again, is
read ahead instead: a thread of its own reads, decodes and shuffles it without pause, a
few batches ahead (:class:`ReadAhead`), and the feed takes the batches as those of an
async source, without a trip each (measured on the ``parquet`` benchmark: a trip per
batch made the stream and the steps take turns at the GIL, one core busy at a time).
Whatever happens, the source is closed afterwards (``aclose()`` / ``close()``), so a
generator's ``finally`` runs. A source that is its own iterator (a generator) is read by
one fit at a time (:class:`Reading`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from asynctrain._exceptions import StateError
from asynctrain._offloop import await_without_orphans, off_loop
from asynctrain._threads import ThreadPool
from asynctrain.data import ParquetStream

T = TypeVar("T")

END: Any = object()
"""What :meth:`Items.pull` returns once the source is exhausted."""

READ_AHEAD = 8
"""Batches a :class:`ReadAhead` holds ready before its thread waits."""


class OffLoop:
    """Runs blocking work (a feed's; the trainer's input preparation) on two threads of
    its own, or inline for inline backends.

    Two threads: a sync source blocked in ``next()`` never holds up copying batches that
    already arrived into the backend's ring. A source that can read ahead (a Parquet
    stream) gets a third, made when first asked for (:attr:`ahead`).
    """

    def __init__(self, *, inline: bool) -> None:
        self._inline = inline
        # asynctrain's own pool, started on the first call: a trip costs a queue put and
        # one wake of the loop, not an executor future chained to an asyncio one.
        self._executor: ThreadPool | None = None
        self._ahead: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def ahead(self) -> concurrent.futures.ThreadPoolExecutor | None:
        """A thread of its own, for a source's read-ahead; None when the work runs
        inline."""
        if self._inline:
            return None
        if self._ahead is None:
            self._ahead = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="asynctrain-read-ahead"
            )
        return self._ahead

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` off the loop (never leaving it running if cancelled)."""
        if self._inline:
            return fn(*args, **kwargs)
        if self._executor is None:
            self._executor = ThreadPool(2, name="asynctrain-stream")
        return await self._executor.run(functools.partial(fn, *args, **kwargs))

    async def aclose(self) -> None:
        """Stop the threads."""
        if self._executor is not None:
            await off_loop(self._executor.shutdown)
        if self._ahead is not None:
            await off_loop(self._ahead.shutdown)


class Reading:
    """A fit's hold on a source that is its own iterator (a generator, sync or async),
    from before the fit touches it until it has closed it.

    Two fits sharing one such source raced on it: on threads, "generator already
    executing"; on the loop, each silently took some of the other's batches. An
    iterable that makes a new iterator each time (a list, a Parquet stream) needs no
    hold: every fit reads it afresh. Held across threads (fits on other event loops).

    Raises:
        StateError: another running fit holds ``source``.
    """

    _held: ClassVar[dict[int, object]] = {}  # id → source: held, alive, so ids are unique
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, source: object) -> None:
        self._source: object | None = None
        if not isinstance(source, Iterator | AsyncIterator):
            return
        with self._lock:
            if id(source) in self._held:
                raise StateError(
                    f"the stream {source!r} is being read by another running fit: two fits "
                    "sharing one iterator would race on its batches. Give each fit its own "
                    "(call the generator function again), or an iterable that each fit "
                    "iterates afresh (a list)"
                )
            self._held[id(source)] = self._source = source

    @classmethod
    def held(cls, source: object) -> bool:
        """Whether a running fit holds ``source``."""
        with cls._lock:
            return id(source) in cls._held and cls._held[id(source)] is source

    def release(self) -> None:
        """Let another fit read the source (idempotent)."""
        if self._source is not None:
            with self._lock:
                del self._held[id(self._source)]
            self._source = None


def hands_over(source: object) -> bool:
    """Whether ``source`` hands its arrays over: nobody holds or writes them after they
    are yielded (asynctrain's own Parquet stream makes new arrays for each batch and
    never touches them again), so they need not be copied to be owned."""
    return isinstance(source, ParquetStream)


class Items(Generic[T]):
    """The items of a source, each passed through ``then`` off the loop: see
    :func:`iterate`."""

    def __init__(
        self, source: Iterable[Any] | AsyncIterable[Any], off: OffLoop, then: Callable[[Any], T]
    ) -> None:
        self._off, self._then = off, then
        self._async: AsyncIterator[Any] | None = None
        self._sync: Iterator[Any] | None = None
        self._ahead: ReadAhead | None = None
        if isinstance(source, AsyncIterable):
            self._async = aiter(source)
        elif hands_over(source) and off.ahead is not None:
            self._ahead = ReadAhead(iter(source), off.ahead, then)
        else:
            self._sync = iter(source)

    async def pull(self, *, here: Callable[[Any], Awaitable[bool]] | None = None) -> T:
        """``then(item)`` of the next item, run off the loop (with a sync source's
        ``next()``, in one trip; read ahead, on the reading thread, right after the item);
        :data:`END` once the source is exhausted. An async source's item for which
        ``await here(item)`` is true is passed to ``then`` on the loop.

        Raises what the source or ``then`` raises.
        """
        if self._ahead is not None:
            return await anext(self._ahead, END)
        if self._sync is not None:
            return await self._off.call(_next_then, self._sync, self._then)
        assert self._async is not None
        item = await anext(self._async, END)
        if item is END or here is None or not await here(item):
            return item if item is END else await self._off.call(self._then, item)
        return self._then(item)

    async def aclose(self) -> None:
        """Close the source: ``aclose()`` an async one, ``close()`` a sync one off the
        loop (if they have those methods)."""
        if self._ahead is not None:
            await self._ahead.aclose()
        if self._async is not None and hasattr(self._async, "aclose"):
            await self._async.aclose()
        if self._sync is not None and hasattr(self._sync, "close"):
            await self._off.call(self._sync.close)


async def close_unread(source: object, *, inline: bool) -> None:
    """Close ``source``, handed to a fit refused before it read it, as a fit that read it
    closes it (:meth:`Items.aclose`): an async iterator's ``aclose()``, a sync iterator's
    ``close()`` (off the loop, unless ``inline``), if they have those methods. An
    iterable that is not its own iterator (a list) had no iterator made: nothing to
    close. A source that a running fit reads (:class:`Reading`) is that fit's to close:
    it is left alone."""
    if Reading.held(source):
        return
    if isinstance(source, AsyncIterator):
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
    elif isinstance(source, Iterator):
        close = getattr(source, "close", None)
        if close is None:
            return
        if inline:
            close()
        else:
            await off_loop(close)


class ReadAhead:
    """The items of a sync iterator, each passed through ``then`` (if given), as an async
    iterator: a thread iterates it and calls ``then`` without pause, up to ``limit``
    items ahead of the consumer.

    Taking an item that is ready costs no trip off the loop; the loop waits (and is woken
    by the thread) only when none is. The iterator's exception is raised after the items
    before it. :meth:`aclose` stops the thread (after the item it is making) and closes
    the iterator there; call it once the consumer is done, whatever happened.

    Only for an iterator whose items nobody changes after they are yielded (reading
    ahead, it goes on while the consumer uses them).

    Args:
        items: the iterator, used on the thread only from now on.
        thread: the executor whose thread iterates (it is busy until :meth:`aclose`).
        then: called on the thread with each item, in order: the consumer gets what it
            returns (or raises, in the item's place); None: the items themselves.
        limit: items held ready, >= 1.
    """

    def __init__(
        self,
        items: Iterator[Any],
        thread: concurrent.futures.Executor,
        then: Callable[[Any], Any] | None = None,
        limit: int = READ_AHEAD,
    ) -> None:
        self._items, self._then, self._limit = items, then, limit
        self._loop = asyncio.get_running_loop()
        self._ready: collections.deque[Any] = collections.deque()
        self._lock = threading.Condition(threading.Lock())
        self._full = False  # the thread waits for room
        self._stop = False
        self._waiter: asyncio.Future[None] | None = None  # the consumer waits for an item
        self._thread = thread.submit(self._produce)

    def __aiter__(self) -> ReadAhead:
        return self

    async def __anext__(self) -> Any:
        while True:
            with self._lock:
                if self._ready:
                    item = self._ready.popleft()
                    if self._full:
                        self._full = False
                        self._lock.notify()
                    break
                waiter = self._waiter = self._loop.create_future()
            await waiter
        if item is END:
            raise StopAsyncIteration
        if isinstance(item, _Raised):
            raise item.error
        return item

    async def aclose(self) -> None:
        """Stop the thread and close the iterator (on the thread); wait for both."""
        with self._lock:
            self._stop = True
            self._lock.notify()
        await await_without_orphans(self._thread)

    def _produce(self) -> None:
        """The thread's work: iterate, hand each item over, until the end or a stop."""
        try:
            for item in self._items:
                if not self._put(item if self._then is None else self._then(item)):
                    return
            self._put(END)
        except BaseException as exc:  # even SystemExit: the consumer must not wait forever
            self._put(_Raised(exc))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def _put(self, item: Any) -> bool:
        """Hand ``item`` over once there is room; False once stopped."""
        with self._lock:
            while len(self._ready) >= self._limit and not self._stop:
                self._full = True
                self._lock.wait()
            if self._stop:
                return False
            self._ready.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.call_soon_threadsafe(_wake, waiter)
        return True


class _Raised(NamedTuple):
    error: BaseException


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _next_then(iterator: Iterator[Any], then: Callable[[Any], T]) -> T:
    item = next(iterator, END)
    return item if item is END else then(item)


@contextlib.asynccontextmanager
async def iterate(
    source: Iterable[Any] | AsyncIterable[Any], off: OffLoop, then: Callable[[Any], T]
) -> AsyncIterator[Items[T]]:
    """The :class:`Items` of ``source``, each passed through ``then`` (called on one
    thread at a time, in stream order); the source is closed on the way out.

    When the block raised an error (the source's own, say), that error is what leaves: a
    close that fails then (a source closed already, or running in another fit) is noted
    on it, not raised in its place.
    """
    items = Items(source, off, then)
    error: Exception | None = None
    try:
        yield items
    except Exception as exc:
        error = exc
        raise
    finally:
        try:
            await items.aclose()
        except Exception as failed:
            if error is None:
                raise
            error.add_note(f"closing the source then raised {type(failed).__name__}: {failed}")
