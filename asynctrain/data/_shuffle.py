"""Rows arriving in chunks, handed on as batches: in order, or shuffled through a bounded
buffer.

Both batchers take chunks of rows with :meth:`add` and give back batches of
``batch_size`` rows; :meth:`drain` hands out what is left at the end of a pass (the last,
shorter batch). Pure numpy bookkeeping, no I/O: a stream reader feeds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain.data._stream import BatchCutter, copy_rows

Batch = tuple[npt.NDArray[Any], npt.NDArray[Any]]


class InOrder:
    """Batches of ``batch_size`` rows in the order the rows arrive (new arrays each).

    Example:
        >>> batcher = InOrder(4)
        >>> out = list(batcher.add(np.arange(6.0)[:, None], np.arange(6)))
        >>> [y.tolist() for _, y in out + list(batcher.drain())]
        [[0, 1, 2, 3], [4, 5]]
    """

    def __init__(self, batch_size: int) -> None:
        self._cutter = BatchCutter(batch_size)
        self._out: dict[str, npt.NDArray[Any]] | None = None

    def add(self, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> Iterator[Batch]:
        """Take the rows of ``X`` and ``y``; yield each batch they complete."""
        for cut in self._cutter.plan(len(X)):
            if self._out is None:
                self._out = _empty(self._cutter.batch_size, X, y)
            copy_rows(self._out, X, y, cut)
            if cut.full:
                yield self._out["X"], self._out["y"]
                self._out = None

    def drain(self) -> Iterator[Batch]:
        """Yield the rows not yet handed out as one shorter batch (if there are any)."""
        rows = self._cutter.flush()
        if rows and self._out is not None:
            yield self._out["X"][:rows], self._out["y"][:rows]
        self._out = None


class ShuffleBuffer:
    """Batches drawn at random from a buffer of at most ``capacity`` rows.

    Rows fill the buffer; once it is full, a seeded permutation of it picks about half
    of its rows (a whole number of batches), which leave as batches while the other rows
    stay for later draws. A row can so leave far from where it arrived, and memory stays
    bounded: the buffer, plus the rows of one draw. ``rng`` alone decides the order, so
    the same seed and the same rows give the same batches.

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
        self._X: npt.NDArray[Any] | None = None
        self._y: npt.NDArray[Any] | None = None
        self._n = 0

    def add(self, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> Iterator[Batch]:
        """Take the rows of ``X`` and ``y``; yield the batches drawn while they go in."""
        start = 0
        while start < len(X):
            if self._X is None or self._y is None:
                self._X, self._y = _empty(self._capacity, X, y).values()
            take = min(self._capacity - self._n, len(X) - start)
            self._X[self._n : self._n + take] = X[start : start + take]
            self._y[self._n : self._n + take] = y[start : start + take]
            self._n, start = self._n + take, start + take
            if self._n == self._capacity:
                yield from self._split(self._take(self._draw))

    def drain(self) -> Iterator[Batch]:
        """Yield every row still in the buffer, shuffled, and free the buffer."""
        if self._n:
            yield from self._split(self._take(self._n))
        self._X = self._y = None

    def _take(self, rows: int) -> Batch:
        """Remove ``rows`` random rows from the buffer and return them; the rows that
        stay are moved into the holes, so they fill positions ``0 .. n - rows``."""
        assert self._X is not None
        assert self._y is not None
        order = self._rng.permutation(self._n)
        taken, kept = order[:rows], order[rows:]
        out = self._X[taken], self._y[taken]
        left = self._n - rows
        holes, movers = taken[taken < left], kept[kept >= left]
        self._X[holes] = self._X[movers]
        self._y[holes] = self._y[movers]
        self._n = left
        return out

    def _split(self, rows: Batch) -> Iterator[Batch]:
        X, y = rows
        for start in range(0, len(X), self._batch):
            yield X[start : start + self._batch], y[start : start + self._batch]


def _empty(rows: int, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
    return {
        "X": np.empty((rows, *X.shape[1:]), X.dtype),
        "y": np.empty((rows, *y.shape[1:]), y.dtype),
    }
