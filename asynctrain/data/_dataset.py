"""Dataset: a validated, read-only pair of a feature matrix and its targets, with
optional sample weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_float, check_int
from asynctrain._exceptions import ConfigError, DataError, DataTypeError
from asynctrain._types import Array
from asynctrain.data import _validate as v
from asynctrain.data._shared import empty, is_shared, shared_copy, shared_map
from asynctrain.data._weights import check_sample_weight

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

    ``sample_weight`` (optional) gives each row a weight: a weight of ``k`` counts like
    ``k`` copies of the row (a step's gradient is the weighted sum over its batch divided
    by the batch's sum of weights; 0 drops the row). The weights are copied, in the
    dtype of ``X``.

    The arrays are exposed as read-only views. They share memory with the arrays passed
    in (except the weights), so do not modify those afterwards.

    Args:
        X: features, shape ``(n_samples, n_features)`` or ``(n_samples, *input_shape)``.
        y: targets, shape ``(n_samples,)`` or ``(n_samples, n_outputs)``.
        sample_weight: one finite weight ``>= 0`` per row, not all zero; None weighs
            every row 1.
        dtype: ``np.float32`` or ``np.float64`` to force the feature dtype; None keeps a
            float32/float64 ``X`` and converts anything else to float32.

    Raises:
        DataTypeError: ``X``, ``y`` or ``sample_weight`` is not numeric (strings,
            objects, complex).
        DataError: a bad shape, different row counts, no rows, or a NaN/Inf (the
            message names the first bad row and column); a negative, non-finite or
            all-zero ``sample_weight``, or one of the wrong length.
        ConfigError: ``dtype`` is not float32 or float64.

    Example:
        >>> ds = Dataset(np.zeros((4, 3)), np.array([0, 1, 0, 1]))
        >>> ds
        <Dataset n_samples=4 n_features=3 dtype=float64>
        >>> ds.y.dtype
        dtype('int64')
        >>> Dataset(np.zeros((2, 3)), [0, 1], sample_weight=[1, 3]).sample_weight
        array([1., 3.])
    """

    __slots__ = ("_X", "_w", "_y")

    _X: Array
    _y: npt.NDArray[Any]
    _w: Array | None

    def __init__(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        *,
        sample_weight: npt.ArrayLike | None = None,
        dtype: npt.DTypeLike | None = None,
    ) -> None:
        target = v.resolve_dtype(dtype)
        features, targets = v.as_array("X", X), v.as_array("y", y)
        v.check_features_shape(features)
        v.check_targets_shape(targets)
        v.check_rows(features, targets)
        converted = v.to_float(features, target)
        note = f" (after conversion from {features.dtype})" if converted is not features else ""
        v.check_finite("X", converted, note=note)
        targets = v.to_targets(targets)
        v.check_finite("y", targets)
        self._X = v.read_only(converted)
        self._y = v.read_only(targets)
        self._w = None
        if sample_weight is not None:
            self._w = v.read_only(check_sample_weight(sample_weight, len(targets), converted.dtype))

    @classmethod
    def _trusted(cls, X: Array, y: npt.NDArray[Any], sample_weight: Array | None = None) -> Dataset:
        """Wrap arrays already validated (rows of a valid dataset) without re-scanning."""
        dataset = cls.__new__(cls)
        dataset._X = v.read_only(X)
        dataset._y = v.read_only(y)
        dataset._w = None if sample_weight is None else v.read_only(sample_weight)
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
            return Dataset._trusted(self._X, self._y)
        weights = check_sample_weight(sample_weight, self.n_samples, self.dtype)
        return Dataset._trusted(self._X, self._y, weights)

    @property
    def X(self) -> Array:
        """Features, shape ``(n_samples, *input_shape)``, float32 or float64, read-only."""
        return self._X

    @property
    def y(self) -> npt.NDArray[Any]:
        """Targets: int64 labels, or float targets of shape ``(n,)`` or ``(n, k)``; read-only."""
        return self._y

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
        return v.is_memory_mapped(self._X) and shared_map(self._X) is None

    @property
    def shared(self) -> bool:
        """True if ``X`` is an array in asynctrain's shared memory (see :meth:`to_shared`).

        The process backend's workers then map the same memory: no copy is made, whatever
        the number of workers. It does the same for a whole memory-mapped ``.npy`` file;
        a dataset that is neither (a slice of a shared array counts as neither) is copied
        into shared memory once per fit.
        """
        return is_shared(self._X)

    def __reduce__(self) -> tuple[Any, tuple[Array, npt.NDArray[Any], Array | None]]:
        # Rebuild through _trusted so an unpickled copy is read-only again (pickle
        # itself restores arrays writable) without re-scanning for NaN/Inf.
        return Dataset._trusted, (self._X, self._y, self._w)

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        where = " shared" if self.shared else " memory-mapped" if self.memory_mapped else ""
        where += " weighted" if self._w is not None else ""
        shape = f"n_features={self.n_features}"
        if self._X.ndim > 2:
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
        ``.csv``, :meth:`subset` and :meth:`split` already return shared datasets. Arrays
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
        X, y = shared_copy(self._X), shared_copy(self._y)
        w = None if self._w is None else shared_copy(self._w)
        if X is self._X and y is self._y and w is self._w:
            return self
        return Dataset._trusted(X, y, w)

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
            DataError: ``indices`` are empty, not 1-D, or out of range.

        Example:
            >>> ds = Dataset(np.arange(6.0).reshape(3, 2), np.array([0, 1, 2]))
            >>> ds.subset([2, 0]).y
            array([2, 0])
        """
        return self._take(_check_indices(indices, self.n_samples))

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
            DataError: one of the parts would be empty.

        Example:
            >>> ds = Dataset(np.zeros((10, 2)), np.zeros(10))
            >>> train, val = ds.split(0.2, seed=0)
            >>> len(train), len(val)
            (8, 2)
        """
        share = check_float("fraction", fraction, minimum=0.0, inclusive=False, maximum=1.0)
        if share == 1.0:
            raise ConfigError("fraction must be < 1, got 1.0; pass e.g. fraction=0.2")
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
        return self._take(first), self._take(second)

    def _take(self, positions: npt.NDArray[np.intp]) -> Dataset:
        w = None if self._w is None else _rows(self._w, positions)
        return Dataset._trusted(_rows(self._X, positions), _rows(self._y, positions), w)


def _rows(array: npt.NDArray[Any], positions: npt.NDArray[np.intp]) -> npt.NDArray[Any]:
    """``array[positions]``, written straight into (shared) memory of its own."""
    out = empty((len(positions), *array.shape[1:]), array.dtype)
    # mode="clip": the positions are checked already, and mode="raise" would first take
    # into a temporary buffer as large as ``out``.
    return np.take(array, positions, axis=0, out=out, mode="clip")


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
