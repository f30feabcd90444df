"""Dataset: a validated, read-only pair of a feature matrix and its targets, with
optional sample weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from asynctrain import _sparse
from asynctrain._checks import check_float, check_int
from asynctrain._exceptions import ConfigError, DataError, DataTypeError
from asynctrain._finite import check_finite
from asynctrain._types import Array
from asynctrain.data import _frames
from asynctrain.data import _validate as v
from asynctrain.data._frames import FeatureNames
from asynctrain.data._shared import empty, is_shared, shared_copy, shared_map
from asynctrain.data._weights import check_sample_weight

Features: TypeAlias = Array | _sparse.Sparse
"""A dataset's ``X``: a dense float array, or a scipy.sparse CSR matrix."""

_SPLIT_STREAM = 0x5D17  # spawn key: keeps split() independent of epoch_order()


class Dataset:
    """Features ``X`` and targets ``y``, validated once so bad input fails before training.

    ``X`` must be 2-D ``(n_samples, n_features)``, or hold rows of any shape
    ``(n_samples, *input_shape)`` (images ``(n, C, H, W)``, sequences) for models that
    declare an ``input_shape``; real-valued (bool, int or float) and finite. A float32 or float64
    ``X`` is kept as is, without a copy (a memory-mapped ``X`` stays memory-mapped); any
    other numeric ``X`` is converted to float32. ``dtype`` forces float32 or float64,
    copying only if the dtype changes. ``y`` is 1-D (labels or targets) or 2-D
    (multi-output regression), finite; integer or bool ``y`` becomes int64 labels,
    float ``y`` is kept as is.

    ``X`` may also be a data frame: a pandas or polars DataFrame, or a pyarrow Table or
    RecordBatch, of int, float or bool columns. Its columns are converted once into one
    new array (of ``dtype``; by default float64 if a column is float64, else float32),
    and their names become :attr:`feature_names`. ``y`` may be a pandas or polars
    Series, or a pyarrow Array or ChunkedArray. See docs/data.md.

    ``X`` may also be a scipy.sparse matrix: a ``csr_matrix`` or ``csr_array`` is kept as
    CSR (converted to ``dtype`` when it differs, never densified), any other sparse format
    is converted to CSR once; its stored values must be finite. See :attr:`sparse` and
    docs/data.md.

    ``sample_weight`` (optional) gives each row a weight: a weight of ``k`` counts like
    ``k`` copies of the row (a step's gradient is the weighted sum over its batch divided
    by the batch's sum of weights; 0 drops the row). The weights are copied, in the
    dtype of ``X``.

    The arrays are exposed as read-only views. They share memory with the arrays passed
    in (except the weights), so do not modify those afterwards.

    Args:
        X: features, shape ``(n_samples, n_features)`` or ``(n_samples, *input_shape)``;
            or a scipy.sparse matrix ``(n_samples, n_features)``.
        y: targets, shape ``(n_samples,)`` or ``(n_samples, n_outputs)``.
        sample_weight: one finite weight ``>= 0`` per row, not all zero; None weighs
            every row 1.
        dtype: ``np.float32`` or ``np.float64`` to force the feature dtype; None keeps a
            float32/float64 ``X`` and converts anything else to float32.
        feature_names: names of the columns of a 2-D array ``X`` (a frame's columns
            name themselves).

    Raises:
        DataTypeError: ``X``, ``y`` or ``sample_weight`` is not numeric (strings,
            objects, complex; a frame's non-numeric columns are named), or a frame's
            column names mix strings and other types.
        DataError: a bad shape, different row counts, no rows, or a NaN/Inf or null
            (the message names the first bad row and column); a repeated column name; a
            negative, non-finite or all-zero ``sample_weight``, or one of the wrong length.
        ConfigError: ``dtype`` is not float32 or float64, or ``feature_names`` is given
            for a frame (``DataError`` if it does not name each column once).

    Example:
        >>> ds = Dataset(np.zeros((4, 3)), np.array([0, 1, 0, 1]))
        >>> ds
        <Dataset n_samples=4 n_features=3 dtype=float64>
        >>> ds.y.dtype
        dtype('int64')
        >>> Dataset(np.zeros((2, 3)), [0, 1], sample_weight=[1, 3]).sample_weight
        array([1., 3.])
    """

    __slots__ = ("_X", "_names", "_w", "_y")

    _X: Features
    _y: npt.NDArray[Any]
    _names: FeatureNames | None
    _w: Array | None

    def __init__(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        *,
        sample_weight: npt.ArrayLike | None = None,
        dtype: npt.DTypeLike | None = None,
        feature_names: Sequence[str] | None = None,
    ) -> None:
        target = v.resolve_dtype(dtype)
        from_frames = _frames.is_table(X), _frames.is_table(y) or _frames.is_column(y)
        X, y, names = _from_frames(X, y, target, feature_names)
        targets = v.as_array("y", y)
        if _sparse.is_sparse(X):
            source: _sparse.Sparse = X
            _sparse.check_indices("X", source)
            converted = _sparse.as_csr("X", source, target)
            v.check_targets_shape(targets)
            v.check_rows(converted, targets)
            names = _named(names, feature_names, converted)
            changed = converted.dtype != source.dtype
            note = f" (after conversion from {source.dtype})" if changed else ""
            _sparse.check_finite("X", converted, note=note)
        else:
            features = v.as_array("X", X)
            v.check_features_shape(features)
            names = _named(names, feature_names, features)
            v.check_targets_shape(targets)
            v.check_rows(features, targets)
            # Converted straight into shared memory when large (as to_shared would move
            # it): the process backend's workers map it with no copy per fit.
            converted = v.to_float(features, target, empty=empty)
            note = f" (after conversion from {features.dtype})" if converted is not features else ""
            check_finite("X", converted, note=note, columns=names, nulls=from_frames[0])
        targets = v.to_targets(targets)
        check_finite("y", targets, nulls=from_frames[1])
        self._X = _read_only(converted)
        self._y = v.read_only(targets)
        self._names = names
        self._w = None
        if sample_weight is not None:
            self._w = v.read_only(check_sample_weight(sample_weight, len(targets), converted.dtype))

    @classmethod
    def _trusted(
        cls,
        X: Features,
        y: npt.NDArray[Any],
        *,
        weights: Array | None = None,
        names: FeatureNames | None = None,
    ) -> Dataset:
        """Wrap arrays already validated (rows of a valid dataset) without re-scanning."""
        dataset = cls.__new__(cls)
        dataset._X = _read_only(X)
        dataset._y = v.read_only(y)
        dataset._names = names
        dataset._w = None if weights is None else v.read_only(weights)
        return dataset

    def with_weights(self, sample_weight: npt.ArrayLike | None) -> Dataset:
        """The same rows with ``sample_weight`` instead of this dataset's weights.

        ``X`` and ``y`` are shared, not copied, and not scanned again.

        Args:
            sample_weight: one finite weight ``>= 0`` per row, not all zero; None
                drops the weights.

        Raises:
            DataError, DataTypeError: as for the constructor's ``sample_weight``.

        Example:
            >>> ds = Dataset(np.zeros((2, 3)), [0, 1])
            >>> ds.with_weights([2, 1]).sample_weight
            array([2., 1.])
        """
        if sample_weight is None:
            return Dataset._trusted(self._X, self._y, names=self._names)
        weights = check_sample_weight(sample_weight, self.n_samples, self.dtype)
        return Dataset._trusted(self._X, self._y, weights=weights, names=self._names)

    @property
    def X(self) -> Features:
        """Features, shape ``(n_samples, *input_shape)``, float32 or float64, read-only;
        a scipy.sparse CSR matrix (read-only arrays) when the dataset is :attr:`sparse`."""
        return self._X

    @property
    def sparse(self) -> bool:
        """True if ``X`` is a scipy.sparse CSR matrix (``csr_matrix`` or ``csr_array``).

        Example:
            >>> import scipy.sparse
            >>> Dataset(scipy.sparse.eye(3, format="csr"), [0, 1, 0]).sparse
            True
        """
        return _sparse.is_sparse(self._X)

    @property
    def y(self) -> npt.NDArray[Any]:
        """Targets: int64 labels, or float targets of shape ``(n,)`` or ``(n, k)``; read-only."""
        return self._y

    @property
    def feature_names(self) -> FeatureNames | None:
        """The names of the columns of ``X``: a data frame's column names, or the
        ``feature_names`` given; None for an array without names.

        Example:
            >>> import pandas as pd
            >>> Dataset(pd.DataFrame({"age": [30, 40], "income": [1.5, 2.5]}), [0, 1]).feature_names
            ('age', 'income')
        """
        return self._names

    @property
    def sample_weight(self) -> Array | None:
        """Row weights in the dtype of ``X`` (read-only), or None: every row weighs 1."""
        return self._w

    @property
    def n_samples(self) -> int:
        """Number of rows (also ``len(dataset)``)."""
        return int(self._X.shape[0])

    @property
    def n_features(self) -> int:
        """Number of values per row: the feature columns of a 2-D ``X``, else the
        product of :attr:`input_shape`."""
        return int(np.prod(self._X.shape[1:]))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one row: ``(n_features,)`` for a table, ``(C, H, W)`` for images.

        Example:
            >>> Dataset(np.zeros((5, 1, 8, 8)), np.zeros(5)).input_shape
            (1, 8, 8)
        """
        return tuple(int(size) for size in self._X.shape[1:])

    @property
    def dtype(self) -> np.dtype[Any]:
        """The feature dtype: float32 or float64."""
        return self._X.dtype

    @property
    def memory_mapped(self) -> bool:
        """True if ``X`` is read from a memory-mapped file (e.g. a ``.npy`` given to ``load``).

        False for a dataset in asynctrain's shared memory (see :attr:`shared`): that is
        memory, not a file of yours.
        """
        if self.sparse:
            return False
        return v.is_memory_mapped(self._X) and shared_map(self._X) is None

    @property
    def shared(self) -> bool:
        """True if ``X`` is an array in asynctrain's shared memory (see :meth:`to_shared`).

        The process backend's workers then map the same memory: no copy is made, whatever
        the number of workers. It does the same for a whole memory-mapped ``.npy`` file;
        a dataset that is neither (a slice of a shared array counts as neither) is copied
        into shared memory once per fit. A sparse ``X`` counts as shared when its stored
        values and their column indices are.
        """
        if self.sparse:
            X: _sparse.Sparse = self._X
            return is_shared(X.data) and is_shared(X.indices)
        return is_shared(self._X)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Rebuild through _trusted so an unpickled copy is read-only again (pickle
        # itself restores arrays writable) without re-scanning for NaN/Inf.
        return _unpickle, (self._X, self._y, self._w, self._names)

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        where = " shared" if self.shared else " memory-mapped" if self.memory_mapped else ""
        where += " weighted" if self._w is not None else ""
        shape = f"n_features={self.n_features}"
        if self.sparse:
            X: _sparse.Sparse = self._X
            where = f" sparse nnz={X.nnz}{where}"
        elif self._X.ndim > 2:
            shape = f"input_shape={self.input_shape}"
        return f"<Dataset n_samples={self.n_samples} {shape} dtype={self.dtype}{where}>"

    def to_shared(self) -> Dataset:
        """Return the same data with its arrays in shared memory, mapped by process workers.

        The process backend copies an in-memory dataset into shared memory for each fit,
        so the caller's arrays plus that copy make two. A shared dataset is mapped by the
        workers in place: after ``data = data.to_shared()``, drop every other reference to
        the original arrays (``del X, y``) and one copy remains, whatever the number of
        workers. The memory is freed when the last array of the dataset is garbage.

        :func:`~asynctrain.data.synthetic`, :func:`~asynctrain.data.load` of ``.npz`` and
        ``.csv``, :meth:`subset` and :meth:`split` already return shared datasets, and a
        dataset whose ``X`` the constructor converted (to ``dtype``, or from integers)
        holds it there already. Arrays
        under 1 MiB stay private (copying them costs next to nothing), and so does
        everything where /dev/shm is missing or full: :attr:`shared` tells which happened.
        A memory-mapped ``X`` is copied too; a whole ``.npy`` file needs no such step, as
        the process backend maps the file itself.

        Returns:
            A Dataset with the same values; ``self`` when no array needed moving.

        Example:
            >>> X = np.random.default_rng(0).standard_normal((4096, 64))  # 2 MiB
            >>> data = Dataset(X, X[:, 0] > 0).to_shared()
            >>> del X  # one copy left, in shared memory
            >>> data
            <Dataset n_samples=4096 n_features=64 dtype=float64 shared>
        """
        X, y = _shared_features(self._X), shared_copy(self._y)
        w = None if self._w is None else shared_copy(self._w)
        if X is self._X and y is self._y and w is self._w:
            return self
        return Dataset._trusted(X, y, weights=w, names=self._names)

    def subset(self, indices: npt.ArrayLike) -> Dataset:
        """Return the rows at ``indices`` (in that order; repeats allowed) as a new Dataset.

        The rows are copied, also from a memory-mapped X, into shared memory when large
        (see :meth:`to_shared`).

        Args:
            indices: 1-D non-negative integer positions, each ``< n_samples``.

        Returns:
            A Dataset with ``len(indices)`` rows.

        Raises:
            DataTypeError: ``indices`` are not integers (for a boolean mask pass
                ``np.flatnonzero(mask)``).
            DataError: ``indices`` are empty, not 1-D, or out of range, or every row
                they choose has sample weight 0.

        Example:
            >>> ds = Dataset(np.arange(6.0).reshape(3, 2), np.array([0, 1, 2]))
            >>> ds.subset([2, 0]).y
            array([2, 0])
        """
        positions = _check_indices(indices, self.n_samples)
        _check_weighed(self._w, positions)
        return self._take(positions)

    def split(self, fraction: float, *, seed: int = 0) -> tuple[Dataset, Dataset]:
        """Split the rows at random into ``(first, second)``; ``second`` gets ``fraction``.

        ``second`` has ``round(n_samples * fraction)`` rows (Python's ``round``), ``first``
        the rest. The choice is a pure function of ``seed`` and ``n_samples``; within each
        part the rows keep their original relative order. Rows are copied, into shared
        memory when large (see :meth:`to_shared`).

        Args:
            fraction: share of rows for the second part, strictly between 0 and 1.
            seed: non-negative seed of the random choice.

        Returns:
            ``(first, second)``, e.g. ``(train, validation)``.

        Raises:
            ConfigError: ``fraction`` is outside (0, 1) or ``seed`` is negative.
            ConfigTypeError: ``fraction`` is not a real number or ``seed`` not an int.
            DataError: one of the parts would be empty, or weigh 0 in all its rows.

        Example:
            >>> ds = Dataset(np.zeros((10, 2)), np.zeros(10))
            >>> train, val = ds.split(0.2, seed=0)
            >>> len(train), len(val)
            (8, 2)
        """
        # A finite real first; then the open interval, in one message (check_float's
        # "(0.0, 1.0]" for 0 would invite the 1.0 refused here).
        share = check_float("fraction", fraction, minimum=-math.inf)
        if not 0.0 < share < 1.0:
            raise ConfigError(
                f"fraction must be in (0.0, 1.0), got {share}; pass e.g. fraction=0.2"
            )
        seed = check_int("seed", seed, minimum=0)
        n_second = round(self.n_samples * share)
        n_first = self.n_samples - n_second
        if n_first == 0 or n_second == 0:
            raise DataError(
                f"split({fraction}) of {self.n_samples} samples gives parts of {n_first} and "
                f"{n_second} rows; both need at least one: use more data or another fraction"
            )
        entropy = np.random.SeedSequence(seed, spawn_key=(_SPLIT_STREAM,))
        order = np.random.default_rng(entropy).permutation(self.n_samples)
        first, second = np.sort(order[:n_first]), np.sort(order[n_first:])
        _check_weighed(self._w, first, fix="another fraction or seed")
        _check_weighed(self._w, second, fix="another fraction or seed")
        return self._take(first), self._take(second)

    def _take(self, positions: npt.NDArray[np.intp]) -> Dataset:
        if self.sparse:
            X = _shared_features(_sparse.take(self._X, positions))
        else:
            X = _rows(self._X, positions)
        w = None if self._w is None else _rows(self._w, positions)
        return Dataset._trusted(X, _rows(self._y, positions), weights=w, names=self._names)


def _unpickle(
    X: Features, y: npt.NDArray[Any], weights: Array | None, names: FeatureNames | None
) -> Dataset:
    return Dataset._trusted(X, y, weights=weights, names=names)


def _from_frames(
    X: Any, y: Any, dtype: np.dtype[Any] | None, feature_names: object
) -> tuple[Any, Any, FeatureNames | None]:
    """``X`` and ``y`` with data frames and Series read into arrays; X's column names."""
    names = None
    if _frames.is_table(X):
        if feature_names is not None:
            raise ConfigError(
                "feature_names is for an array X; a data frame's columns name its features: "
                "rename the columns instead"
            )
        X, names = _frames.as_features(X, name="X", dtype=dtype)
    _frames.refuse_lazy(X, "X")
    if _frames.is_table(y) or _frames.is_column(y):
        y = _frames.as_targets(y)
    _frames.refuse_lazy(y, "y")
    return X, y, names


def _named(
    names: FeatureNames | None, feature_names: Sequence[str] | None, X: Features
) -> FeatureNames | None:
    """A data frame's column names, else ``feature_names`` checked against X's columns."""
    if names is None and feature_names is not None:
        columns = int(X.shape[1]) if X.ndim == 2 else None
        return _frames.check_feature_names(feature_names, columns)
    return names


def _read_only(X: Features) -> Features:
    return _sparse.read_only(X) if _sparse.is_sparse(X) else v.read_only(X)


def _shared_features(X: Features) -> Features:
    """``X`` in shared memory (each array of a sparse ``X``); itself if nothing moved."""
    if not _sparse.is_sparse(X):
        return shared_copy(X)
    return _sparse.map_parts(X, shared_copy)


def _rows(array: npt.NDArray[Any], positions: npt.NDArray[np.intp]) -> npt.NDArray[Any]:
    """``array[positions]``, written straight into (shared) memory of its own."""
    out = empty((len(positions), *array.shape[1:]), array.dtype)
    # mode="clip": the positions are checked already, and mode="raise" would first take
    # into a temporary buffer as large as ``out``.
    return np.take(array, positions, axis=0, out=out, mode="clip")


def _check_weighed(
    weights: Array | None, positions: npt.NDArray[np.intp], *, fix: str = "other rows"
) -> None:
    """Refuse rows that all weigh 0: the constructor refuses such weights, and evaluating
    the rows would divide by a total weight of 0. (A shard's partition may weigh 0: it is
    taken with ``_take``, which does not check.)"""
    if weights is not None and not weights[positions].any():
        raise DataError(
            f"the {len(positions)} rows taken all have sample_weight 0, so there is nothing "
            f"to train on or evaluate; take {fix} with a positive weight, or drop the "
            "weights first with .with_weights(None)"
        )


def _check_indices(indices: npt.ArrayLike, n: int) -> npt.NDArray[np.intp]:
    positions = np.asarray(indices)
    if positions.size == 0:
        raise DataError("indices is empty; a dataset needs at least one row")
    if positions.dtype.kind not in "iu":
        raise DataTypeError(
            f"indices must be integers, got dtype {positions.dtype}; "
            "for a boolean mask pass np.flatnonzero(mask)"
        )
    if positions.ndim != 1:
        raise DataError(f"indices must be 1-D, got shape {positions.shape}")
    bad = (positions < 0) | (positions >= n)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(
            f"indices[{first}] = {positions[first]} is out of range for {n} samples; "
            f"pass positions in 0 .. {n - 1}"
        )
    return positions.astype(np.intp, copy=False)
