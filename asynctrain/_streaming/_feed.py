"""The feed of a stream fit: source → bounded queue → ring of batch buffers → trainer.

::

    source ─► consumer task ─► asyncio.Queue(maxsize=buffer) ─► filler task ─► ready queue
    (sync or   pulls a batch,    validated batches; the          re-cuts rows    (slot, rows)
     async)    validates a       producer waits while it         into a free     ─► trainer
               copy of it off    is full                         ring slot ◄──── slot freed
               the loop                                                          after its step

The ring is ``RING_SLOTS`` batch buffers shared with the backend once
(``backend.share(..., slots=RING_SLOTS)``), so a shard task carries only a slot number and
a row range, never arrays, also on process backends. On backends whose ring holds
references (inline, thread), a source batch of exactly ``batch_size`` rows that starts a
batch is not copied into a buffer: its checked copy is the slot's content, published
from the loop without a trip to a thread (a slot holds ``batch_size`` rows either way, so
memory stays as bounded; a slot's buffer is allocated only when rows must be re-cut).

Errors travel in stream order: a bad batch or a raising source reaches the trainer after
every full batch before it, so the parameters it leaves behind do not depend on timing.
Validation, copies and a sync source's ``next()`` run on the feed's threads (inline on
the inline backend), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._engine._tasks import unwrap_group
from asynctrain._inputs import ClassWeight
from asynctrain._streaming._batch import Batch, NameRecord, check_batch
from asynctrain._streaming._sources import END, OffLoop, iterate
from asynctrain.backends import Backend, SharedArrays
from asynctrain.backends._base import Arrays, LocalShared
from asynctrain.data._stream import BatchCutter, Cut, copy_rows
from asynctrain.models import Model

RING_SLOTS = 3
"""Batch buffers of a stream fit: one in the step, one ready, one being filled."""

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
        self._class_weight = class_weight
        self._source, self._model, self._backend, self._off = source, model, backend, off
        self._describe, self._names = describe, names
        self._cutter = BatchCutter(batch_size, max_samples=max_samples)
        self._batches: asyncio.Queue[Batch | BaseException | None] = asyncio.Queue(buffer)
        self._ready: asyncio.Queue[Ready] = asyncio.Queue()  # bounded by the ring's slots
        self._free: asyncio.Queue[int] = asyncio.Queue()
        self._buffers: list[Arrays | None] = []  # a slot's buffer, made when first needed
        self._empty: Callable[[], Arrays] | None = None  # makes one
        self._slot: int | None = None  # the slot being filled

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
        self._free.put_nowait(slot)

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
        like: npt.NDArray[Any] | None = None
        weighted: bool | None = None  # whether the stream's batches carry weights
        rows, limit = 0, self._cutter.max_samples
        async with iterate(self._source, self._off) as items:
            number = 0
            while True:
                check = functools.partial(
                    check_batch,
                    self._model,
                    where=self._describe(number),
                    like=like,
                    weighted=weighted,
                    names=self._names,
                    class_weight=self._class_weight,
                )
                batch = await items.pull(check)
                if batch is END:
                    return
                number += 1
                if batch is None:
                    continue
                if like is None:
                    like = np.empty((0, *batch[1].shape[1:]), batch[1].dtype)
                    weighted = batch[2] is not None
                await self._batches.put(batch)
                rows += len(batch[0])
                if limit is not None and rows >= limit:
                    return

    # -- the filler: validated batches → ring slots ----------------------------------------

    async def fill(self) -> None:
        """Re-cut validated batches into ring slots until the stream (or max_samples) ends."""
        try:
            await self._fill()
        except Exception as exc:
            self._ready.put_nowait(exc)

    async def _fill(self) -> None:
        while not self._cutter.done:
            batch = await self._batches.get()
            if batch is None:
                break
            if isinstance(batch, BaseException):
                raise batch  # the partly filled slot is dropped: no part of it is trained
            if self.ring is None:
                await self._open_ring(batch)
            await self._cut(batch, self._cutter.plan(len(batch[0])))
        rows = self._cutter.flush()
        if rows and self._slot is not None:
            assert self.ring is not None
            await self._off.call(self.ring.write, self._slot, self._buffer(self._slot))
            self._ready.put_nowait((self._slot, rows))
        self._ready.put_nowait(None)

    async def _cut(self, batch: Batch, cuts: list[Cut]) -> None:
        """Copy ``cuts`` of ``batch`` into ring slots, in as few trips off the loop as the
        free slots allow, and publish each slot it fills (a whole batch by reference, if
        the ring takes references: see the module docstring)."""
        whole = len(cuts) == 1 and cuts[0].at == 0 and cuts[0].stop - cuts[0].start == len(batch[0])
        if whole and cuts[0].full and self._by_reference:  # the batch is one slot
            await self._publish(batch)
            return
        jobs: list[tuple[int, Cut]] = []
        for cut in cuts:
            if self._slot is None:
                if jobs and self._free.empty():
                    await self._copy(batch, jobs)
                    jobs = []
                self._slot = await self._free.get()
            jobs.append((self._slot, cut))
            if cut.full:
                self._slot = None
        if jobs:
            await self._copy(batch, jobs)

    async def _publish(self, batch: Batch) -> None:
        """Make ``batch`` (checked, owned by the feed, ``batch_size`` rows) a slot's
        content by reference; the slot's buffer, if it had one, is dropped."""
        assert self.ring is not None
        slot = await self._free.get()
        self._buffers[slot] = None
        X, y, w = batch
        self.ring.write(slot, {"X": X, "y": y} if w is None else {"X": X, "y": y, "w": w})
        self._ready.put_nowait((slot, self._cutter.batch_size))

    @property
    def _by_reference(self) -> bool:
        """Whether the ring stores the arrays written to it rather than copies."""
        return isinstance(self.ring, LocalShared)

    async def _open_ring(self, batch: Batch) -> None:
        size = self._cutter.batch_size
        # Shapes and dtypes only: the factory outlives the batch, which must not stay alive.
        arrays = zip("Xyw", batch, strict=True)
        layout = {key: (a.shape[1:], a.dtype) for key, a in arrays if a is not None}

        def buffers() -> Arrays:
            # "w" for a weighted stream: the weights travel with the rows
            return {key: np.zeros((size, *shape), dtype) for key, (shape, dtype) in layout.items()}

        self.ring = await self._backend.share(buffers(), slots=RING_SLOTS)
        self._empty = buffers
        self._buffers = [None] * RING_SLOTS
        for slot in range(RING_SLOTS):
            self._free.put_nowait(slot)

    def _buffer(self, slot: int) -> Arrays:
        """``slot``'s buffer, made now if it has none yet (off the loop)."""
        buffer = self._buffers[slot]
        if buffer is None:
            assert self._empty is not None
            buffer = self._buffers[slot] = self._empty()
        return buffer

    async def _copy(self, batch: Batch, jobs: list[tuple[int, Cut]]) -> None:
        await self._off.call(self._copy_rows, batch, jobs)
        for slot, cut in jobs:
            if cut.full:
                self._ready.put_nowait((slot, self._cutter.batch_size))

    def _copy_rows(self, batch: Batch, jobs: list[tuple[int, Cut]]) -> None:
        """Copy each ``(slot, cut)`` of ``batch`` into the slot's buffer; share full ones."""
        assert self.ring is not None
        for slot, cut in jobs:
            copy_rows(self._buffer(slot), batch[0], batch[1], cut, batch[2])
            if cut.full:
                self.ring.write(slot, self._buffer(slot))


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
        raise unwrap_group(eg) from None
    finally:
        if feed.ring is not None:
            await backend.release(feed.ring)
        await off.aclose()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
