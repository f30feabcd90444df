"""Parquet streams: batches read from Parquet files for ``Trainer.fit_stream``.

A :class:`ParquetStream` is an iterable of ``(X, y)`` batches (``(X, y, w)`` with a
weight column). ``fit_stream`` runs its
``next()`` on the stream's own threads, so the files are read and decoded off the event
loop. Each pass (``epochs``) visits the row groups of all files in a seeded random order
and draws batches through a bounded shuffle buffer; iterating it again starts over with
the same seed, so it gives the same batches, bit for bit. ``fit_stream`` iterates it on
a thread of its own a few batches ahead of the training (this module starts no thread
itself). A hash of each row's index in
the stream splits off a held-out part that is the same whatever the seed, batch size or
shuffling.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_choice, check_int
from asynctrain._exceptions import ConfigError, ConfigTypeError, DataError
from asynctrain._types import DEFAULT_DTYPE
from asynctrain.data import _shared
from asynctrain.data import _validate as v
from asynctrain.data._dataset import Dataset
from asynctrain.data._parquet_files import ParquetFiles, check_pyarrow
from asynctrain.data._shuffle import Batch, InOrder, ShuffleBuffer

Subset = Literal["train", "holdout"]

DEFAULT_SHUFFLE_ROWS = 10_000
"""Rows of the shuffle buffer when ``shuffle_buffer`` is not given (at least 4 batches)."""


def read_parquet(
    path: str | os.PathLike[str],
    *,
    label: str,
    features: Sequence[str] | None = None,
    weight: str | None = None,
    batch_size: int,
    shuffle: bool = True,
    shuffle_buffer: int | None = None,
    seed: int = 0,
    epochs: int = 1,
    dtype: npt.DTypeLike = np.float32,
    holdout: float = 0.0,
    subset: Subset = "train",
) -> ParquetStream:
    """A stream of ``(X, y)`` batches read from Parquet files, for ``Trainer.fit_stream``
    (``(X, y, w)`` batches with a ``weight`` column).

    Nothing is read yet: the files are found, checked and read when the stream is
    iterated, which ``fit_stream`` does off the event loop, a row group at a time. Before
    the first batch every file's footer is checked (label and feature columns present
    and numeric, one schema across files, no nulls where the statistics tell), so a bad
    source fails before any step. Memory stays bounded by the shuffle buffer and one row
    group (read in chunks of about 8 MB), whatever the files' size; under ``fit_stream``
    add up to 18 batches in flight (read ahead, queued and in the ring: see
    ``docs/data.md``), which with a buffer of a few batches cost more than the buffer.

    Args:
        path: a Parquet file, a directory (every ``*.parquet`` below it, in sorted path
            order, skipping names that start with ``_`` or ``.``) or a glob pattern such as
            ``"data/part-*.parquet"`` (``**`` recurses).
        label: the label (target) column: integer or bool columns become int64 labels,
            float columns ``dtype`` targets.
        features: the feature columns, in this order; None: every column but the label
            (and the weight), in the first file's order.
        weight: a column of sample weights (numeric, finite, ``>= 0``; a row of weight
            ``k`` counts like ``k`` copies of it), yielded as ``w`` in ``dtype`` and kept
            by :meth:`ParquetStream.to_dataset` as ``sample_weight``; None: unweighted.
            Every batch of a weighted stream needs a row of positive weight (``fit_stream``
            refuses a batch whose rows all weigh 0).
        batch_size: rows per batch, >= 1 (``fit_stream`` re-cuts batches into its own
            ``batch_size``; give both the same value).
        shuffle: visit row groups in a seeded random order and draw batches through the
            shuffle buffer; False: every row in file order.
        shuffle_buffer: rows the shuffle buffer holds, >= ``batch_size``; None: 10,000 or 4
            batches, whichever is more. Bigger mixes better and costs its rows' memory.
        seed: seeds the order; the same seed gives the same batches.
        epochs: passes over the files, >= 1 (each pass in a new order).
        dtype: ``np.float32`` (default) or ``np.float64``, the dtype of ``X``; give the
            model's, so batches are not converted again.
        holdout: the fraction of rows, in ``[0, 1)``, held out by a hash of each row's
            index in the stream (all files' rows, in file order): the same rows whatever the
            seed, batch size or shuffling.
        subset: ``"train"``: the rows not held out; ``"holdout"``: the held-out rows (see
            also :meth:`ParquetStream.holdout`).

    Returns:
        A :class:`ParquetStream` (iterate it, or pass it to ``fit_stream``).

    Raises:
        ConfigError, ConfigTypeError: a bad setting (named), e.g. ``batch_size=0``.
        ImportError: pyarrow is not installed (``pip install 'asynctrain[parquet]'``).

    Iterating raises DataError (no files, a file that is not Parquet, a missing column,
    nulls or NaN/Inf, a negative weight, files whose schemas differ: naming the files) or
    DataTypeError (a non-numeric column, named).

    Example:
        >>> import pathlib, tempfile
        >>> import asynctrain as at, pyarrow as pa, pyarrow.parquet as pq
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "train.parquet"
        >>> rng = np.random.default_rng(0)
        >>> table = pa.table({"a": rng.normal(size=1000), "b": rng.normal(size=1000)})
        >>> table = table.append_column("y", pa.array((table["a"].to_numpy() > 0) * 1))
        >>> pq.write_table(table, path, row_group_size=100)
        >>> stream = at.data.read_parquet(path, label="y", batch_size=100)
        >>> X, y = next(iter(stream))
        >>> X.shape, X.dtype, y.dtype
        ((100, 2), dtype('float32'), dtype('int64'))
        >>> async def main():
        ...     model = at.models.LogisticRegression(2)
        ...     async with at.Trainer(model, backend="thread", batch_size=100) as trainer:
        ...         return await trainer.fit_stream(stream)
        >>> at.run(main()).steps
        10
    """
    check_pyarrow()
    return ParquetStream(
        path,
        label=label,
        features=features,
        weight=weight,
        batch_size=batch_size,
        shuffle=shuffle,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        epochs=epochs,
        dtype=dtype,
        holdout=holdout,
        subset=subset,
    )


class ParquetStream:
    """Batches of Parquet files: made by :func:`read_parquet`, which documents the
    arguments (kept as attributes of the same names; ``holdout`` as
    ``holdout_fraction``). Iterating it twice gives the same batches.

    Raises:
        ConfigError, ConfigTypeError: a bad setting, when it is made.

    Example:
        >>> stream = read_parquet("data/*.parquet", label="y", batch_size=256, epochs=3)
        >>> stream
        <ParquetStream 'data/*.parquet' label='y' batch_size=256 shuffle=True seed=0 epochs=3>
        >>> stream.features is None  # every column but the label
        True
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        label: str,
        features: Sequence[str] | None,
        weight: str | None = None,
        batch_size: int,
        shuffle: bool,
        shuffle_buffer: int | None,
        seed: int,
        epochs: int,
        dtype: npt.DTypeLike,
        holdout: float,
        subset: Subset,
    ) -> None:
        self.path = _check_path(path)
        self.label = _check_name("label", label)
        self.weight = _check_weight(weight, label)
        self.features = _check_features(features, label, self.weight)
        self.batch_size = check_int("batch_size", batch_size)
        self.shuffle = _check_bool("shuffle", shuffle)
        self.shuffle_buffer = _check_buffer(shuffle_buffer, self.batch_size, self.shuffle)
        self.seed = check_int("seed", seed, minimum=0)
        self.epochs = check_int("epochs", epochs)
        self.dtype: np.dtype[Any] = v.resolve_dtype(dtype) or DEFAULT_DTYPE
        self.holdout_fraction = _check_fraction(holdout)
        self.subset: Subset = check_choice("subset", subset, ("train", "holdout"))
        if subset == "holdout" and not self.holdout_fraction:
            raise ConfigError("subset='holdout' needs holdout > 0, e.g. holdout=0.1")

    def __repr__(self) -> str:
        split = f" holdout={self.holdout_fraction} subset={self.subset!r}" * (
            self.holdout_fraction > 0
        )
        return (
            f"<ParquetStream {os.fspath(self.path)!r} label={self.label!r} "
            f"{f'weight={self.weight!r} ' if self.weight is not None else ''}"
            f"batch_size={self.batch_size} shuffle={self.shuffle} seed={self.seed} "
            f"epochs={self.epochs}{split}>"
        )

    def __iter__(self) -> Generator[Batch]:
        """Yield the batches of every pass, ``(X, y)`` (``(X, y, w)`` with a weight
        column): see :func:`read_parquet`.

        Raises:
            DataError, DataTypeError: a bad file (before the first batch for what the
                footers tell; a NaN or a corrupt page when its row group is read).
        """
        rng = np.random.default_rng(self.seed)
        with self._files() as files:
            for _ in range(self.epochs):
                yield from self._pass(files, rng)

    def _pass(self, files: ParquetFiles, rng: np.random.Generator) -> Iterator[Batch]:
        """One pass over every row group: in a random order through the shuffle buffer,
        or in file order."""
        count = len(files.pieces)
        order = rng.permutation(count) if self.shuffle else range(count)
        # A pass holds at most the files' rows: a buffer (or a batch) larger than that
        # would never fill, and its slots cost memory and time of their own (a 100-row
        # file read with batch_size=10**8 took 47 s and 14 GB). One slot more than the
        # rows keeps the buffer from filling, so the batches are those of any larger one.
        rows = sum(piece.rows for piece in files.pieces)
        batcher = (
            ShuffleBuffer(min(self._buffer_rows(), rows + 1), self.batch_size, rng)
            if self.shuffle
            else InOrder(self.batch_size, rows=rows)
        )
        for X, y, w in self._chunks(files, order):
            yield from batcher.add(X, y, w)
        yield from batcher.drain()

    def _chunks(
        self, files: ParquetFiles, order: Iterable[int]
    ) -> Generator[tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any] | None]]:
        """The rows of the row groups in ``order``, a chunk at a time, of the subset."""
        for number in order:
            for X, y, w, first in files.read(files.pieces[number], self.dtype):
                keep = self._keep(first, len(X))
                if keep is not None:
                    X, y, w = X[keep], y[keep], None if w is None else w[keep]
                yield X, y, w

    def holdout(self) -> ParquetStream:
        """The held-out rows (``subset="holdout"``), in file order, in one pass.

        Example:
            >>> train = read_parquet("data/", label="y", batch_size=256, holdout=0.1)
            >>> train.holdout()
            <ParquetStream 'data/' label='y' batch_size=256 shuffle=False seed=0 epochs=1 \
holdout=0.1 subset='holdout'>
        """
        if not self.holdout_fraction:
            raise ConfigError(
                "this stream holds nothing out; pass holdout=0.1 (say) to read_parquet"
            )
        return self._with(subset="holdout", shuffle=False, shuffle_buffer=None, epochs=1)

    def feature_names(self) -> tuple[str, ...]:
        """The names of the columns of the batches' ``X``, in order: ``features``, or
        every column but the label and the weight of the first file (whose footer this
        reads, with every other file's, and checks as iterating does).

        Raises:
            DataError, DataTypeError: as iterating, for what the footers tell.
        """
        if self.features is not None:
            return self.features
        with self._files() as files:
            return files.features

    def to_dataset(self) -> Dataset:
        """Read every row of this stream's subset once, in file order, into a Dataset
        (e.g. the held-out rows, as ``validation`` for ``fit_stream``).

        The rows are held once: their number is known from the footers (and, with a
        holdout, from the hash of their indices), so each row group's rows are written
        straight into arrays made for all of them, in shared memory when they are large.

        This reads files: in async code run it off the event loop, e.g.
        ``await asyncio.to_thread(stream.holdout().to_dataset)``.

        Returns:
            A :class:`Dataset` of the subset's rows, ``X`` in the stream's ``dtype``, the
            weight column (if any) as its ``sample_weight``, the feature columns' names
            as its ``feature_names``.

        Raises:
            DataError, DataTypeError: as iterating; DataError when no row is selected, or
                when the files hold other rows than their footers counted (a file
                changed while it was read).

        Example:
            >>> import pathlib, tempfile
            >>> import pyarrow as pa, pyarrow.parquet as pq
            >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.parquet"
            >>> pq.write_table(pa.table({"x": np.arange(1000.0), "y": np.arange(1000) % 2}), path)
            >>> stream = read_parquet(path, label="y", batch_size=100, holdout=0.2)
            >>> held, kept = stream.holdout().to_dataset(), stream.to_dataset()
            >>> len(held) + len(kept), np.intersect1d(held.X, kept.X).size
            (1000, 0)
        """
        with self._files() as files:
            rows = self._subset_rows(files)
            if not rows:
                which = f"rows of the {self.subset!r} subset" if self.holdout_fraction else "rows"
                raise DataError(f"'{os.fspath(self.path)}' holds no {which}; a Dataset needs one")
            # Each chunk goes straight to its place in arrays made once for every row (in
            # shared memory when they are large): the rows are held once, not as chunks
            # plus their concatenation.
            arrays: list[npt.NDArray[Any]] = []
            start = 0
            for chunk in self._chunks(files, range(len(files.pieces))):
                parts = [part for part in chunk if part is not None]  # X, y and w if any
                if not arrays:
                    arrays = [_shared.empty((rows, *p.shape[1:]), p.dtype) for p in parts]
                stop = start + len(parts[0])
                if stop > rows:  # more rows than counted: refused below, however many
                    start = stop
                    break
                for whole, part in zip(arrays, parts, strict=True):
                    whole[start:stop] = part
                start = stop
            if start != rows:
                raise DataError(
                    f"'{os.fspath(self.path)}' changed while it was read: its footers count "
                    f"{rows} rows{' of the subset' * (self.holdout_fraction > 0)}, its row "
                    "groups held others; read it again"
                )
            names = files.features if self.features is None else self.features
        X, y, *w = arrays
        weights = w[0] if w else None
        return Dataset(X, y, sample_weight=weights, dtype=self.dtype, feature_names=names)

    def _subset_rows(self, files: ParquetFiles) -> int:
        """How many rows of ``files`` this stream's subset holds (footers only: the
        held-out rows are a function of their index)."""
        total = sum(piece.rows for piece in files.pieces)
        if not self.holdout_fraction:
            return total
        held = 0
        for first in range(0, total, _COUNT_BLOCK):
            index = np.arange(first, min(first + _COUNT_BLOCK, total), dtype=np.uint64)
            held += int(np.count_nonzero(holdout_mask(index, self.holdout_fraction)))
        return held if self.subset == "holdout" else total - held

    def _files(self) -> ParquetFiles:
        """The stream's files, found and checked (footers only)."""
        return ParquetFiles(self.path, label=self.label, features=self.features, weight=self.weight)

    def _with(self, **changes: Any) -> ParquetStream:
        settings: dict[str, Any] = {
            "label": self.label,
            "features": self.features,
            "weight": self.weight,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "shuffle_buffer": self.shuffle_buffer,
            "seed": self.seed,
            "epochs": self.epochs,
            "dtype": self.dtype,
            "holdout": self.holdout_fraction,
            "subset": self.subset,
        }
        return ParquetStream(self.path, **(settings | changes))

    def _buffer_rows(self) -> int:
        if self.shuffle_buffer is not None:
            return self.shuffle_buffer
        return max(DEFAULT_SHUFFLE_ROWS, 4 * self.batch_size)

    def _keep(self, first: int, rows: int) -> npt.NDArray[np.bool_] | None:
        """Which of the rows ``first .. first + rows`` belong to the subset (None: all)."""
        if not self.holdout_fraction:
            return None
        held = holdout_mask(np.arange(first, first + rows, dtype=np.uint64), self.holdout_fraction)
        return held if self.subset == "holdout" else ~held


_COUNT_BLOCK = 1 << 16  # row indices hashed at a time to count a subset's rows (a few MB)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def holdout_mask(index: npt.NDArray[np.uint64], fraction: float) -> npt.NDArray[np.bool_]:
    """True for the rows whose stream ``index`` hashes below ``fraction`` (splitmix64).

    A pure function of the index: the same rows are held out in every run.

    Example:
        >>> mask = holdout_mask(np.arange(100_000, dtype=np.uint64), 0.1)
        >>> round(float(mask.mean()), 2)
        0.1
    """
    x = index + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    x = x ^ (x >> np.uint64(31))
    return np.asarray((x >> np.uint64(11)) < np.uint64(fraction * 2**53))


def _check_path(path: object) -> str | os.PathLike[str]:
    if isinstance(path, str) or (
        isinstance(path, os.PathLike) and isinstance(os.fspath(path), str)
    ):
        return path
    several = " (several files: pass their directory or a glob pattern)" * isinstance(
        path, list | tuple
    )
    raise ConfigTypeError(
        f"path must be a str or os.PathLike naming a Parquet file, a directory or a glob "
        f"pattern, got {path!r} ({type(path).__name__}){several}"
    )


def _check_name(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigTypeError(f"{name} must be a column name (str), got {value!r}")
    return value


def _check_weight(weight: str | None, label: str) -> str | None:
    if weight is None:
        return None
    _check_name("weight", weight)
    if weight == label:
        raise ConfigError(
            f"weight={weight!r} is also the label column; name the column of sample weights"
        )
    return weight


def _check_features(
    features: Sequence[str] | None, label: str, weight: str | None
) -> tuple[str, ...] | None:
    if features is None:
        return None
    if isinstance(features, str):
        raise ConfigTypeError(
            f"features must be a list of column names, got the string {features!r}; "
            f"pass features=[{features!r}]"
        )
    names = tuple(_check_name("each feature", name) for name in features)
    if not names:
        raise ConfigError("features is empty; name at least one column, or pass None for all")
    if label in names:
        raise ConfigError(f"the label column {label!r} is also in features; remove it from them")
    if weight is not None and weight in names:
        raise ConfigError(f"the weight column {weight!r} is also in features; remove it from them")
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(f"features names {twice} more than once; name each column once")
    return names


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ConfigTypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_buffer(rows: int | None, batch_size: int, shuffle: bool) -> int | None:
    if rows is None:
        return None
    if not shuffle:
        raise ConfigError("shuffle_buffer needs shuffle=True; leave it out when not shuffling")
    check_int("shuffle_buffer", rows)
    if rows < batch_size:
        raise ConfigError(
            f"shuffle_buffer={rows} is smaller than batch_size={batch_size}; batches are drawn "
            f"from the buffer, so it holds at least one: pass shuffle_buffer >= {batch_size}"
        )
    return rows


def _check_fraction(holdout: float) -> float:
    # numbers.Real: numpy's scalars too (np.float32(0.1) is a fraction, as for split())
    if isinstance(holdout, bool) or not isinstance(holdout, numbers.Real):
        raise ConfigTypeError(f"holdout must be a fraction such as 0.1, got {holdout!r}")
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"holdout must be in [0, 1), got {holdout}; e.g. holdout=0.1")
    return float(holdout)
