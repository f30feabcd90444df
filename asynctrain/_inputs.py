"""Training input, made ready for a model: the one path from ``(X, y)`` to a Dataset.

Every way data enters training goes through :func:`prepare`: ``Trainer.fit`` / ``steps``
and their validation data, each batch of a stream (``_streaming/_batch.py``), the
service's jobs and the scikit-learn estimators. It is synchronous numpy code that scans
and may copy all of ``X``, so callers on an event loop run it off the loop. Sample
weights (a Dataset's, or the third item of an ``(X, y, w)`` triple) and class weights
are settled here too: combined into one weight per row, and refused for a model that
cannot weigh its rows.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, Callable
from typing import Any, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigError, ConfigTypeError, DataError
from asynctrain.data import Dataset, ParquetStream
from asynctrain.data._frames import (
    FeatureNames,
    as_features,
    is_table,
    match_feature_names,
    refuse_lazy,
)
from asynctrain.data._weights import ClassWeight, check_weighted_classes, class_weight_rows
from asynctrain.models import Model, check_data, check_inputs
from asynctrain.models._protocol import quiet_float_errors, supports_sample_weight

__all__ = [
    "ClassWeight",
    "DataLike",
    "check_class_weight",
    "prediction_inputs",
    "predictions",
    "prepare",
    "prepare_validation",
    "quietly",
    "rows_given",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

DataLike = (
    Dataset
    | tuple[npt.ArrayLike, npt.ArrayLike]
    | tuple[npt.ArrayLike, npt.ArrayLike, npt.ArrayLike | None]
)
"""What ``fit`` trains on: a Dataset, an ``(X, y)`` pair or an ``(X, y, sample_weight)``
triple of arrays (``X`` may be a pandas/polars DataFrame or a pyarrow Table, ``y`` a
Series or an Arrow array)."""


def prepare(
    model: Model,
    data: DataLike,
    *,
    name: str = "data",
    single_class: bool = False,
    feature_names: FeatureNames | None = None,
    class_weight: ClassWeight = None,
) -> Dataset:
    """``data`` validated as training input for ``model``, in the model's dtype.

    An ``(X, y)`` pair or ``(X, y, sample_weight)`` triple is validated and converted in
    one pass (:class:`Dataset` with ``dtype=model.dtype``; a data frame ``X`` is read into
    one array of that dtype, its column names kept as ``feature_names``); a Dataset in
    another dtype is converted (a copy of ``X``), one already in it is returned as is.
    Then :func:`~asynctrain.models.check_data` checks that it fits the model (shape,
    feature count, labels, targets). A scipy.sparse ``X`` stays sparse (CSR in the
    model's dtype, see :class:`Dataset`) and needs a model with ``accepts_sparse = True``.
    ``class_weight`` multiplies each row's sample weight (1 without) by its class's
    weight. Weighted data needs a model that declares ``supports_sample_weight`` and, for
    a classifier, rows of positive weight in at least two classes (unless
    ``single_class``).

    Args:
        model: the model to train.
        data: a :class:`Dataset`, an ``(X, y)`` pair or an ``(X, y, sample_weight)``
            triple (a None weight means unweighted).
        name: how errors name ``data`` (``"validation"``).
        single_class: accept labels of a single class (one batch of a stream, or
            validation data, which is evaluated and not trained on).
        feature_names: the columns trained on so far, if known: a data frame (or a
            Dataset with names) must have them, in that order (checked first, so a
            missing column is named rather than counted).
        class_weight: ``"balanced"`` (class ``c`` weighs ``total / (n_classes_present *
            total_c)``, totals of sample weights or rows), a dict ``{label: weight}``
            (labels left out weigh 1), or None.

    Returns:
        A Dataset in ``model.dtype`` that ``model`` can train on.

    Raises:
        DataError, DataTypeError: the data is unusable, or its columns are not
            ``feature_names``; the message names the value (bad weights included:
            negative, NaN/Inf, all zero, wrong length).
        ConfigError: weights for a model that does not support them, ``class_weight``
            for a regression model, or a bad ``class_weight``.
        ConfigTypeError: ``data`` is neither a Dataset nor an ``(X, y)`` pair (a stream,
            say: that is ``fit_stream``'s).

    Example:
        >>> import numpy as np
        >>> from asynctrain.models import SoftmaxRegression
        >>> prepare(SoftmaxRegression(2, 3), (np.zeros((4, 2)), [0, 1, 2, 1]))
        <Dataset n_samples=4 n_features=2 dtype=float32>
        >>> data = prepare(SoftmaxRegression(2, 3), (np.zeros((4, 2)), [0, 1, 2, 1], [1, 1, 2, 0]),
        ...                class_weight={1: 3.0})
        >>> data.sample_weight
        array([1., 3., 2., 0.], dtype=float32)
    """
    if isinstance(data, tuple) and len(data) in (2, 3):
        weights = data[2] if len(data) == 3 else None
        data = Dataset(data[0], data[1], sample_weight=weights, dtype=model.dtype)
    if isinstance(data, ParquetStream):
        raise ConfigTypeError(
            f"{name} is a ParquetStream, a stream of batches; train on it with "
            "fit_stream(), or read its rows into a Dataset first (validation, say) with "
            "stream.to_dataset() (it reads files: off the event loop, e.g. "
            "await asyncio.to_thread(stream.to_dataset))"
        )
    if isinstance(data, AsyncIterable) or inspect.isgenerator(data):
        raise ConfigTypeError(
            f"{name} is a stream ({type(data).__name__}); fit() and steps() take a "
            "Dataset or an (X, y) pair: train on a stream of batches with fit_stream()"
        )
    if not isinstance(data, Dataset):
        raise ConfigTypeError(
            f"{name} must be a Dataset, an (X, y) pair or an (X, y, sample_weight) triple, "
            f"got {type(data).__name__}"
        )
    match_feature_names(feature_names, data.feature_names, name=name)
    check_data(model, data.X, data.y, single_class=single_class)
    if data.dtype != np.dtype(model.dtype):
        data = Dataset(
            data.X,
            data.y,
            sample_weight=data.sample_weight,
            dtype=model.dtype,
            feature_names=data.feature_names,
        )
    if class_weight is not None:
        data = _with_class_weight(model, data, class_weight, name)
    if data.sample_weight is not None:
        _check_weighted(model, data, name, single_class=single_class)
    return data


def prepare_validation(
    model: Model,
    data: DataLike,
    *,
    feature_names: FeatureNames | None = None,
    name: str = "validation",
) -> Dataset:
    """``data`` validated as validation data for ``model``: :func:`prepare`, but one class
    is enough (the data is evaluated, not trained on), and a :class:`DataError` says it
    is about the ``name`` data (``"evaluation"``: ``Trainer.evaluate``'s); the checks are
    those of the training data, and so were their messages ("dataset has 2 features but
    the model expects 3").

    Example:
        >>> import numpy as np
        >>> from asynctrain.models import LogisticRegression
        >>> prepare_validation(LogisticRegression(2), (np.zeros((3, 2)), [1, 1, 1]))
        <Dataset n_samples=3 n_features=2 dtype=float32>
    """
    try:
        return prepare(model, data, name=name, single_class=True, feature_names=feature_names)
    except DataError as exc:
        if str(exc).startswith(name):  # named already
            raise
        raise type(exc)(f"{name} data: {exc}") from exc


def rows_given(data: object) -> int | None:
    """The rows :func:`prepare` will make of ``data``, read off it without a scan (the
    length of a Dataset, or of an ``(X, y)`` pair's labels); None when ``data`` does not
    tell (prepare then says what is wrong with it). A guess, not a check: the caller
    compares it with the prepared Dataset's length.

    Example:
        >>> rows_given(([[0.0], [1.0]], [0, 1])), rows_given("not data")
        (2, None)
    """
    if isinstance(data, Dataset):
        return len(data)
    if isinstance(data, tuple) and len(data) in (2, 3):
        try:
            return len(data[1])
        except TypeError:
            return None
    return None


def check_class_weight(model: Model, class_weight: ClassWeight, *, where: str) -> None:
    """Refuse, before any work, a ``class_weight`` that ``where`` (a stream, a
    ``partial_fit`` call) cannot apply batch by batch.

    Raises:
        ConfigError: ``"balanced"`` (it needs the label counts of all the data, which a
            stream does not know in advance), a regression model, a label that is not
            one of the model's classes, a bad weight, or a model that cannot weigh rows.
    """
    if class_weight is None:
        return
    if isinstance(class_weight, str) and class_weight == "balanced":
        raise ConfigError(
            f"class_weight='balanced' needs the label counts of all the data, which "
            f"{where} does not know in advance; count the labels and pass a dict "
            "{label: n_samples / (n_classes * count)}, e.g. from "
            "sklearn.utils.class_weight.compute_class_weight"
        )
    class_weight_rows(class_weight, np.zeros(0, np.int64), _classes(model, class_weight))
    _check_weighable(model, "class_weight was given")


def _classes(model: Model, class_weight: ClassWeight) -> int:
    """The model's class count; ConfigError for a regression model."""
    n_classes = model.n_classes
    if n_classes is None:
        raise ConfigError(
            f"class_weight={class_weight!r} weighs the classes of a classifier, but {model!r} "
            "is a regression model; weigh its rows with sample_weight instead"
        )
    return n_classes


def _check_weighable(model: Model, what: str) -> None:
    """ConfigError naming ``model`` and the fix unless it declares supports_sample_weight."""
    if not supports_sample_weight(model):
        raise ConfigError(
            f"{what}, but the model {model!r} cannot weigh its rows: give its loss_and_grad "
            "a keyword sample_weight=None (returning sum_i w_i * loss_i) and the class "
            "attribute supports_sample_weight = True (see asynctrain.models.Model), or drop "
            "the weights"
        )


def _with_class_weight(
    model: Model, data: Dataset, class_weight: ClassWeight, name: str
) -> Dataset:
    """``data`` with each row's weight multiplied by the weight of its class."""
    n_classes = _classes(model, class_weight)
    rows = class_weight_rows(class_weight, data.y, n_classes, data.sample_weight)
    if data.sample_weight is not None:
        rows *= data.sample_weight
    try:
        return data.with_weights(rows)
    except DataError as exc:
        raise DataError(f"{name} with class_weight={class_weight!r}: {exc}") from exc


def _check_weighted(model: Model, data: Dataset, name: str, *, single_class: bool) -> None:
    what = f"{name} has sample weights (sample_weight, an (X, y, w) triple or class_weight)"
    _check_weighable(model, what)
    if model.n_classes is not None and not single_class:
        assert data.sample_weight is not None
        check_weighted_classes(data.y, data.sample_weight)


def prediction_inputs(
    model: Model, X: npt.ArrayLike, feature_names: FeatureNames | None
) -> npt.NDArray[Any]:
    """``X`` checked and converted for ``model.predict``, as ``Trainer.predict`` needs it.

    A data frame is read into the model's dtype and its columns checked against the
    ``feature_names`` trained on: the same names in the same order (a plain array, or a
    frame after a fit on arrays, is taken by position). Then
    :func:`~asynctrain.models.check_inputs` checks the shape and values.

    Raises:
        DataError, DataTypeError: ``X`` is unusable, or its columns are not those trained
            on (the message names the missing, extra or reordered ones).

    Example:
        >>> import pandas as pd
        >>> from asynctrain.models import LogisticRegression
        >>> prediction_inputs(LogisticRegression(1), pd.DataFrame({"a": [1.0]}), ("a",))
        array([[1.]], dtype=float32)
    """
    if is_table(X):
        X, names = as_features(X, name="X", dtype=np.dtype(model.dtype))
        match_feature_names(feature_names, names, name="X")
    refuse_lazy(X, "X")
    return check_inputs(model, X)


def predictions(
    model: Model, params: Any, X: npt.ArrayLike, feature_names: FeatureNames | None
) -> npt.NDArray[Any]:
    """``model.predict(params, X)`` of ``X`` checked by :func:`prediction_inputs`, for
    ``Trainer.predict``, ``Job.predict`` and ``asynctrain predict``.

    The call runs :func:`quietly`: parameters that overflow on ``X`` show in what the
    model makes of it (``inf`` or ``nan`` values, the class of an infinite score), not as
    a ``RuntimeWarning`` of the caller's thread.

    Raises:
        DataError, DataTypeError: as :func:`prediction_inputs`.
    """
    rows = prediction_inputs(model, X, feature_names)
    return quietly(model.predict, params, rows)


def quietly(compute: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """``compute(*args, **kwargs)`` with numpy's floating-point warnings off, as the model
    calls of a fit and ``evaluate`` run (:func:`~asynctrain.models._protocol.quiet_float_errors`).

    The one way an answer is computed from trained parameters outside a fit:
    :func:`predictions` (``Trainer.predict``, ``Job.predict``, ``asynctrain predict``) and
    the scikit-learn estimators' ``predict``, ``predict_proba``, ``decision_function``
    and ``score``. An overflow shows in the answer, never as a ``RuntimeWarning`` (an
    error under warnings-as-errors). A model's own ``np.errstate`` inside still applies.

    Example:
        >>> import numpy as np
        >>> quietly(np.exp, np.float32(100)).item()
        inf
    """
    with quiet_float_errors():
        return compute(*args, **kwargs)
