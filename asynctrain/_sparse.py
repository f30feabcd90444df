"""Sparse feature matrices: scipy.sparse CSR input, checked, converted and gathered by rows.

A sparse ``X`` is held as CSR (``csr_matrix`` or ``csr_array``; any other scipy.sparse
format is converted once) in the model's dtype, and never densified: its rows are gathered
as CSR, and the built-in models multiply it as it is (``X @ W``, ``X.T @ delta``:
:func:`matmul` and :func:`rmatmul`, scipy's own kernels called without the layers of its
indexing and operators, which cost a shard of a few thousand rows a quarter of its time).

scipy stays optional. :func:`is_sparse` answers without importing it (an object cannot be
a scipy matrix unless scipy.sparse is imported already), and everything else here runs
only once a sparse input has been seen. To reach a backend's workers, a CSR matrix travels
as three plain arrays plus its shape (:func:`pack`), which the process backend shares like
any other array, and workers rebuild it around those arrays without copying (:func:`unpack`).

The data layer (``Dataset``) and the models layer (``check_data``, the built-in models'
inputs) both use this module; ``tests/test_layering.py`` allows it to them by name.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, NoReturn, TypeAlias

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import DataError, DataTypeError
from asynctrain._types import DEFAULT_DTYPE

Sparse: TypeAlias = Any
"""A scipy.sparse CSR matrix or array (scipy ships no type information)."""

_PARTS = ("data", "indices", "indptr")
_INT32_MAX = np.iinfo(np.int32).max


def is_sparse(X: object) -> bool:
    """Whether ``X`` is a scipy.sparse matrix or array, without importing scipy.

    Example:
        >>> is_sparse(np.zeros((2, 2)))
        False
    """
    module = sys.modules.get("scipy.sparse")
    return module is not None and bool(module.issparse(X))


def as_csr(name: str, X: Sparse, dtype: np.dtype[Any] | None) -> Sparse:
    """``X`` as CSR of ``dtype`` (None: float32/float64 kept, anything else float32).

    ``csr_array`` and ``csr_matrix`` keep their kind; other formats (CSC, COO, ...) are
    converted to CSR of the same kind (array or matrix) once. Nothing is copied when ``X``
    is CSR of that dtype already with 32-bit indices (or indices that need 64 bits).

    Raises:
        DataTypeError: the values are not real numbers (complex, objects).
        DataError: ``X`` is not 2-D, has no rows or no columns.
    """
    if X.dtype.kind not in "biuf":
        raise DataTypeError(
            f"{name} is a sparse matrix of dtype {X.dtype}, which is not a real number; "
            f"pass {name}.astype(np.float32) (complex values need their real part)"
        )
    if len(X.shape) != 2:
        raise DataError(f"sparse {name} must be 2-D (n_samples, n_features), got shape {X.shape}")
    if 0 in X.shape:
        raise DataError(
            f"sparse {name} has shape {X.shape}; it needs at least one row and one column"
        )
    csr = X if X.format == "csr" else X.tocsr()
    target = dtype if dtype is not None else _default_float(csr.dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes Inf: reported
        data = csr.data if csr.data.dtype == target else csr.data.astype(target)
    indices, indptr = _small_indices(csr)
    if data is csr.data and indices is csr.indices and indptr is csr.indptr:
        return csr
    return _build(type(csr), (data, indices, indptr), csr.shape)


def check_indices(name: str, X: Sparse) -> None:
    """Raise :class:`DataError` unless a CSR (or CSC) ``X``'s index arrays fit its shape:
    row pointers from 0 that never decrease, and column (CSC: row) indices in range.

    scipy checks only the arrays' lengths when a matrix is built from ``(data, indices,
    indptr)``, and its products read an index out of range past the end of the other
    operand: wrong numbers, or a segmentation fault in the middle of a fit. Reads the
    index arrays once (min and max, no temporary of their size); other formats are
    skipped (scipy bounds their coordinates when it builds them).
    """
    if X.format not in ("csr", "csc"):
        return
    major, minor = X.shape if X.format == "csr" else X.shape[::-1]
    line, other = ("row", "column") if X.format == "csr" else ("column", "row")
    indptr, indices = X.indptr, X.indices
    if len(indptr) != major + 1 or indptr[0] != 0 or not 0 <= indptr[-1] <= len(indices):
        raise DataError(
            f"sparse {name} has {len(indptr)} index pointers from {indptr[0]} to "
            f"{indptr[-1]} for {major} {line}s and {len(indices)} stored values; it is "
            "corrupt: rebuild it from its values, e.g. with its .tocoo() coordinates"
        )
    stored = indices[: int(indptr[-1])]
    if len(stored) and not 0 <= int(stored.min()) <= int(stored.max()) < minor:
        position = int(np.argmax((stored < 0) | (stored >= minor)))
        at = int(np.searchsorted(indptr, position, side="right")) - 1
        raise DataError(
            f"sparse {name} has {other} index {int(stored[position])} in {line} {at}, "
            f"outside its shape {X.shape}; build it with a shape that holds every index "
            f"(e.g. {other}s = max index + 1), or drop the entries out of range"
        )
    if major and np.any(indptr[1:] < indptr[:-1]):
        at = int(np.argmax(indptr[1:] < indptr[:-1]))
        raise DataError(
            f"sparse {name}'s index pointers decrease at {line} {at} ({indptr[at]} then "
            f"{indptr[at + 1]}); it is corrupt: rebuild it from its values"
        )


def check_finite(name: str, X: Sparse, *, note: str = "") -> None:
    """Raise :class:`DataError` naming the row and column of the first NaN/Inf of ``X``.

    Scans the stored values only (implicit zeros are finite).
    """
    bad = ~np.isfinite(X.data)
    if bad.any():
        _raise_non_finite(name, X, int(np.argmax(bad)), note)


def _raise_non_finite(name: str, X: Sparse, position: int, note: str) -> NoReturn:
    row = int(np.searchsorted(X.indptr, position, side="right")) - 1
    column = int(X.indices[position])
    raise DataError(
        f"sparse {name} has a non-finite value ({X.data[position]}) at row {row}, column "
        f"{column}{note}; drop or impute those rows, e.g. keep the rows where "
        f"np.isfinite({name}.data) holds for every stored value"
    )


def read_only(X: Sparse) -> Sparse:
    """A CSR of the same kind over read-only views of ``X``'s arrays (no copy)."""
    views = []
    for part in _PARTS:
        view = getattr(X, part).view()
        view.flags.writeable = False
        views.append(view)
    return _build(type(X), views, X.shape)


def map_parts(X: Sparse, fn: Any) -> Sparse:
    """A CSR of the same kind over ``fn(array)`` of each of ``X``'s three arrays; ``X``
    itself when ``fn`` returned every array unchanged."""
    before = [getattr(X, part) for part in _PARTS]
    after = [fn(array) for array in before]
    if all(new is old for new, old in zip(after, before, strict=True)):
        return X
    return _build(type(X), after, X.shape)


def take(X: Sparse, rows: npt.NDArray[Any] | range, *, checked: bool = False) -> Sparse:
    """Rows of ``X`` (indices, in their order, or a contiguous range) as a new CSR.

    ``checked``: ``X``'s index arrays were checked (:func:`check_indices`; a Dataset's
    were), so the rows' are too; the new matrix is marked so, and a model that is given
    it skips checking them again (:func:`indices_checked`): on a training step's shard
    that check would read every index once more, about a tenth of the step's time.

    Indices are copied by scipy's own row-copy kernel and a range is viewed, without the
    Python layers of scipy's indexing (a third of the time of a shard of a few thousand
    rows); negative or out-of-range rows go through scipy's indexing, which handles or
    reports them as ``X[rows]`` does.
    """
    rows_of = _fast_rows(X, type(X), rows)
    if rows_of is None:
        rows_of = X[rows.start : rows.stop : rows.step] if isinstance(rows, range) else X[rows]
    return _mark(rows_of, checked)


def take_packed(
    arrays: Mapping[str, npt.NDArray[Any]],
    rows: npt.NDArray[Any] | range,
    key: str = "X",
    *,
    checked: bool = False,
) -> Sparse:
    """``take(unpack(arrays, key), rows, checked=checked)`` for the CSR :func:`pack` made
    ``arrays``, without first building the whole matrix around them (its constructor
    checks cost a shard as much as its row pointers do)."""
    from scipy import sparse

    data, indices, indptr = (arrays[f"{key}.{part}"] for part in _PARTS)
    parts = _Parts(data, indices, indptr, _shape(arrays, key))
    rows_of = _fast_rows(parts, sparse.csr_array, rows)
    if rows_of is None:
        return take(unpack(arrays, key), rows, checked=checked)
    return _mark(rows_of, checked)


class _Parts(NamedTuple):
    """What the row copies read of a CSR matrix."""

    data: npt.NDArray[Any]
    indices: npt.NDArray[Any]
    indptr: npt.NDArray[Any]
    shape: tuple[int, ...]


def _mark(rows_of: Sparse, checked: bool) -> Sparse:
    if checked:
        setattr(rows_of, _CHECKED, True)
    return rows_of


def _fast_rows(X: Sparse, kind: type, rows: npt.NDArray[Any] | range) -> Sparse | None:
    """The rows as a new ``kind`` by :func:`_row_range` or :func:`_gather`; None where
    only scipy's indexing takes them."""
    if X.indptr.dtype != X.indices.dtype:
        return None
    if isinstance(rows, range):
        return _row_range(X, kind, rows)
    return _gather(X, kind, rows)


def _row_range(X: Sparse, kind: type, rows: range) -> Sparse | None:
    """Contiguous rows (step 1, inside ``X``) as a CSR over views of ``X``'s arrays."""
    start, stop = rows.start, rows.stop
    if rows.step != 1 or not 0 <= start <= stop <= X.shape[0]:
        return None
    indptr = X.indptr[start : stop + 1]
    first, last = int(indptr[0]), int(indptr[-1])
    parts = (X.data[first:last], X.indices[first:last], indptr - indptr[0])
    return _build(kind, parts, (stop - start, X.shape[1]))


def _gather(X: Sparse, kind: type, rows: npt.NDArray[Any]) -> Sparse | None:
    """``X[rows]`` (the same three arrays) for rows inside ``X``, by scipy's row-copy
    kernel, ``csr_row_index``."""
    row_index = _kernel("csr_row_index")
    indptr, indices = X.indptr, X.indices
    picked = np.asarray(rows)
    if (
        row_index is None
        or picked.ndim != 1
        or picked.dtype.kind not in "iu"
        or not len(picked)
        or not 0 <= int(picked.min()) <= int(picked.max()) < X.shape[0]
    ):
        return None
    picked = picked.astype(indptr.dtype, copy=False)
    new_indptr = np.empty(len(picked) + 1, indptr.dtype)
    new_indptr[0] = 0
    np.cumsum(indptr[picked + 1] - indptr[picked], out=new_indptr[1:])
    nnz = int(new_indptr[-1])
    new_indices, data = np.empty(nnz, indices.dtype), np.empty(nnz, X.data.dtype)
    row_index(len(picked), picked, indptr, indices, X.data, new_indices, data)
    return _build(kind, (data, new_indices, new_indptr), (len(picked), X.shape[1]))


def matmul(X: Sparse, v: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``X @ v`` for a CSR ``X`` and a dense (n_features,) or (n_features, k) ``v``: a new
    dense array, with the bits of scipy's product (the same kernel, called directly)."""
    return _product(X, v, transpose=False)


def rmatmul(X: Sparse, d: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``X.T @ d`` for a CSR ``X`` and a dense (n_rows,) or (n_rows, k) ``d``: a new dense
    array, with the bits of scipy's product, without building the transposed matrix."""
    return _product(X, d, transpose=True)


def _product(X: Sparse, v: npt.NDArray[Any], *, transpose: bool) -> npt.NDArray[Any]:
    # scipy's X @ v runs X's format's matvec(s) kernel into zeros; X.T is a CSC matrix
    # over X's own arrays, whose kernel is csc_matvec(s). Called here directly, a product
    # skips building X.T and scipy's dispatch (a sixth of a 2,048-row shard's product).
    # Anything the kernels would not take as it is goes through scipy's operators.
    kind = "csc" if transpose else "csr"
    vector = isinstance(v, np.ndarray) and (v.ndim == 1 or (v.ndim == 2 and v.shape[1] == 1))
    fn = _kernel(f"{kind}_matvec" if vector else f"{kind}_matvecs")
    if fn is None or not _kernel_takes(X, v, transpose=transpose):
        result: npt.NDArray[Any] = X.T @ v if transpose else X @ v
        return result
    rows, columns = X.shape[::-1] if transpose else X.shape
    parts = (X.indptr, X.indices, X.data)
    if vector:  # scipy multiplies an (n, 1) v as a vector too
        out = np.zeros(rows, v.dtype)
        fn(rows, columns, *parts, v.reshape(-1), out)
        return out if v.ndim == 1 else out.reshape(rows, 1)
    out = np.zeros((rows, v.shape[1]), v.dtype)
    fn(rows, columns, v.shape[1], *parts, v.reshape(-1), out.reshape(-1))
    return out


@functools.cache
def _kernel(name: str) -> Any:
    """scipy's C++ kernel ``name`` of its private ``scipy.sparse._sparsetools`` (in every
    scipy this project allows), else None: a scipy without it gathers and multiplies
    through its public indexing and operators, with the same bits, only slower."""
    try:
        from scipy.sparse import _sparsetools
    except ImportError:
        return None
    return getattr(_sparsetools, name, None)


def _kernel_takes(X: Sparse, v: object, *, transpose: bool) -> bool:
    """Whether scipy's matvec kernels multiply CSR ``X`` (or ``X.T``) by ``v`` as it is."""
    if X.format != "csr" or len(X.shape) != 2 or not isinstance(v, np.ndarray):
        return False
    return (
        v.dtype == X.data.dtype
        and v.ndim in (1, 2)
        and v.shape[0] == X.shape[0 if transpose else 1]
        and X.indptr.dtype == X.indices.dtype
        and v.flags.c_contiguous
    )


def indices_checked(X: Sparse) -> bool:
    """Whether ``X`` came from :func:`take` of a matrix whose index arrays were checked."""
    return getattr(X, _CHECKED, False) is True


_CHECKED = "_asynctrain_indices_checked"


def pack(X: Sparse, key: str = "X") -> dict[str, npt.NDArray[Any]]:
    """``X`` as plain arrays a backend can share: ``key.data``, ``.indices``, ``.indptr``
    and ``.shape``.

    Example:
        >>> sorted(pack(np.zeros((1, 1)), "X"))
        ['X']
    """
    if not is_sparse(X):
        return {key: X}
    arrays = {f"{key}.{part}": getattr(X, part) for part in _PARTS}
    arrays[f"{key}.shape"] = np.array(X.shape, np.int64)
    return arrays


def unpack(arrays: Mapping[str, npt.NDArray[Any]], key: str = "X") -> Any:
    """The matrix :func:`pack` turned into ``arrays``: the array itself, or a
    ``csr_array`` rebuilt around the shared arrays (no copy)."""
    dense = arrays.get(key)
    if dense is not None:
        return dense
    from scipy import sparse

    parts = [arrays[f"{key}.{part}"] for part in _PARTS]
    return _build(sparse.csr_array, parts, _shape(arrays, key))


def _shape(arrays: Mapping[str, npt.NDArray[Any]], key: str) -> tuple[int, ...]:
    return tuple(int(size) for size in arrays[f"{key}.shape"])


def nbytes(X: Sparse) -> int:
    """Bytes of ``X``'s three arrays."""
    return int(sum(getattr(X, part).nbytes for part in _PARTS))


def _build(kind: type, parts: Sequence[npt.NDArray[Any]], shape: tuple[int, ...]) -> Sparse:
    # copy=False and matching index dtypes: scipy wraps the arrays as they are.
    return kind(tuple(parts), shape=shape, copy=False)


def _small_indices(X: Sparse) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """The index arrays in int32 when every value fits (half the memory of int64, and
    the dtype scipy would pick anyway when it rebuilds the matrix)."""
    fits = max(X.nnz, X.shape[1]) <= _INT32_MAX
    target = np.dtype(np.int32) if fits else np.dtype(np.int64)
    indices = X.indices if X.indices.dtype == target else X.indices.astype(target)
    indptr = X.indptr if X.indptr.dtype == target else X.indptr.astype(target)
    return indices, indptr


def _default_float(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return np.dtype(f"f{dtype.itemsize}")
    return DEFAULT_DTYPE
