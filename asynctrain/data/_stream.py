"""Re-cutting a stream of batches of any size into batches of the trainer's batch size.

Pure bookkeeping and numpy copies, no asyncio: the trainer's stream pipeline asks a
:class:`BatchCutter` where each incoming batch's rows go, and copies them with
:func:`copy_rows` into fixed-size batch buffers (off the event loop).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_int


class Cut(NamedTuple):
    """Rows ``start:stop`` of an incoming batch go to rows ``at:`` of the batch buffer.

    ``full`` means the buffer holds a whole batch once this cut is copied.
    """

    start: int
    stop: int
    at: int
    full: bool


class BatchCutter:
    """Plans how a stream of batches of any size is re-cut into ``batch_size`` rows each.

    Rows keep their stream order: batch ``k`` of the output holds stream rows
    ``k * batch_size`` to ``(k + 1) * batch_size``, whatever sizes the incoming batches
    had. With ``max_samples`` the cutter accepts only the stream's first ``max_samples``
    rows.

    Args:
        batch_size: rows per output batch, >= 1.
        max_samples: accept at most this many rows in total; None for no limit.

    Raises:
        ConfigError, ConfigTypeError: a bad ``batch_size`` or ``max_samples``.

    Example:
        >>> cutter = BatchCutter(4)
        >>> cutter.plan(3)
        [Cut(start=0, stop=3, at=0, full=False)]
        >>> [tuple(cut) for cut in cutter.plan(6)]
        [(0, 1, 3, True), (1, 5, 0, True), (5, 6, 0, False)]
        >>> cutter.filled, cutter.taken
        (1, 9)
    """

    __slots__ = ("batch_size", "filled", "max_samples", "taken")

    def __init__(self, batch_size: int, *, max_samples: int | None = None) -> None:
        self.batch_size = check_int("batch_size", batch_size)
        self.max_samples = None if max_samples is None else check_int("max_samples", max_samples)
        self.filled = 0
        """Rows already in the batch being assembled (< batch_size)."""
        self.taken = 0
        """Rows accepted so far."""

    @property
    def done(self) -> bool:
        """True once ``max_samples`` rows were accepted: the stream needs no more."""
        return self.max_samples is not None and self.taken >= self.max_samples

    def plan(self, rows: int) -> list[Cut]:
        """Return the cuts of an incoming batch of ``rows`` rows and account for them.

        Rows beyond ``max_samples`` get no cut (they are dropped).
        """
        if self.max_samples is not None:
            rows = min(rows, self.max_samples - self.taken)
        cuts, start = [], 0
        while start < rows:
            stop = min(rows, start + self.batch_size - self.filled)
            full = self.filled + stop - start == self.batch_size
            cuts.append(Cut(start, stop, self.filled, full))
            self.filled = 0 if full else self.filled + stop - start
            start = stop
        self.taken += rows
        return cuts

    def flush(self) -> int:
        """Return the rows of the partly assembled batch (the stream's last) and reset."""
        rows, self.filled = self.filled, 0
        return rows


def copy_rows(
    out: dict[str, npt.NDArray[Any]],
    X: npt.NDArray[Any],
    y: npt.NDArray[Any],
    cut: Cut,
    w: npt.NDArray[Any] | None = None,
) -> None:
    """Copy rows ``cut.start:cut.stop`` of ``X`` and ``y`` (and of the sample weights
    ``w``, if given) into ``out["X"]`` and ``out["y"]`` (``out["w"]``) at row ``cut.at``
    (casting ``y`` to the buffer's dtype)."""
    end = cut.at + cut.stop - cut.start
    np.copyto(out["X"][cut.at : end], X[cut.start : cut.stop])
    np.copyto(out["y"][cut.at : end], y[cut.start : cut.stop], casting="unsafe")
    if w is not None:
        np.copyto(out["w"][cut.at : end], w[cut.start : cut.stop])


Arrays = dict[str, npt.NDArray[Any]]
"""One assembled batch's arrays: ``"X"``, ``"y"`` and, for weighted rows, ``"w"``."""

SPARE = 8
"""Batches handed back (:meth:`BatchAssembler.reuse`) that an assembler keeps for reuse.

A feed has up to a dozen batches in flight (its queue of checked batches, its ring's
slots), handed back one a step but taken in bursts (a 1,000-row source batch completes
about two 512-row batches); keeping one spare left the feed allocating every other batch
anew, as fresh pages that fault on their first write (measured on the ``stream``
benchmark: 206 of 391 batches new with 1 spare, 16 with 4 or more, and the stream's
throughput ratio 0.86 -> 0.90, interleaved). Spares cost no peak memory: a batch is made
only when none is spare, so the batches alive never outnumber the most ever in flight."""


class _Made(dict[str, npt.NDArray[Any]]):
    """The arrays of a batch an assembler made (not an incoming batch handed on whole):
    only these may be handed back to it for reuse."""

    __slots__ = ()


class BatchAssembler:
    """Cuts a stream of batches of any size into new batches of ``batch_size`` rows, in
    stream order (as :class:`BatchCutter` plans), each ``(arrays, rows)``: ``arrays`` of
    ``batch_size`` rows of which the first ``rows`` hold the stream's rows.

    An incoming batch of exactly ``batch_size`` rows that starts a batch *is* that batch
    (its arrays are handed on, not copied) unless ``copy`` is asked: the caller gives
    arrays it owns. Every other batch's rows are copied into new arrays, so an assembled
    batch never keeps a larger incoming batch alive.

    Args:
        batch_size: rows per assembled batch, >= 1.
        max_samples: take at most this many rows in total; None for no limit.

    Example:
        >>> assembler = BatchAssembler(4)
        >>> X, y = np.arange(6.0)[:, None], np.arange(6)
        >>> [(arrays["y"].tolist(), rows) for arrays, rows in assembler.add(X, y)]
        [([0, 1, 2, 3], 4)]
        >>> arrays, rows = assembler.flush()
        >>> arrays["y"][:rows].tolist()
        [4, 5]
    """

    __slots__ = ("_cutter", "_partial", "_spare", "_y_dtype", "written")

    def __init__(self, batch_size: int, *, max_samples: int | None = None) -> None:
        self._cutter = BatchCutter(batch_size, max_samples=max_samples)
        self._partial: Arrays | None = None  # the batch being assembled
        self._spare: list[_Made] = []  # batches handed back, written again before new ones
        self._y_dtype: np.dtype[Any] | None = None  # of the batches assembled so far
        self.written: list[tuple[Arrays, int, int]] = []
        """Where the last :meth:`add` copied rows: ``(arrays, start, stop)`` each."""

    @property
    def batch_size(self) -> int:
        """Rows per assembled batch."""
        return self._cutter.batch_size

    @property
    def done(self) -> bool:
        """True once ``max_samples`` rows were taken: the stream needs no more."""
        return self._cutter.done

    def add(
        self,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        w: npt.NDArray[Any] | None = None,
        *,
        copy: bool = False,
        y_dtype: npt.DTypeLike | None = None,
    ) -> list[tuple[Arrays, int]]:
        """Take the rows of ``X`` and ``y`` (and their weights ``w``); return the batches
        they complete, each ``(arrays, batch_size)``.

        With ``copy`` every row is copied, also a batch that would be handed on (the
        caller does not own the arrays). :attr:`written` then says where the rows went.
        New arrays take the dtypes of ``X`` and ``w``, and ``y_dtype`` for ``y`` (by
        default that of the batches assembled before, else ``y``'s); ``y`` is cast as it
        is copied.
        """
        size = self._cutter.batch_size
        done: list[tuple[Arrays, int]] = []
        self.written = []
        for cut in self._cutter.plan(len(X)):
            whole = cut.full and cut.at == 0 and cut.start == 0 and cut.stop == len(X)
            if whole and not copy:
                done.append((_arrays(X, y, w), size))  # the incoming batch is one batch
                self._y_dtype = y.dtype
                continue
            if self._partial is None:
                target = y_dtype if y_dtype is not None else self._y_dtype
                self._partial = self._new(X, y, w, y.dtype if target is None else target)
            copy_rows(self._partial, X, y, cut, w)
            self.written.append((self._partial, cut.at, cut.at + cut.stop - cut.start))
            self._y_dtype = self._partial["y"].dtype
            if cut.full:
                done.append((self._partial, size))
                self._partial = None
        return done

    def reuse(self, arrays: Arrays) -> None:
        """Hand back a batch this assembler returned, once nothing reads it any more (its
        step is done, or it was copied elsewhere): a later batch is assembled into its
        arrays instead of new ones, which spares the allocation and the first writes to
        fresh memory. It keeps :data:`SPARE` at most; a batch it did not make (an
        incoming batch handed on whole) is ignored.

        May be called from another thread than :meth:`add`'s (a list's append and pop
        are atomic, and only :meth:`add` pops).

        Example:
            >>> assembler = BatchAssembler(2)
            >>> [(first, _)] = assembler.add(np.zeros((2, 1)), np.zeros(2), copy=True)
            >>> assembler.reuse(first)
            >>> [(second, _)] = assembler.add(np.ones((2, 1)), np.ones(2), copy=True)
            >>> second["X"] is first["X"]
            True
        """
        if isinstance(arrays, _Made) and len(self._spare) < SPARE:
            self._spare.append(arrays)

    def _new(
        self,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        w: npt.NDArray[Any] | None,
        y_dtype: npt.DTypeLike,
    ) -> _Made:
        """Arrays for a batch of rows like ``X``, ``y`` and ``w``: a spare batch of that
        layout (any other is dropped), or new ones."""
        rows = self._cutter.batch_size
        while self._spare:
            spare = self._spare.pop()
            if _fits(spare, X, y, w, y_dtype):
                return spare
        made = _Made(
            X=np.empty((rows, *X.shape[1:]), X.dtype),
            y=np.empty((rows, *y.shape[1:]), y_dtype),
        )
        if w is not None:
            made["w"] = np.empty((rows, *w.shape[1:]), w.dtype)
        return made

    def mark(self) -> tuple[int, int, Arrays | None]:
        """The assembler's state, for :meth:`undo`."""
        return self._cutter.filled, self._cutter.taken, self._partial

    def undo(self, mark: tuple[int, int, Arrays | None]) -> None:
        """Forget the rows added since :meth:`mark` returned ``mark`` (the batches they
        completed are the caller's to drop)."""
        self._cutter.filled, self._cutter.taken, self._partial = mark
        self.written = []

    def flush(self) -> tuple[Arrays, int] | None:
        """The partly assembled batch (the stream's last, shorter one) as ``(arrays,
        rows)``, or None if there is none; the assembler starts over."""
        rows, partial, self._partial = self._cutter.flush(), self._partial, None
        return (partial, rows) if rows and partial is not None else None


def _fits(
    arrays: Arrays,
    X: npt.NDArray[Any],
    y: npt.NDArray[Any],
    w: npt.NDArray[Any] | None,
    y_dtype: npt.DTypeLike,
) -> bool:
    """Whether a batch's ``arrays`` hold rows like ``X``, ``y`` (as ``y_dtype``) and
    ``w``."""
    same = (
        arrays["X"].dtype == X.dtype
        and arrays["X"].shape[1:] == X.shape[1:]
        and arrays["y"].dtype == y_dtype
        and arrays["y"].shape[1:] == y.shape[1:]
    )
    spare_w = arrays.get("w")
    if w is None or spare_w is None:
        return same and w is None and spare_w is None
    return same and spare_w.dtype == w.dtype and spare_w.shape[1:] == w.shape[1:]


def _arrays(X: npt.NDArray[Any], y: npt.NDArray[Any], w: npt.NDArray[Any] | None) -> Arrays:
    return {"X": X, "y": y} if w is None else {"X": X, "y": y, "w": w}
