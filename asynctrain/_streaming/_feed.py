"""The feed of a stream fit: source → bounded queue → ring of batch buffers → trainer.

::

    source ─► consumer task ─► asyncio.Queue(maxsize=buffer) ─► filler task ─► ready queue
    (sync or   pulls a batch;    per source batch, the batches   hands each      (slot, rows)
     async)    in one trip off   it completed; the producer      to a free       ─► trainer
               the loop checks   waits while it is full          ring slot ◄──── slot freed
               and re-cuts it                                                    after its step

One trip off the loop per source batch (with a sync source's ``next()``): the batch is
checked and re-cut into batches of ``batch_size`` rows (:func:`._batch.assemble_batch`,
:class:`~asynctrain.data._stream.BatchAssembler`); a plain float table with integer labels
is copied once, straight into those batches, and the copy is checked there. The ring is
``RING_SLOTS`` slots shared with the backend once (``backend.share(..., slots=RING_SLOTS)``),
so a shard task carries only a slot number and a row range, never arrays, also on
process backends. On backends whose ring holds references (inline, thread) an assembled
batch *is* the slot's content, published from the loop without a trip; on the others the
filler copies it into the slot's shared memory, as many slots a trip as are free. Either
way, once nothing reads a batch any more (its step released the slot, or it was copied to
shared memory) it goes back to the assembler, which writes a later batch into it.

asynctrain's Parquet stream is read ahead instead (:class:`~._sources.ReadAhead`): a
thread of its own reads, shuffles, checks and re-cuts it a few batches ahead, and the
consumer takes the finished batches without a trip each.

Errors travel in stream order: a bad batch or a raising source reaches the trainer after
every full batch before it, so the parameters it leaves behind do not depend on timing.
A sync source's ``next()`` and the copies into shared memory run on the feed's threads
(inline on the inline backend), never on the event loop; so do the checks, except that an
async source's batch is checked on the loop once the fit's steps run, when its check is
measured to fit the loop's budget (:class:`~._where.CheckSite`; between two steps while
they compute on the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

from asynctrain._engine._tasks import raise_unwrapped
from asynctrain._inputs import ClassWeight
from asynctrain._streaming._batch import Assembled, Layout, NameRecord, assemble_batch, rows_of
from asynctrain._streaming._sources import END, OffLoop, hands_over, iterate
from asynctrain._streaming._where import CheckSite
from asynctrain.backends import Backend, SharedArrays
from asynctrain.backends._base import Arrays, LocalShared
from asynctrain.data._stream import BatchAssembler
from asynctrain.models import Model

T = TypeVar("T")

RING_SLOTS = 3
"""Batch slots of a stream fit: one in the step, one ready, one being filled."""

Ready = tuple[int, int] | BaseException | None  # (slot, rows), an error, or the end


class Feed:
    """Delivers a stream as ring slots of ``batch_size`` rows; see the module docstring.

    Open it with :func:`open_feed`; then ``await next()`` until it returns None, and
    ``release`` each slot once its step is done.
    """

    def __init__(
        self,
        source: Iterable[Any] | AsyncIterable[Any],
        model: Model,
        backend: Backend,
        off: OffLoop,
        *,
        batch_size: int,
        buffer: int,
        max_samples: int | None,
        describe: Callable[[int], str],
        names: NameRecord | None = None,
        class_weight: ClassWeight = None,
    ) -> None:
        self.ring: SharedArrays | None = None
        self.site = CheckSite()
        """Where the batches of an async source are checked: on the loop once the fit's
        steps run (the stream follows its placement: ``site.follow``)."""
        # Set between steps. A check on the loop waits for it: made while a step waits
        # for its update, the check's Python and the update thread's would take turns at
        # the GIL (each turn a hand-off), and the step would end only after both.
        self._between = asyncio.Event()
        self._between.set()
        self._waiting = False  # a check waits for the step in progress to end
        self._class_weight = class_weight
        self._source, self._model, self._backend, self._off = source, model, backend, off
        self._describe, self._names = describe, names
        self._assembler = BatchAssembler(batch_size, max_samples=max_samples)
        # Each item: the batches one source batch completed (often none, or one).
        self._batches: asyncio.Queue[list[Assembled] | BaseException | None] = asyncio.Queue(buffer)
        self._ready: asyncio.Queue[Ready] = asyncio.Queue()  # bounded by the ring's slots
        self._free: asyncio.Queue[int] = asyncio.Queue()
        self._held: dict[int, Arrays] = {}  # the arrays a by-reference slot holds

    async def next(self) -> tuple[int, int] | None:
        """The next ``(slot, rows)`` to train on, or None at the end of the stream.

        Raises the stream's error (a DataError naming the bad batch, or the source's own
        exception) in its place in the stream.
        """
        item = await self._ready.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def release(self, slot: int) -> None:
        """Hand ``slot`` back for refilling (its step has finished with it)."""
        held = self._held.pop(slot, None)
        if held is not None:  # its batch's arrays: the assembler writes a later one there
            self._assembler.reuse(held)
        self._free.put_nowait(slot)

    def step_begins(self) -> None:
        """Say that a step starts: a check due on the loop waits until it has ended."""
        self._between.clear()

    async def step_ended(self, slot: int) -> None:
        """Say that the step on ``slot`` has ended: ``release`` it, and let a check that
        waited for the step run now, before the next one starts."""
        self.release(slot)
        self._between.set()
        if self._waiting:
            await asyncio.sleep(0)  # one turn of the loop: the consumer checks its batch

    # -- the consumer: source → validated batches ------------------------------------------

    async def consume(self) -> None:
        """Pull, validate and enqueue batches until the source ends or fails, or until
        ``max_samples`` rows arrived."""
        try:
            await self._consume()
        except Exception as exc:
            if _cancelling():
                raise  # closing the source failed while the feed was being stopped
            await self._batches.put(exc)  # in stream order, after the good batches
        else:
            await self._batches.put(None)

    async def _consume(self) -> None:
        check = _Check(self, owned=hands_over(self._source))
        async with iterate(self._source, self._off, functools.partial(_timed, check)) as items:
            done = False  # not the assembler's: a read-ahead thread may be checking ahead
            while not done:
                pulled = await items.pull(here=self._here)
                if pulled is END:
                    break
                (batches, done), rows, seconds = pulled
                self.site.record(rows, seconds)
                if batches:
                    await self._batches.put(batches)
        last = self._assembler.flush()
        if last is not None:
            await self._batches.put([last])

    async def _here(self, item: object) -> bool:
        """Whether ``item`` is checked on the loop; if so, once no step is in progress."""
        rows = rows_of(item)
        if not self.site.here(rows):
            return False
        if self._between.is_set() or not self.site.between_steps:
            return True
        self._waiting = True
        try:
            await self._between.wait()
        finally:
            self._waiting = False
        return self.site.here(rows)  # the step just ended may have moved the steps

    # -- the filler: assembled batches → ring slots ----------------------------------------

    async def fill(self) -> None:
        """Hand assembled batches to ring slots until the stream (or max_samples) ends."""
        try:
            await self._fill()
        except Exception as exc:
            self._ready.put_nowait(exc)

    async def _fill(self) -> None:
        while True:
            batches = await self._batches.get()
            if batches is None:
                break
            if isinstance(batches, BaseException):
                raise batches  # the partly assembled batch was dropped: none of it is trained
            if self.ring is None:
                await self._open_ring(batches[0][0])
            if self._by_reference:
                for arrays, rows in batches:
                    await self._publish(arrays, rows)
            else:
                await self._copy(batches)
        self._ready.put_nowait(None)

    async def _publish(self, arrays: Arrays, rows: int) -> None:
        """Make ``arrays`` (assembled, owned by the feed) a slot's content by reference."""
        assert self.ring is not None
        slot = await self._free.get()
        self.ring.write(slot, arrays)
        self._held[slot] = arrays
        self._ready.put_nowait((slot, rows))

    async def _copy(self, batches: list[Assembled]) -> None:
        """Copy ``batches`` into free ring slots, in as few trips off the loop as the free
        slots allow, and publish each."""
        while batches:
            jobs = [(await self._free.get(), batches[0][1])]
            while len(jobs) < len(batches) and not self._free.empty():
                jobs.append((self._free.get_nowait(), batches[len(jobs)][1]))
            await self._write(batches, jobs)

    async def _write(self, batches: list[Assembled], jobs: list[tuple[int, int]]) -> None:
        """Write the first ``len(jobs)`` of ``batches`` to their slots, drop them from
        ``batches`` and publish them.

        A copy into a slot costs less a row than the batch's check did, so rows whose
        check would be made on the loop (:meth:`CheckSite.here`) are copied there too: a
        trip to a feed thread for a few hundred KB costs the loop more than the copy.
        Larger copies go off the loop.
        """
        assert self.ring is not None
        ring, written = self.ring, batches[: len(jobs)]
        del batches[: len(jobs)]

        def write() -> None:
            for (slot, _), (arrays, _) in zip(jobs, written, strict=True):
                ring.write(slot, arrays)

        if self.site.here(sum(rows for _, rows in written)):
            write()
        else:
            await self._off.call(write)
        for arrays, _ in written:  # copied into the slots: the assembler may write them again
            self._assembler.reuse(arrays)
        written.clear()
        for slot, rows in jobs:
            self._ready.put_nowait((slot, rows))

    @property
    def _by_reference(self) -> bool:
        """Whether the ring stores the arrays written to it rather than copies."""
        return isinstance(self.ring, LocalShared)

    async def _open_ring(self, first: Arrays) -> None:
        """Share a ring shaped like the batch ``first`` with the backend."""
        # Its arrays as the slots' first content: only their layout matters (each slot is
        # written before it is read), and no buffer is allocated for it.
        self.ring = await self._backend.share(first, slots=RING_SLOTS)
        for slot in range(RING_SLOTS):
            self._free.put_nowait(slot)


class _Check:
    """A feed's check of each source batch, in stream order (:func:`assemble_batch`):
    batch ``n`` is named by the feed's ``describe(n)``, and the first batch with rows
    sets the layout (targets, weights) the later ones must have. Called on one thread at
    a time (the loop's, the feed's, or a read-ahead thread). It returns the batches the
    item completed and whether the stream is done then (``max_samples`` rows taken): a
    read-ahead thread may have checked more items by the time the feed sees this one."""

    def __init__(self, feed: Feed, *, owned: bool) -> None:
        self._feed, self._owned = feed, owned
        self._number = 0
        self._layout: Layout | None = None

    def __call__(self, item: object) -> tuple[list[Assembled], bool]:
        feed, number = self._feed, self._number
        self._number += 1
        like, weighted = (None, None) if self._layout is None else self._layout
        first, batches = assemble_batch(
            feed._model,
            item,
            assembler=feed._assembler,
            where=feed._describe(number),
            like=like,
            weighted=weighted,
            names=feed._names,
            class_weight=feed._class_weight,
            owned=self._owned,
        )
        if self._layout is None and first is not None:
            self._layout = first
        return batches, feed._assembler.done


@contextlib.asynccontextmanager
async def open_feed(
    source: Iterable[Any] | AsyncIterable[Any],
    model: Model,
    backend: Backend,
    *,
    batch_size: int,
    buffer: int,
    max_samples: int | None,
    describe: Callable[[int], str],
    names: NameRecord | None = None,
    class_weight: ClassWeight = None,
) -> AsyncIterator[Feed]:
    """Run a :class:`Feed`'s consumer and filler while the block runs; stop them after.

    On exit the source is no longer consumed: an async generator is ``aclose``-d (its
    ``finally`` runs), a sync generator ``close``-d, and the ring is released.
    """
    off = OffLoop(inline=backend.inline)
    feed = Feed(
        source,
        model,
        backend,
        off,
        batch_size=batch_size,
        buffer=buffer,
        max_samples=max_samples,
        describe=describe,
        names=names,
        class_weight=class_weight,
    )
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(feed.consume()), group.create_task(feed.fill())]
            try:
                yield feed
            finally:
                for task in tasks:
                    task.cancel()
    except BaseExceptionGroup as eg:
        raise_unwrapped(eg)
    finally:
        if feed.ring is not None:
            await backend.release(feed.ring)
        await off.aclose()


def _timed(fn: Callable[[Any], T], item: object) -> tuple[T, int | None, float]:
    """``fn(item)``, the rows of ``item`` and the seconds ``fn`` took."""
    started = time.perf_counter()
    result = fn(item)
    return result, rows_of(item), time.perf_counter() - started


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
