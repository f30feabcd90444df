"""Checks and conversions for feature matrices and targets: shape, dtype, NaN/Inf.

Every function here raises before any training work starts, with a message that names
the offending value and says how to fix it. Nothing here copies an array unless a dtype
conversion demands it, and the NaN/Inf scan (:mod:`asynctrain._finite`, shared with the
models' checks of inputs to predict) reads a memory-mapped array in chunks so it is
never materialised whole.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigError, ConfigTypeError, DataError, DataTypeError
from asynctrain._types import DEFAULT_DTYPE

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_NUMERIC_KINDS = "biuf"  # bool, signed int, unsigned int, float
_INT64_MAX = np.iinfo(np.int64).max


def resolve_dtype(dtype: object) -> np.dtype[Any] | None:
    """Return ``dtype`` as a numpy float32/float64 dtype, or None when not given.

    Raises:
        ConfigTypeError: ``dtype`` is not understood by numpy at all.
        ConfigError: ``dtype`` is a real dtype but not float32 or float64.
    """
    if dtype is None:
        return None
    try:
        resolved: np.dtype[Any] = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError as exc:
        raise ConfigTypeError(
            f"dtype must be np.float32 or np.float64, got {dtype!r}; "
            "pass dtype=np.float32 (the default) or dtype=np.float64"
        ) from exc
    if resolved not in _FLOAT_DTYPES:
        raise ConfigError(
            f"dtype must be float32 or float64, got {resolved}; "
            "pass dtype=np.float32 (the default) or dtype=np.float64"
        )
    return resolved


def as_array(name: str, value: object) -> npt.NDArray[Any]:
    """Return ``value`` as an ndarray of real numbers, without copying an ndarray.

    Raises:
        DataError: ``value`` is ragged (rows of different lengths), or a masked array
            with masked values.
        DataTypeError: the values are not bool, int or float (strings, objects, complex).
    """
    if isinstance(value, np.ma.MaskedArray | np.matrix):
        array = plain(name, value)
    elif isinstance(value, np.ndarray):
        array = value
    else:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{name} cannot be read as a rectangular array ({exc}); "
                f"pass a numpy array whose rows all have the same length"
            ) from exc
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise DataTypeError(
            f"{name} has dtype {array.dtype}, which is not a real number; asynctrain "
            f"trains on bool, int or float values: {_numeric_fix(name, array)}"
        )
    return array


def plain(name: str, value: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A masked array or ``np.matrix`` as a plain ndarray view of its values (no copy).

    numpy reads a masked array's hidden values as any others (the finiteness scan
    skipped them, so a NaN under the mask reached training), and a matrix's rows stay
    2-D (``vdot`` of one raised a TypeError).

    Raises:
        DataError: a value of a masked array is masked; the message names the first.
    """
    if isinstance(value, np.ma.MaskedArray) and np.ma.is_masked(value):
        where = tuple(int(i) for i in np.argwhere(np.ma.getmaskarray(value))[0])
        raise DataError(
            f"{name} is a masked array with masked values (the first at {where}); asynctrain "
            f"does not read masks: drop those rows, or fill them with {name}.filled(value)"
        )
    return np.asarray(value)


def _numeric_fix(name: str, array: npt.NDArray[Any]) -> str:
    """How to make ``array`` numeric: labels (text, objects) are encoded, not cast."""
    if name == "y" and array.dtype.kind in "USO":
        return (
            "encode the labels as 0 .. n_classes - 1 with "
            "`classes, y = np.unique(y, return_inverse=True)` (classes[k] names class k)"
        )
    return f"convert with np.asarray({name}, dtype=np.float32) or drop the non-numeric columns"


def check_features_shape(X: npt.NDArray[Any]) -> None:
    """Raise :class:`DataError` unless ``X`` is ``(n_samples, *row_shape)`` with at least
    one value per row: a 2-D table, or rows of any shape (images ``(n, C, H, W)``)."""
    if X.ndim < 2:
        raise DataError(
            f"X must be 2-D (n_samples, n_features) or (n_samples, *row_shape), got shape "
            f"{X.shape}; pass X.reshape(-1, 1) for a single feature"
        )
    if 0 in X.shape[1:]:
        raise DataError(f"X has rows of no values (shape {X.shape}); pass at least one feature")


def check_targets_shape(y: npt.NDArray[Any]) -> None:
    """Raise :class:`DataError` unless ``y`` is 1-D, or 2-D with at least one column."""
    if y.ndim not in (1, 2):
        raise DataError(
            f"y must be 1-D (n_samples,) or 2-D (n_samples, n_outputs) for multi-output "
            f"regression, got shape {y.shape}; pass y.reshape(len(y)) for one output"
        )
    if y.ndim == 2 and y.shape[1] == 0:
        raise DataError(f"y has no output columns (shape {y.shape}); pass at least one")


def check_rows(X: npt.NDArray[Any], y: npt.NDArray[Any]) -> None:
    """Raise :class:`DataError` unless ``X`` and ``y`` have the same, non-zero row count."""
    rows = X.shape[0]  # a sparse X has a shape but no len()
    if rows != len(y):
        raise DataError(f"X has {rows} rows but y has {len(y)}; pass one target per row of X")
    if rows == 0:
        raise DataError("the dataset is empty (0 rows); pass at least one sample")


def to_float(
    X: npt.NDArray[Any],
    dtype: np.dtype[Any] | None,
    *,
    empty: Callable[[tuple[int, ...], np.dtype[Any]], npt.NDArray[Any]] = np.empty,
) -> npt.NDArray[Any]:
    """Return ``X`` in ``dtype``; by default float32/float64 are kept, others become float32.

    Converts (and so copies) only when the dtype changes, into a C-ordered array made by
    ``empty(shape, dtype)``; a memory-mapped float32 or float64 ``X`` is returned as is.
    Overflow in a float64 → float32 cast becomes Inf, which
    :func:`~asynctrain._finite.check_finite` then reports.
    """
    target = dtype if dtype is not None else _default_float(X.dtype)
    if X.dtype == target:
        return X
    out = empty(X.shape, target)
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(out, X, casting="unsafe")
    return out


def to_targets(y: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Return integer or bool ``y`` as int64 labels; float ``y`` unchanged.

    Raises:
        DataError: an unsigned label exceeds the int64 range.
    """
    if y.dtype.kind == "f" or y.dtype == np.int64:
        return y
    if y.dtype.kind == "u" and y.dtype.itemsize == 8 and int(y.max()) > _INT64_MAX:
        raise DataError(
            f"y holds the label {int(y.max())}, beyond the int64 range; "
            "relabel the classes as 0 .. n_classes - 1"
        )
    return y.astype(np.int64, subok=False)


def read_only(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Return a read-only view of ``array`` (the caller's array stays writable)."""
    view = array.view()
    view.setflags(write=False)
    return view


def is_memory_mapped(array: npt.NDArray[Any]) -> bool:
    """Return True if ``array``'s memory belongs to a memory-mapped file (``np.load`` mmap)."""
    base: object = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False


def _default_float(dtype: np.dtype[Any]) -> np.dtype[Any]:
    # A non-native byte order float32/float64 keeps its precision, in native order.
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return np.dtype(f"f{dtype.itemsize}")
    return DEFAULT_DTYPE
