"""Rows arriving in chunks, handed on as batches: in order, or shuffled through a bounded
buffer.

Both batchers take chunks of rows with :meth:`add` and give back batches of
``batch_size`` rows; :meth:`drain` hands out what is left at the end of a pass (the last,
shorter batch). Rows may carry sample weights (``w``), which travel with them: give
them with every chunk or with none. Pure numpy bookkeeping, no I/O: a stream reader
feeds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain.data._stream import BatchCutter, copy_rows

Batch = tuple[npt.NDArray[Any], ...]
"""``(X, y)``, or ``(X, y, w)`` for rows given with weights."""


class InOrder:
    """Batches of ``batch_size`` rows in the order the rows arrive (new arrays each);
    ``rows``, if given, is the most rows that will arrive (a batch's arrays need no more).

    Example:
        >>> batcher = InOrder(4)
        >>> out = list(batcher.add(np.arange(6.0)[:, None], np.arange(6)))
        >>> [y.tolist() for _, y in out + list(batcher.drain())]
        [[0, 1, 2, 3], [4, 5]]
    """

    def __init__(self, batch_size: int, *, rows: int | None = None) -> None:
        self._cutter = BatchCutter(batch_size)
        # A batch holds at most the rows that will arrive (``rows``, when known).
        self._size = batch_size if rows is None else max(1, min(batch_size, rows))
        self._out: dict[str, npt.NDArray[Any]] | None = None

    def add(
        self, X: npt.NDArray[Any], y: npt.NDArray[Any], w: npt.NDArray[Any] | None = None
    ) -> Iterator[Batch]:
        """Take the rows of ``X`` and ``y`` (and their weights ``w``); yield each batch
        they complete."""
        for cut in self._cutter.plan(len(X)):
            if self._out is None:
                self._out = _empty(self._size, X, y, w)
            copy_rows(self._out, X, y, cut, w)
            if cut.full:
                yield tuple(self._out.values())
                self._out = None

    def drain(self) -> Iterator[Batch]:
        """Yield the rows not yet handed out as one shorter batch (if there are any)."""
        rows = self._cutter.flush()
        if rows and self._out is not None:
            yield tuple(values[:rows] for values in self._out.values())
        self._out = None


class ShuffleBuffer:
    """Batches drawn at random from a buffer of at most ``capacity`` rows.

    Rows fill the buffer; once it is full, a seeded permutation of its slots picks about
    half of them (a whole number of batches), whose rows leave as batches while the other
    rows stay for later draws; the next rows arriving take the freed slots. A row can so
    leave far from where it arrived, and memory stays bounded: the buffer, plus the rows
    of one draw. ``rng`` alone decides the order, so the same seed and the same rows give
    the same batches.

    Args:
        capacity: rows the buffer holds, >= ``batch_size``.
        batch_size: rows per batch.
        rng: the generator that draws (the caller's: it may go on using it).

    Example:
        >>> shuffle = ShuffleBuffer(8, 2, np.random.default_rng(0))
        >>> rows = np.arange(10)
        >>> out = list(shuffle.add(rows[:, None].astype(float), rows))
        >>> out += list(shuffle.drain())
        >>> sorted(np.concatenate([y for _, y in out]).tolist()) == rows.tolist()
        True
    """

    def __init__(self, capacity: int, batch_size: int, rng: np.random.Generator) -> None:
        self._capacity, self._batch, self._rng = capacity, batch_size, rng
        self._draw = batch_size * max(1, capacity // 2 // batch_size)
        self._rows: list[npt.NDArray[Any]] | None = None  # X, y (and w) of every slot
        self._free = np.arange(capacity)  # slots to fill, in this order
        self._filled = 0  # how many of them are filled already

    def add(
        self, X: npt.NDArray[Any], y: npt.NDArray[Any], w: npt.NDArray[Any] | None = None
    ) -> Iterator[Batch]:
        """Take the rows of ``X`` and ``y`` (and their weights ``w``); yield the batches
        drawn while they go in."""
        given = (X, y) if w is None else (X, y, w)
        start = 0
        while start < len(X):
            if self._rows is None:
                self._rows = list(_empty(self._capacity, X, y, w).values())
            take = min(len(self._free) - self._filled, len(X) - start)
            slots = self._free[self._filled : self._filled + take]
            for buffer, values in zip(self._rows, given, strict=True):
                buffer[slots] = values[start : start + take]
            self._filled, start = self._filled + take, start + take
            if self._filled == len(self._free):
                taken = self._rng.permutation(self._capacity)[: self._draw]
                yield from self._split(taken)
                self._free, self._filled = taken, 0

    def drain(self) -> Iterator[Batch]:
        """Yield every row still in the buffer, shuffled, and free the buffer."""
        if self._rows is not None:
            empty = self._free[self._filled :]
            held = np.setdiff1d(np.arange(self._capacity), empty, assume_unique=True)
            yield from self._split(self._rng.permutation(held))
        self._rows = None
        self._free, self._filled = np.arange(self._capacity), 0

    def _split(self, slots: npt.NDArray[np.intp]) -> Iterator[Batch]:
        """The rows in ``slots`` (copied out), as batches in that order."""
        assert self._rows is not None
        # take, not values[slots]: the same rows, and a read_parquet pass took 0.93-0.94x
        # the CPU time with it (the softmax benchmark's file, paired in one process).
        drawn = [values.take(slots, axis=0) for values in self._rows]
        for start in range(0, len(slots), self._batch):
            yield tuple(values[start : start + self._batch] for values in drawn)


def _empty(
    rows: int, X: npt.NDArray[Any], y: npt.NDArray[Any], w: npt.NDArray[Any] | None
) -> dict[str, npt.NDArray[Any]]:
    """Buffers of ``rows`` rows shaped and typed like ``X``, ``y`` (and ``w``), in that
    order."""
    out = {
        "X": np.empty((rows, *X.shape[1:]), X.dtype),
        "y": np.empty((rows, *y.shape[1:]), y.dtype),
    }
    if w is not None:
        out["w"] = np.empty(rows, w.dtype)
    return out
