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
