"""Gathering ahead: the next steps' rows taken out of the data while a step computes.

A shard's first work is a gather: its rows, scattered over the data by the epoch's order,
copied into arrays of their own (``X.take(rows)``). That copy is a memory-bound pass the
step's math waits for: 90 µs of a 0.45 ms softmax step (1,024 rows of 128 features), 100
µs of a logistic step of 2,048 rows of 64, 160 µs of 2,048 MLP rows. The rows are known an
epoch ahead, and numpy's ``take`` runs without the GIL, so a thread of the fit's own can
copy them on another core while steps compute.

Not a step at a time, though: every call to another thread costs the loop's thread two
hand-offs of the GIL (the thread's start and its result), each a wake-up of a sleeping
thread, which on the 2-core VMs measured here cost more than the 90 µs saved (a softmax
quarter-epoch took 1.16× as long, a logistic one 1.25×). So the thread gathers *chunks*
of consecutive steps, one ``take`` per array for a whole chunk: the epoch's order is cut
into batches in order, so a chunk's rows are one slice of it. The first chunks are one
step, then two, four, ... (up to :data:`CHUNK_BYTES` of features), each started while the
steps before it compute, so a step rarely waits for its rows. A step's shards are then
consecutive rows of its chunk: views (``Gathered``), each the same values in the same
layout as the array the shard would have gathered, so the math gives the same bits (the
bit-identity tests compare these backends with the inline and process backends, whose
shards gather their own rows, each into an array of its own).

Only where the gathered rows can be handed over as they are, a thread may be added, and
a core is free for it: sync steps on an in-memory dataset (which ones, and why one shard
a step for dense features: ``_context``'s ``_gathers_ahead``) that the thread backend
computes on the loop, or on fewer worker threads than the process has cores
(:meth:`Prefetch.spare`). Not beside a worker on every core: there the gather thread took
the workers' cores and their GIL (the reference MLP's epoch at batch 4,096 in 2 shards on
2 threads, side by side: 0.446 / 0.391 / 0.450 s against 0.392 / 0.330 / 0.418 without).
Not the inline backend, which runs a fit with no thread of its own (docs/backends.md).
Tasks for worker processes and clusters carry indices, and read their rows where they
run (a process worker gathers its next task's rows once it has replied:
``_work.KeptRows``). Streams assemble their batches on their own.

Sparse (CSR) rows are gathered by scipy's row-copy kernel, which waits on memory at every
row: 0.3-0.7 ms for 2,048 rows of the RCV1-shaped benchmark data (800,000 rows, 0.16 %
dense), more than the step's two products on them take. It holds the GIL only between its
few numpy calls: a Python loop on another thread kept 81-99 % of its pace beside a thread
gathering without pause. A chunk of CSR rows is cut into its shards as CSR over views of
the chunk's arrays (:func:`asynctrain._sparse.take` of a row range): the same values and
column indices in the same order as the shard's own gather, so the same bits. The cutting
is done on the gather thread too (building a CSR costs about 0.1 ms), so a step takes its
shards as they are.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from asynctrain._engine._work import Gathered, Indices, gather
from asynctrain._offloop import off_loop
from asynctrain._sparse import is_sparse, take, unpack
from asynctrain._threads import ThreadPool, _Call
from asynctrain.backends import SharedArrays, default_workers

CHUNK_BYTES = 2 << 20
"""The features one chunk gathers at most (at least one step's): with the chunk being
consumed and the next, a fit holds at most twice this ahead. Larger chunks were no faster
a step and sometimes far slower: in logistic regression races on the 1,000,000 × 64 data
(thread backend, 1 worker, steps of 2,048 rows), 8 MiB chunks (32,768 rows) took 53–105
ms to gather on the gather thread in 3 of 8 races, against 4 ms for 4 MiB, and a step
waited 90–120 ms for one; 4 MiB chunks stalled a step 30–35 ms in 2 of 8; 2 MiB in none
of 8 (the cause was not found: the copy alone is about 1 ms a MiB)."""


class Prefetch:
    """The rows of an epoch's coming steps, gathered ahead in chunks on a thread of the fit.

    :meth:`begin` hands it an epoch's batches (consecutive slices of the epoch's order);
    each step calls :meth:`take` for its shards' rows (None: not gathered ahead, the step
    gathers its own) and, as its math starts, if it leaves a core :meth:`spare`,
    :meth:`ahead`, which starts the next chunk when the steps gathered or under way run
    short.
    :meth:`aclose` drops what is pending, waits for a gather under way (no work outlives
    the fit) and stops the thread, which starts with the first chunk.

    ``split`` cuts a step's rows into its shards' (the bounds the step's own split uses);
    ``cores``: the cores the process may run on (default: all it may).

    Example:
        >>> import asynctrain, numpy as np
        >>> from asynctrain.backends import LocalShared
        >>> data = LocalShared({"X": np.arange(8.0).reshape(4, 2), "y": np.arange(4)}, 1)
        >>> order = np.array([3, 1, 0, 2])
        >>> async def demo():
        ...     prefetch = Prefetch(data, split=lambda n: [(0, 1), (1, n)], cores=2)
        ...     batches = [order[:2], order[2:]]
        ...     prefetch.begin(batches)
        ...     first = await prefetch.take(batches[0])  # nothing was ahead of step 0
        ...     prefetch.ahead()  # step 1's rows, while step 0 computes
        ...     second = await prefetch.take(batches[1])
        ...     await prefetch.aclose()
        ...     return first, [shard.y for shard in second]
        >>> asynctrain.run(demo())
        (None, [array([0]), array([2])])
    """

    def __init__(
        self,
        data: SharedArrays,
        *,
        split: Callable[[int], Sequence[tuple[int, int]]],
        cores: int | None = None,
    ) -> None:
        self._arrays: Mapping[str, Any] = data.read(0)
        self._split = split
        self._cores = default_workers() if cores is None else cores
        self._chunk_rows = max(1, CHUNK_BYTES // _row_bytes(self._arrays))
        self._pool: ThreadPool | None = None
        self._batches: Sequence[Indices] = ()
        self._taken = 0  # steps of the epoch taken so far
        self._planned = 0  # steps of the epoch gathered or under way, from the first
        self._size = 0  # steps in the last chunk started
        # id of a step's indices -> (them, their chunk's call, their place in it)
        self._steps: dict[int, tuple[Indices, _Call[Chunk], int]] = {}
        self._last: _Call[Chunk] | None = None  # the chunk started last

    def begin(self, batches: Sequence[Indices]) -> None:
        """Gather for an epoch's ``batches`` (each a slice of the epoch's order, in
        order) from now on; what was gathered for another is dropped."""
        self._drop()
        self._batches, self._taken, self._planned, self._size = batches, 0, 1, 0

    async def take(self, indices: Indices) -> list[Gathered] | None:
        """The shards' rows of the step of ``indices`` (one of :meth:`begin`'s batches,
        in order), if they were gathered ahead; None otherwise, at once."""
        self._taken += 1
        ahead = self._steps.pop(id(indices), None)
        if ahead is None or ahead[0] is not indices:
            return None
        _, call, place = ahead
        return (await call.future)[place]

    def spare(self, busy: int) -> bool:
        """Whether a step computing on ``busy`` threads (1: the loop's; else its worker
        tasks) leaves a core to the gather thread: only then is :meth:`ahead` called."""
        return busy < self._cores

    def ahead(self) -> None:
        """Start the next chunk if the steps gathered or under way ahead of the next one
        are fewer than the last chunk had: twice its steps, up to :data:`CHUNK_BYTES`
        (one step at an epoch's start, or after steps that were not gathered ahead:
        the next step waits for that chunk)."""
        batches, first = self._batches, max(self._planned, self._taken)
        lead = self._planned - self._taken  # steps gathered or under way, not yet taken
        if first >= len(batches) or lead >= max(1, self._size):
            return
        if lead < 0:  # steps went to workers, ungathered: start again from one step
            self._size = 0
        rows = max(self._chunk_rows, len(batches[first]))
        size, length = 0, 0
        limit = max(1, 2 * self._size)
        while first + size < len(batches) and size < limit:
            step = len(batches[first + size])
            if size and length + step > rows:
                break
            size, length = size + 1, length + step
        steps = batches[first : first + size]
        if self._pool is None:
            self._pool = ThreadPool(1, name="asynctrain-gather")
        # A bare future: a step that finds its chunk gathered takes it without a turn.
        call = self._pool.submit(_gather_chunk, self._arrays, steps, self._split)
        call.future.add_done_callback(_retrieved)
        self._last = call
        for place, indices in enumerate(steps):
            self._steps[id(indices)] = (indices, call, place)
        self._planned, self._size = first + size, size

    async def aclose(self) -> None:
        """Drop the gathers pending, wait for one under way and stop the thread."""
        # Settled on the loop: the thread is done with it (a dropped future is not).
        busy = self._last is not None and not self._last.finished
        self._drop()
        self._batches, self._last = (), None
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if busy:  # a chunk being gathered (milliseconds, for a large one): joined off the loop
            await off_loop(functools.partial(pool.shutdown, cancel=True))
        else:  # an idle thread ends at once: joined here, without a thread to join it
            pool.shutdown(cancel=True)

    def _drop(self) -> None:
        for _, call, _ in self._steps.values():
            call.cancel()  # not started: never runs; started: its outcome dropped
        self._steps.clear()


Chunk = list[list[Gathered]]
"""The rows of a chunk's steps, each step's cut into its shards'."""


def _gather_chunk(
    arrays: Mapping[str, Any],
    steps: Sequence[Indices],
    split: Callable[[int], Sequence[tuple[int, int]]],
) -> Chunk:
    """On the gather thread: the rows of consecutive ``steps``, in one gather, cut into
    each step's shards."""
    chunk = gather(arrays, np.concatenate(steps))
    shards: Chunk = []
    start = 0
    for indices in steps:
        shards.append([_rows(chunk, start + a, start + b) for a, b in split(len(indices))])
        start += len(indices)
    return shards


def _rows(chunk: Gathered, start: int, stop: int) -> Gathered:
    """Rows ``start:stop`` of a chunk, as views of its arrays."""
    X = chunk.X
    # The chunk's CSR rows were checked as the data's were (``features``), so are these.
    rows = take(X, range(start, stop), checked=True) if is_sparse(X) else X[start:stop]
    w = None if chunk.w is None else chunk.w[start:stop]
    return Gathered(rows, chunk.y[start:stop], w)


def _row_bytes(arrays: Mapping[str, Any]) -> int:
    """The bytes of features a row holds: a dense row's, or a CSR row's values and column
    indices on average."""
    X = unpack(arrays)  # a sparse ``X`` is shared as its three arrays: rebuilt, no copy
    if is_sparse(X):
        return max(1, int(X.data.nbytes + X.indices.nbytes) // max(1, int(X.shape[0])))
    return max(1, int(X.dtype.itemsize) * int(np.prod(X.shape[1:], dtype=np.int64)))


def _retrieved(future: asyncio.Future[Chunk]) -> None:
    if not future.cancelled():
        future.exception()  # a dropped gather's error is nobody's: retrieved, not logged
