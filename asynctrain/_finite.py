"""NaN/Inf scans of float arrays that build no temporary of the array's size.

Shared by the data layer (a Dataset's ``X`` and ``y``, stream batches, Parquet chunks),
the models' checks of inputs to predict (``models.check_inputs``) and the updater. A
mask ``~np.isfinite(X)`` costs a byte per value: a quarter of a float32 ``X`` (a
gigabyte for 4 GiB of inputs to predict). Here a contiguous array is read once, by a
reduction; only an array that fails it, or a strided one, is searched element by
element, a block of at most :data:`CHUNK_VALUES` values at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import DataError

CHUNK_ROWS = 65_536
"""Most rows :func:`check_finite` scans at a time."""

CHUNK_VALUES = 1 << 22
"""Most values :func:`check_finite` scans at a time (fewer rows for wide rows), and the
block of an exact check: a block's mask is at most 4 MiB, whatever the array's size."""


def all_finite(arrays: Sequence[npt.NDArray[Any]]) -> bool:
    """Whether every element of every array is finite (int and bool arrays always are);
    ``arrays`` is read twice when a sum is not finite (a sequence, not an iterator).

    One read of each float array, in its memory order, with no temporary: the sum of
    squares (``vdot``) is finite only if every element is, and so is the sum of those
    sums, added up over the arrays and tested once (the updater checks a step's new
    parameters and optimizer state in one call: a test per array cost more than the
    reads of small ones). A sum that overflows although every element is finite (values
    near 1e19 in float32) is settled by an exact element-wise check of each array,
    :data:`CHUNK_VALUES` at a time. A column-major array is read through its transpose
    (``vdot`` would copy it into row order first).

    Example:
        >>> all_finite([np.ones(3), np.array([1, 2])]), all_finite([np.array([0.0, np.inf])])
        (True, False)
        >>> all_finite([np.full(4, 1e30, np.float32)])  # the squares overflow; the values do not
        True
    """
    total = 0.0
    for array in arrays:
        if array.dtype.kind in "fc":
            flat = array.T if array.ndim > 1 and array.flags.f_contiguous else array
            total += float(abs(np.vdot(flat, flat)))
    if math.isfinite(total):
        return True
    return all(_exactly_finite(array) for array in arrays if array.dtype.kind in "fc")


def _exactly_finite(array: npt.NDArray[Any]) -> bool:
    """Every element finite, by blocks of :data:`CHUNK_VALUES` values (a contiguous array's
    in memory order, through a flat view; any other whole)."""
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        return bool(np.isfinite(array).all())
    flat = array.ravel(order="K")  # a view: the array is contiguous
    blocks = range(0, flat.size, CHUNK_VALUES)
    return all(np.isfinite(flat[start : start + CHUNK_VALUES]).all() for start in blocks)


def check_finite(
    name: str,
    array: npt.NDArray[Any],
    *,
    note: str = "",
    columns: Sequence[str] | None = None,
    nulls: bool = False,
) -> None:
    """Raise :class:`DataError` naming the first NaN/Inf (row, and column when 2-D, by
    name too when ``columns`` names them). ``nulls``: the values were read from a data
    frame, whose nulls became NaN, so a NaN's message says a null reads as one (not an
    Inf's, nor a NaN's from a file or an array, where no null becomes NaN).

    Scans :data:`CHUNK_ROWS` rows (at most :data:`CHUNK_VALUES` values) at a time, so a
    memory-mapped array is never loaded whole and no mask of more than a chunk is built.
    Integer and bool arrays are always finite and are not scanned. A contiguous chunk is
    read once by :func:`all_finite` (no temporary), and only one that fails it is
    searched, element by element, for the value to name: half the time of a mask per
    chunk (1,000,000 x 64 float32, finite: 34.6 -> 16.5 ms). A column-major array, whose
    chunks of rows are strided, is read whole by :func:`all_finite` first; only a strided
    array (a view of every other column, say) is masked chunk by chunk, finite or not.

    Example:
        >>> check_finite("X", np.array([[0.0, 1.0], [2.0, np.nan]]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        asynctrain._exceptions.DataError: X has a non-finite value (nan) at row 1, column 1; ...
    """
    if array.dtype.kind != "f":
        return
    if array.flags.f_contiguous and all_finite((array,)):  # its chunks of rows are strided
        return
    rows = max(1, min(CHUNK_ROWS, CHUNK_VALUES // max(1, math.prod(array.shape[1:]))))
    for start in range(0, len(array), rows):
        chunk = array[start : start + rows]
        contiguous = chunk.flags.c_contiguous or chunk.flags.f_contiguous
        if contiguous and all_finite((chunk,)):  # a strided chunk: vdot would copy it
            continue
        finite = np.isfinite(chunk)
        if not finite.all():
            bad = np.logical_not(finite, out=finite)
            _raise_non_finite(name, array, start, bad, note, columns, nulls)
        del finite  # before the next chunk's mask is made: one mask at a time


def _raise_non_finite(
    name: str,
    array: npt.NDArray[Any],
    start: int,
    bad: npt.NDArray[np.bool_],
    note: str,
    columns: Sequence[str] | None,
    nulls: bool,
) -> NoReturn:
    position = np.unravel_index(int(np.argmax(bad)), bad.shape)
    row = start + int(position[0])
    inner = tuple(int(i) for i in position[1:])
    value = array[(row, *position[1:])]
    hints = [repr(columns[inner[0]])] if columns is not None and bad.ndim == 2 else []
    if nulls and np.isnan(value):
        hints.append("a null reads as NaN")
    where = f"row {row}" + (f", column {inner[0]}" if bad.ndim == 2 else "")
    where += f" ({'; '.join(hints)})" if hints else ""
    where += f", position {inner}" if bad.ndim > 2 else ""
    raise DataError(
        f"{name} has a non-finite value ({value}) at {where}{note}; "
        f"drop or impute rows with NaN/Inf, e.g. keep = np.isfinite({name})"
        + (".all(axis=1)" if bad.ndim == 2 else "")
        + (f".all(axis={tuple(range(1, bad.ndim))})" if bad.ndim > 2 else "")
    )
