"""Checks that a dataset fits a model, run before any training work starts."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigTypeError, DataError, DataTypeError
from asynctrain._finite import check_finite
from asynctrain._sparse import Sparse, as_csr, check_indices, is_sparse
from asynctrain._sparse import check_finite as check_sparse_finite
from asynctrain.models._protocol import Model


def check_data(
    model: Model, X: npt.ArrayLike, y: npt.ArrayLike, *, single_class: bool = False
) -> None:
    """Raise if ``X`` and ``y`` cannot be trained on by ``model``; never copies ``X``.

    Works with any object that has ``n_features`` and ``n_classes`` (see :class:`Model`).
    A model that declares ``input_shape`` (rows that are images or sequences, as
    :class:`TorchModel` and :class:`JaxModel` do) needs ``X`` of shape
    ``(n, *input_shape)``; any other model needs a 2-D ``(n, n_features)`` table.
    Classifiers (``n_classes`` not None) need 1-D integer labels (whole-number floats
    pass) covering at least two classes within ``0 .. n_classes - 1`` (one class is
    enough with ``single_class=True``, for one batch of a stream). Regression
    targets must be finite with shape (n,) for one output or (n, k) for ``k =
    model.n_outputs`` outputs; a model without ``n_outputs`` accepts either shape.
    Costs a few passes over ``y`` (min, max, finiteness) and none over ``X``. A
    scipy.sparse ``X`` needs a model with ``accepts_sparse = True`` and a 2-D table
    shape.

    Args:
        model: the model to train.
        X: (n, n_features) numeric inputs, or (n, *model.input_shape).
        y: targets for the rows of ``X``.
        single_class: accept labels of a single class (a batch, not a whole dataset).

    Raises:
        DataError: a shape, feature count, row count or label is wrong; the message
            names the value and the fix.
        DataTypeError: ``X`` or ``y`` holds non-numeric values, or ``X`` is sparse and
            the model cannot compute on sparse input.
        ConfigTypeError: ``model`` has no integer ``n_features``.

    Example:
        >>> import numpy as np
        >>> from asynctrain.models import SoftmaxRegression, check_data
        >>> X, y = np.zeros((4, 2)), np.array([0, 1, 2, 1])
        >>> check_data(SoftmaxRegression(2, 3), X, y)
        >>> check_data(SoftmaxRegression(3, 3), X, y)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        asynctrain._exceptions.DataError: dataset has 2 features but the model expects 3; ...
    """
    n_features, n_classes = _model_shape(model)
    if is_sparse(X):
        inputs = _check_sparse(model, X, n_features)
    else:
        inputs = _numeric_array("X", X)
        _check_row_shape(model, inputs, n_features)
    targets = _numeric_array("y", y)
    if targets.ndim == 0 or targets.shape[0] != inputs.shape[0]:
        raise DataError(
            f"X has {inputs.shape[0]} rows but y has shape {targets.shape}; "
            "pass exactly one target per row of X"
        )
    if n_classes is None:
        _check_targets(targets, getattr(model, "n_outputs", None))
    else:
        _check_labels(targets, n_classes, single_class=single_class)


def check_inputs(model: Model, X: npt.ArrayLike) -> npt.NDArray[Any]:
    """Return ``X`` as rows the model can predict: the model's dtype, finite, its shape.

    The one check of inputs to predict, used by ``Trainer.predict`` and ``Job.predict``.

    Args:
        model: the model that will predict.
        X: (n, n_features) numeric inputs, n >= 1 (a single row is ``X.reshape(1, -1)``);
            (n, *model.input_shape) for a model that declares an ``input_shape``; or a
            scipy.sparse matrix for a model with ``accepts_sparse = True``.

    Returns:
        ``X`` in ``model.dtype`` (no copy when it already is an array of that dtype); a
        sparse ``X`` as CSR in ``model.dtype``, never densified.

    Raises:
        DataError: the shape or feature count is wrong, a value is NaN or Inf (the
            message names the first, by row and column), or a value does not fit the
            model's dtype (e.g. ``10**400``). The scan builds no mask of ``X``'s size.
        DataTypeError: ``X`` holds non-numeric values.

    Example:
        >>> from asynctrain.models import LogisticRegression, check_inputs
        >>> check_inputs(LogisticRegression(2), [[1, 2]]).dtype
        dtype('float32')
        >>> check_inputs(LogisticRegression(2), [1, 2])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        asynctrain._exceptions.DataError: X must have shape (n, 2), got (2,): X must be 2-D ...
    """
    n_features, _ = _model_shape(model)
    if is_sparse(X):
        checked = _check_sparse(model, X, n_features)
        check_indices("X", checked)  # before as_csr: converting a corrupt CSC crashes
        csr = as_csr("X", checked, model.dtype)
        check_sparse_finite("X", csr)
        return csr  # type: ignore[no-any-return]
    expected = "(n, " + ", ".join(str(size) for size in row_shape(model)) + ")"
    try:
        given = _numeric_array("X", X)
        with np.errstate(over="ignore"):  # a value too large becomes Inf, refused below
            rows = np.asarray(given, dtype=model.dtype)
    except DataTypeError as exc:
        raise DataTypeError(f"X must be a numeric {expected} array: {exc}") from None
    except (DataError, OverflowError) as exc:  # ragged rows; a value too large for a float
        raise DataError(f"X must be a numeric {expected} array: {exc}") from None
    try:
        _check_row_shape(model, rows, n_features)
    except DataError as exc:
        raise DataError(f"X must have shape {expected}, got {rows.shape}: {exc}") from None
    # Chunked, with no mask of X's size (a quarter of a float32 X); names the value.
    note = "" if rows is given else f" (after conversion from {given.dtype})"
    check_finite("X", rows, note=note)
    return rows


def _model_shape(model: object) -> tuple[int, int | None]:
    """Return the model's ``(n_features, n_classes)``, read with ``getattr``."""
    n_features = getattr(model, "n_features", None)
    n_classes = getattr(model, "n_classes", None)
    if isinstance(n_features, bool) or not isinstance(n_features, numbers.Integral):
        raise ConfigTypeError(
            f"model {model!r} has no integer n_features (got {n_features!r}); "
            "a model must follow the asynctrain.models.Model protocol"
        )
    return int(n_features), None if n_classes is None else int(n_classes)


def _check_sparse(model: object, X: Sparse, n_features: int) -> Sparse:
    """Raise unless ``model`` computes on sparse input and sparse ``X`` is an
    (n, n_features) table of real numbers with a row; return ``X``."""
    if not getattr(model, "accepts_sparse", False):
        raise DataTypeError(
            f"X is a scipy.sparse matrix, and {type(model).__name__} cannot compute on "
            "sparse input (it has no accepts_sparse = True); pass X.toarray() if it fits "
            "in memory, or train a LinearRegression, LogisticRegression, "
            "SoftmaxRegression or MLP, which take CSR input"
        )
    if X.dtype.kind not in "biuf":
        raise DataTypeError(
            f"X must hold real numbers, got a sparse matrix of dtype {X.dtype}; "
            "convert it with X.astype(np.float32)"
        )
    if len(X.shape) != 2:
        raise DataError(f"sparse X must be 2-D (samples, features), got shape {X.shape}")
    if X.shape[1] != n_features:
        raise DataError(
            f"dataset has {X.shape[1]} features but the model expects {n_features}; "
            f"build the model with n_features={X.shape[1]} or select {n_features} columns "
            "(X[:, columns] keeps a CSR matrix sparse)"
        )
    if X.shape[0] == 0:
        raise DataError("dataset has no rows; pass at least one sample")
    return X


def _numeric_array(name: str, values: npt.ArrayLike) -> npt.NDArray[Any]:
    """Return ``values`` as an array (a view, for arrays) with a real numeric dtype."""
    try:
        array = values if isinstance(values, np.ndarray) else np.asarray(values)
    except (TypeError, ValueError, OverflowError) as exc:  # ragged rows, huge integers
        raise DataError(f"{name} is not a numeric table: {exc}") from exc
    if array.dtype.kind not in "biuf":
        raise DataTypeError(
            f"{name} must hold real numbers, got dtype {array.dtype}; "
            f"convert it with {name}.astype(np.float32) or encode non-numeric columns"
        )
    return array


def _check_inputs(X: npt.NDArray[Any], n_features: int) -> None:
    """Raise unless ``X`` is a non-empty (n, n_features) table."""
    if X.ndim != 2:
        raise DataError(
            f"X must be 2-D (samples, features), got shape {X.shape}; "
            "use X.reshape(len(X), -1) (or X.reshape(-1, 1) for a single feature)"
        )
    if X.shape[1] != n_features:
        raise DataError(
            f"dataset has {X.shape[1]} features but the model expects {n_features}; "
            f"build the model with n_features={X.shape[1]} or select {n_features} columns"
        )
    if X.shape[0] == 0:
        raise DataError("dataset has no rows; pass at least one sample")


def _check_row_shape(model: object, X: npt.NDArray[Any], n_features: int) -> None:
    """Rows of the model's ``input_shape`` if it declares one, else a 2-D table."""
    declared = getattr(model, "input_shape", None)
    if declared is None:
        _check_inputs(X, n_features)
    else:
        check_rows_shape(X, tuple(declared))


def row_shape(model: object) -> tuple[int, ...]:
    """The shape of one row of ``X`` for ``model``: its ``input_shape`` if it declares
    one, else ``(n_features,)``.

    Example:
        >>> from asynctrain.models import SoftmaxRegression
        >>> row_shape(SoftmaxRegression(4, 3))
        (4,)
    """
    declared = getattr(model, "input_shape", None)
    if declared is not None:
        return tuple(int(size) for size in declared)
    return (_model_shape(model)[0],)


def check_rows_shape(X: npt.NDArray[Any], expected: tuple[int, ...]) -> None:
    """Raise :class:`DataError` unless ``X`` is a non-empty ``(n, *expected)`` array."""
    if X.shape[1:] != expected:
        raise DataError(
            f"X has rows of shape {X.shape[1:]} (X.shape={X.shape}) but the model expects "
            f"rows of shape {expected}; reshape X to (len(X), *{expected}) or build the "
            f"model with input_shape={X.shape[1:]}"
        )
    if X.shape[0] == 0:
        raise DataError("dataset has no rows; pass at least one sample")


def _check_labels(y: npt.NDArray[Any], n_classes: int, *, single_class: bool) -> None:
    """Raise unless ``y`` holds 1-D whole-number labels of valid classes (two or more,
    unless ``single_class``)."""
    if y.ndim != 1:
        # A column of labels (a frame's [["label"]]) would all become 0 under argmax.
        column = y.ndim == 2 and y.shape[1] == 1
        fix = "pass y.ravel()" if column else "for one-hot labels pass y.argmax(axis=1)"
        raise DataError(f"labels y must be 1-D class indices, got shape {y.shape}; {fix}")
    if y.dtype.kind == "b":
        raise DataTypeError("labels y are booleans; pass y.astype(np.int64)")
    if y.dtype.kind == "f" and not np.array_equal(y, np.floor(y)):
        bad = y[y != np.floor(y)][0]
        raise DataError(
            f"labels y must be whole numbers 0..{n_classes - 1}, found {bad}; "
            "encode classes with np.unique(y, return_inverse=True)[1]"
        )
    low, high = y.min(), y.max()
    if low < 0 or high > n_classes - 1:
        raise DataError(
            f"labels must be in 0..{n_classes - 1} for a model with n_classes={n_classes}, "
            f"found min {low} and max {high}; remap them with "
            "np.unique(y, return_inverse=True)[1] or build the model with more classes"
        )
    if low == high and not single_class:
        raise DataError(
            f"labels y hold only class {low}; a classifier needs at least two classes "
            "in its training data"
        )


def _check_targets(y: npt.NDArray[Any], n_outputs: object) -> None:
    """Raise unless regression targets have the model's output shape and are finite."""
    n = y.shape[0]
    if n_outputs is None:
        fits = y.ndim in (1, 2)
        expected = f"({n},) or ({n}, k)"
    else:
        shape = (n,) if n_outputs == 1 else (n, n_outputs)
        fits, expected = y.shape == shape, str(shape)
    if not fits:
        single = y.shape == (n, 1) and n_outputs == 1
        hint = "pass y.ravel()" if single else "reshape y to match the model"
        raise DataError(
            f"regression targets y must have shape {expected} for this model, "
            f"got {y.shape}; {hint} or change the model's outputs"
        )
    if y.dtype.kind == "b":
        raise DataTypeError("regression targets y are booleans; pass y.astype(np.float32)")
    if not np.isfinite(y).all():
        raise DataError("regression targets y must be finite numbers; drop or impute NaN/Inf")
