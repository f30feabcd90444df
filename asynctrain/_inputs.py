"""Training input, made ready for a model: the one path from ``(X, y)`` to a Dataset.

Every way data enters training goes through :func:`prepare`: ``Trainer.fit`` / ``steps``
and their validation data, each batch of a stream (``_streaming/_batch.py``), the
service's jobs and the scikit-learn estimators. It is synchronous numpy code that scans
and may copy all of ``X``, so callers on an event loop run it off the loop.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigTypeError
from asynctrain.data import Dataset
from asynctrain.models import Model, check_data

__all__ = ["DataLike", "prepare"]

DataLike = Dataset | tuple[npt.ArrayLike, npt.ArrayLike]
"""What ``fit`` trains on: a Dataset or an ``(X, y)`` pair of arrays."""


def prepare(
    model: Model, data: DataLike, *, name: str = "data", single_class: bool = False
) -> Dataset:
    """``data`` validated as training input for ``model``, in the model's dtype.

    An ``(X, y)`` pair is validated and converted in one pass (:class:`Dataset` with
    ``dtype=model.dtype``); a Dataset in another dtype is converted (a copy of ``X``),
    one already in it is returned as is. Then :func:`~asynctrain.models.check_data`
    checks that it fits the model (shape, feature count, labels, targets). A scipy.sparse
    ``X`` stays sparse (CSR in the model's dtype, see :class:`Dataset`) and needs a model
    with ``accepts_sparse = True``.

    Args:
        model: the model to train.
        data: a :class:`Dataset` or an ``(X, y)`` pair.
        name: how errors name ``data`` (``"validation"``).
        single_class: accept labels of a single class (one batch of a stream).

    Returns:
        A Dataset in ``model.dtype`` that ``model`` can train on.

    Raises:
        DataError, DataTypeError: the data is unusable; the message names the value.
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
    check_data(model, data.X, data.y, single_class=single_class)
    if data.dtype != np.dtype(model.dtype):
        data = Dataset(data.X, data.y, dtype=model.dtype)
    return data
