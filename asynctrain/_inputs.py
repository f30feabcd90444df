"""Training input, made ready for a model: the one path from ``(X, y)`` to a Dataset.

Every way data enters training goes through :func:`prepare`: ``Trainer.fit`` / ``steps``
and their validation data, each batch of a stream (``_streaming/_batch.py``), the
service's jobs and the scikit-learn estimators. It is synchronous numpy code that scans
and may copy all of ``X``, so callers on an event loop run it off the loop.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigTypeError
from asynctrain.data import Dataset
from asynctrain.data._frames import FeatureNames, as_features, is_table, match_feature_names
from asynctrain.models import Model, check_data, check_inputs

__all__ = ["DataLike", "prediction_inputs", "prepare"]

DataLike = Dataset | tuple[npt.ArrayLike, npt.ArrayLike]
"""What ``fit`` trains on: a Dataset or an ``(X, y)`` pair of arrays (``X`` may be a
pandas/polars DataFrame or a pyarrow Table, ``y`` a Series or an Arrow array)."""


def prepare(
    model: Model,
    data: DataLike,
    *,
    name: str = "data",
    single_class: bool = False,
    feature_names: FeatureNames | None = None,
) -> Dataset:
    """``data`` validated as training input for ``model``, in the model's dtype.

    An ``(X, y)`` pair is validated and converted in one pass (:class:`Dataset` with
    ``dtype=model.dtype``; a data frame ``X`` is read into one array of that dtype, its
    column names kept as ``feature_names``); a Dataset in another dtype is converted (a
    copy of ``X``), one already in it is returned as is. Then :func:`~asynctrain.models.check_data`
    checks that it fits the model (shape, feature count, labels, targets). A scipy.sparse
    ``X`` stays sparse (CSR in the model's dtype, see :class:`Dataset`) and needs a model
    with ``accepts_sparse = True``.

    Args:
        model: the model to train.
        data: a :class:`Dataset` or an ``(X, y)`` pair.
        name: how errors name ``data`` (``"validation"``).
        single_class: accept labels of a single class (one batch of a stream).
        feature_names: the columns trained on so far, if known: a data frame (or a
            Dataset with names) must have them, in that order (checked first, so a
            missing column is named rather than counted).

    Returns:
        A Dataset in ``model.dtype`` that ``model`` can train on.

    Raises:
        DataError, DataTypeError: the data is unusable, or its columns are not
            ``feature_names``; the message names the value.
        ConfigTypeError: ``data`` is neither a Dataset nor an ``(X, y)`` pair (a stream,
            say: that is ``fit_stream``'s).

    Example:
        >>> import numpy as np
        >>> from asynctrain.models import SoftmaxRegression
        >>> prepare(SoftmaxRegression(2, 3), (np.zeros((4, 2)), [0, 1, 2, 1]))
        <Dataset n_samples=4 n_features=2 dtype=float32>
    """
    if isinstance(data, tuple) and len(data) == 2:
        data = Dataset(data[0], data[1], dtype=model.dtype)
    if isinstance(data, AsyncIterable) or inspect.isgenerator(data):
        raise ConfigTypeError(
            f"{name} is a stream ({type(data).__name__}); fit() and steps() take a "
            "Dataset or an (X, y) pair: train on a stream of batches with fit_stream()"
        )
    if not isinstance(data, Dataset):
        raise ConfigTypeError(
            f"{name} must be a Dataset or an (X, y) pair, got {type(data).__name__}"
        )
    match_feature_names(feature_names, data.feature_names, name=name)
    check_data(model, data.X, data.y, single_class=single_class)
    if data.dtype != np.dtype(model.dtype):
        data = Dataset(data.X, data.y, dtype=model.dtype, feature_names=data.feature_names)
    return data


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
    return check_inputs(model, X)
