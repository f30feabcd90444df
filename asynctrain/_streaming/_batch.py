"""Validation of one batch of a stream, as it arrives: numpy code, run off the event loop
(or on it, when that is cheaper: :mod:`._where`).

A stream batch is made ready the way all training input is (``asynctrain._inputs.prepare``:
shape, dtype and NaN/Inf, feature count and labels), except that one batch may hold a
single class. Its errors name the batch.

A checked batch owns its arrays: they are copied (or converted, which copies) before they
are checked, because the producer runs again before the batch is trained on and may refill
or change what it yielded. What was checked is what is trained on. The feed checks and
re-cuts a batch in one go (:func:`assemble_batch`): a plain batch's rows are copied
straight into the batches the trainer trains on and checked there; only a source that
hands its arrays over (asynctrain's own Parquet stream) is not copied.

A batch may be a data frame with a Series (or Arrow column); every frame of a stream must
have the columns the trainer was trained on (:class:`NameRecord`), plain arrays pass.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import DataError, DataTypeError
from asynctrain._finite import all_finite
from asynctrain._inputs import ClassWeight, prepare
from asynctrain._sparse import is_sparse
from asynctrain._types import Array
from asynctrain.data import Dataset
from asynctrain.data._frames import (
    FeatureNames,
    as_features,
    as_targets,
    is_column,
    is_table,
    match_feature_names,
)
from asynctrain.data._stream import BatchAssembler
from asynctrain.models import Model

Batch = tuple[Array, npt.NDArray[Any], Array | None]
"""A checked batch: ``(X, y, sample_weight)``, the weights None for an unweighted stream."""


class NameRecord:
    """The feature names of a stream fit: the trainer's, or the first named batch's.

    Example:
        >>> record = NameRecord(None)
        >>> record.meet(("a", "b"), name="X")
        >>> record.names
        ('a', 'b')
    """

    def __init__(self, names: FeatureNames | None) -> None:
        self.names = names

    def meet(self, names: FeatureNames | None, *, name: str) -> None:
        """Record ``names`` if none are yet; else check they match (see
        :func:`~asynctrain.data._frames.match_feature_names`)."""
        self.names = match_feature_names(self.names, names, name=name)


def check_batch(
    model: Model,
    item: object,
    *,
    where: str,
    like: npt.NDArray[Any] | None = None,
    names: NameRecord | None = None,
    weighted: bool | None = None,
    class_weight: ClassWeight = None,
) -> Batch | None:
    """Validate ``item``, an ``(X, y)`` pair, ``(X, y, sample_weight)`` triple or a
    Dataset, as training data for ``model``.

    Args:
        model: the model being trained.
        item: what the stream yielded.
        where: how errors name the batch, e.g. ``"stream batch 3"``.
        like: targets of the stream's first batch (rows do not matter): a later batch's
            targets must have their trailing shape and are cast to their dtype, so every
            batch fits one buffer.
        names: the stream's feature names, checked against a frame's columns.
        weighted: whether the stream's first batch had weights (None for the first):
            every batch of a stream has weights, or none has.
        class_weight: a dict ``{label: weight}`` multiplying each row's weight.

    Returns:
        ``(X, y, w)`` with ``X`` in the model's dtype, ``y`` as int64 labels
        (classifiers) or float targets and ``w`` the weights (None without), all new
        arrays that share no memory with ``item``; None for a batch with no rows
        (streams may yield empty polls).

    Raises:
        DataError, DataTypeError: the batch is unusable; the message starts with ``where``.
    """
    try:
        X, y, w = _unpack(item)
        if class_weight is None and not weighted and w is None and _plain(model, X, y):
            owned = X.copy(), y.astype(np.int64)  # owned (a copy either way), then checked
            if _plain_checked(model, *owned):
                return *owned, None
        return _checked(model, X, y, w, like, names, weighted, class_weight)
    except DataError as exc:
        raise type(exc)(f"{where}: {exc}") from exc


Assembled = tuple[dict[str, Array], int]
"""A batch of the trainer's batch size: its arrays and how many of its rows count."""
Layout = tuple[npt.NDArray[Any], bool]
"""What a stream's first batch sets for the rest: its targets (no rows), and whether it
has sample weights."""

_LABELS: npt.NDArray[np.int64] = np.empty(0, np.int64)


def assemble_batch(
    model: Model,
    item: object,
    assembler: BatchAssembler,
    *,
    where: str,
    like: npt.NDArray[Any] | None = None,
    names: NameRecord | None = None,
    weighted: bool | None = None,
    class_weight: ClassWeight = None,
    owned: bool = False,
) -> tuple[Layout | None, list[Assembled]]:
    """:func:`check_batch` of ``item`` (same arguments), its rows then cut by
    ``assembler`` into batches of the trainer's batch size.

    The common batch (see :func:`_plain`) is copied once, straight into the assembled
    batches, and the copied rows are checked there; others are checked, then cut. With
    ``owned`` (the source hands over arrays nobody else holds or writes again: the
    batches of asynctrain's own Parquet stream) a common batch is not copied first: it
    is checked as it is, and a batch of exactly ``batch_size`` rows is trained on as it is.

    Returns:
        The batch's :data:`Layout` (None for a batch with no rows) and the batches it
        completed.

    Raises:
        DataError, DataTypeError: as :func:`check_batch`; the assembler then holds
            what it held before (the stream ends at the error anyway).
    """
    try:
        X, y, w = _unpack(item)
        plain = class_weight is None and not weighted and w is None and _plain(model, X, y)
        if plain and owned:
            labels = y.astype(np.int64, copy=False)
            if _plain_checked(model, X, labels):
                return (_LABELS, False), assembler.add(X, labels)
        elif plain:
            mark = assembler.mark()
            done = assembler.add(X, y, copy=True, y_dtype=np.int64)
            if all(
                _plain_checked(model, a["X"][s:e], a["y"][s:e]) for a, s, e in assembler.written
            ):
                return (_LABELS, False), done
            assembler.undo(mark)  # the general path says what is wrong with it
        batch = _checked(model, X, y, w, like, names, weighted, class_weight)
    except DataError as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    if batch is None:
        return None, []
    X, y, w = batch
    return (np.empty((0, *y.shape[1:]), y.dtype), w is not None), assembler.add(X, y, w)


def _checked(
    model: Model,
    X: Any,
    y: Any,
    w: Any,
    like: npt.NDArray[Any] | None,
    names: NameRecord | None,
    weighted: bool | None,
    class_weight: ClassWeight,
) -> Batch | None:
    """The general path of :func:`check_batch` (its errors not yet named)."""
    if _rows(X) == 0 and _rows(y) == 0:  # skipped, once its shape is checked
        try:
            row = _one_row(X, y, w, model.dtype)
            if row is not None:
                _prepared(model, row, like, names, weighted, class_weight)
        except DataError as exc:
            raise type(exc)(f"a batch of no rows, checked as one row of its shape: {exc}") from exc
        return None
    owned = (_owned(X, model.dtype), _owned(y), w)  # Dataset copies the weights
    return _prepared(model, owned, like, names, weighted, class_weight)


def _prepared(
    model: Model,
    owned: Dataset | tuple[Any, Any, Any],
    like: npt.NDArray[Any] | None,
    names: NameRecord | None,
    weighted: bool | None,
    class_weight: ClassWeight,
) -> Batch:
    """``owned`` (a batch's own arrays) checked and made ready by ``prepare``."""
    expected = None if names is None else names.names
    data = prepare(
        model,
        owned,
        name="X",
        single_class=True,
        feature_names=expected,
        class_weight=class_weight,
    )
    if names is not None:
        names.meet(data.feature_names, name="X")
    _check_weighted(data, weighted)
    return data.X, _targets(model, data.y, like), data.sample_weight


def _one_row(X: Any, y: Any, w: Any, dtype: np.dtype[Any]) -> Dataset | None:
    """A batch of no rows as one row of zeros (weights of one) of its arrays' row shapes
    and dtypes, to be checked by the general path; None for an ``X`` with no row shape
    (``[]``): nothing to check.

    An empty poll is skipped, not trained on, but its shape is the stream's all the same:
    one with the wrong number of columns, a non-numeric dtype or targets of another shape
    says the producer is broken. Checked as a row, it gets the error a batch with rows
    gets (values cannot be wrong: there are none).
    """
    if is_table(X):
        X, frame = as_features(X, name="X")
    elif np.ndim(X) < 2:
        return None
    else:
        X, frame = np.asarray(X), None
    y = as_targets(y) if is_table(y) or is_column(y) else np.asarray(y)
    if w is not None and _rows(w) == 0:
        w = np.ones((1, *np.shape(w)[1:]))
    one = np.zeros((1, *X.shape[1:]), X.dtype), np.zeros((1, *y.shape[1:]), y.dtype)
    return Dataset(*one, sample_weight=w, dtype=dtype, feature_names=frame)


def _plain(model: Model, X: Any, y: Any) -> bool:
    """Whether the batch is the common one, checked in a few passes: ``X`` a numpy table
    in the model's dtype and shape, ``y`` integer labels of a classifier.

    Such a batch is accepted exactly as the general path accepts it (the same copies, the
    same checks, :func:`_plain_checked`), in a fraction of its time: the stream's threads
    share the GIL with the event loop and the workers, so each batch's Python is felt by
    training. When a check fails, the general path checks the batch again and says what
    is wrong with it.
    """
    n_classes = getattr(model, "n_classes", None)  # read as check_data reads them
    if not isinstance(n_classes, int) or type(X) is not np.ndarray or type(y) is not np.ndarray:
        return False
    if X.dtype != model.dtype or X.ndim != 2 or X.shape[1] != getattr(model, "n_features", None):
        return False
    if y.dtype.kind not in "iu" or y.shape != X.shape[:1] or not len(y):
        return False
    return getattr(model, "input_shape", None) is None


def _plain_checked(model: Model, X: npt.NDArray[Any], y: npt.NDArray[np.int64]) -> bool:
    """Whether a plain batch's owned copy (``y`` as int64) is finite with labels in range.

    One read of each array with no temporary, as cheap per call as numpy allows (it runs
    for every part of every batch): ``X`` by :func:`all_finite`; ``y`` by its largest
    value read as unsigned, which puts a negative label above every class.
    """
    n_classes: int = model.n_classes  # type: ignore[assignment]  # an int: see _plain
    return all_finite((X,)) and int(_umax(y.view(np.uint64))) < n_classes


_umax = np.maximum.reduce


def rows_of(item: object) -> int | None:
    """The rows of a stream item's ``X`` when they are known without reading it (an
    array, a data frame), else None (a malformed item's check says what is wrong)."""
    try:
        X = _pair(item)[0]
    except DataTypeError:
        return None
    if isinstance(X, np.ndarray):
        return X.shape[0] if X.ndim else None
    return len(X) if is_table(X) or is_column(X) else None


def _unpack(item: object) -> tuple[Any, Any, Any]:
    X, y, w = _pair(item)
    if is_sparse(X):
        raise DataTypeError(
            "X is a scipy.sparse matrix: stream batches are dense arrays (the stream's "
            "buffers hold dense rows); train on sparse data with fit() on a Dataset or an "
            "(X, y) pair, or yield X.toarray() per batch"
        )
    return X, y, w


def _pair(item: object) -> tuple[Any, Any, Any]:
    if isinstance(item, Dataset):
        return item.X, item.y, item.sample_weight
    if isinstance(item, tuple | list) and len(item) in (2, 3):
        return item[0], item[1], item[2] if len(item) == 3 else None
    raise DataTypeError(
        f"got {type(item).__name__}, not an (X, y) pair; a stream must yield (X, y) or "
        "(X, y, sample_weight) tuples of arrays (or Datasets)"
    )


def _rows(value: Any) -> int | None:
    """The rows of ``value``; None for a scalar, or for what numpy cannot read as an
    array (nested lists of unequal lengths): the batch's check then says what is wrong
    with it, naming the batch, instead of numpy's bare ValueError escaping from here."""
    if is_table(value) or is_column(value):
        return len(value)
    try:
        shape = np.shape(value)
    except (ValueError, TypeError):
        return None
    return shape[0] if shape else None


def _check_weighted(data: Dataset, weighted: bool | None) -> None:
    """Every batch of a stream has sample weights, or none has: one ring layout."""
    has = data.sample_weight is not None
    if weighted is not None and has != weighted:
        found = "has sample weights" if has else "has no sample weights"
        first = "had none" if has else "had them"
        raise DataError(
            f"the batch {found} but the stream's first batch {first}; yield "
            "(X, y, sample_weight) for every batch (weights of 1 for unweighted rows) "
            "or for none"
        )


def _owned(value: Any, dtype: np.dtype[Any] | None = None) -> Any:
    """``value`` copied into an array of its own, unless converting it to ``dtype`` (which
    ``prepare`` does, before its checks) makes that copy anyway. A data frame is read into
    a new array by ``prepare``; a Series is read here, then copied."""
    if is_table(value):
        return value
    if is_column(value):
        value = as_targets(value)
    numeric = isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
    if numeric and dtype is not None and value.dtype != dtype:
        return value
    try:
        return np.array(value)
    except (ValueError, TypeError):
        return value  # ragged or unreadable: Dataset says what is wrong with it


def _targets(model: Model, y: npt.NDArray[Any], like: npt.NDArray[Any] | None) -> npt.NDArray[Any]:
    """``y`` in the dtype every batch of the stream shares."""
    if model.n_classes is not None:
        return y.astype(np.int64, copy=False)  # whole numbers, checked by check_data
    if like is None:
        return y if y.dtype.kind == "f" else y.astype(model.dtype)
    if y.shape[1:] != like.shape[1:]:
        expected = str(("n", *like.shape[1:])).replace("'", "")  # (n,) or (n, k)
        raise DataError(
            f"targets y have shape {y.shape} but the stream's first batch had targets of "
            f"shape {expected}; every batch needs the same number of outputs"
        )
    return y.astype(like.dtype, copy=False)
