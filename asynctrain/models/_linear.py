"""Least-squares linear regression, and the base shared with logistic regression."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_float, check_int
from asynctrain._types import DEFAULT_DTYPE, Grads, Params
from asynctrain.models._common import (
    add_l2_,
    as_input,
    as_weights,
    check_dtype,
    product,
    set_fields,
    squared_error_,
    t_product,
)

_WEIGHTS = ("w",)


@dataclass(frozen=True, init=False)
class LinearModel:
    """Configuration and helpers shared by models of the form ``z = X @ w + b``."""

    accepts_sparse: ClassVar[bool] = True
    """``X`` may be a scipy.sparse CSR matrix: the products ``X @ w`` and ``X.T @ delta``
    are sparse, and gradients dense."""

    n_features: int
    l2: float
    dtype: np.dtype[Any]

    supports_sample_weight = True  # loss_and_grad takes sample_weight= (see Model)

    def __init__(
        self, n_features: int, *, l2: float = 0.0, dtype: npt.DTypeLike = DEFAULT_DTYPE
    ) -> None:
        set_fields(
            self,
            n_features=check_int("n_features", n_features),
            l2=check_float("l2", l2),
            dtype=check_dtype(dtype),
        )

    def init(self, rng: np.random.Generator) -> Params:
        """Return zero parameters ``w`` (n_features,) and ``b`` (1,) in ``dtype``.

        The loss is convex, so zeros are a fine start; ``rng`` is accepted for the
        protocol and not used.
        """
        del rng
        return {"w": np.zeros(self.n_features, self.dtype), "b": np.zeros(1, self.dtype)}

    def _scores(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return the new array ``X @ w + b`` (X already in ``dtype``)."""
        z = product(X, params["w"])
        z += params["b"]
        return z

    def _finish(
        self,
        loss: float,
        params: Params,
        X: npt.NDArray[Any],
        delta: npt.NDArray[Any],
        weight: npt.NDArray[Any] | None,
    ) -> tuple[float, Grads]:
        """Back-propagate ``delta = d loss / d z`` to ``w`` and ``b`` and add the L2 term
        (charged on the sum of the row weights)."""
        grads = {"w": t_product(X, delta), "b": delta.sum(keepdims=True)}
        loss += add_l2_(grads, params, _WEIGHTS, self.l2, X.shape[0], weight)
        return loss, grads


@dataclass(frozen=True, init=False)
class LinearRegression(LinearModel):
    """Linear least squares: ``prediction = X @ w + b``.

    Per-row loss ``(x_i . w + b - y_i) ** 2``, summed over the rows (so the mean is the
    MSE), plus the per-sample L2 penalty on ``w`` described in :class:`Model`.

    Args:
        n_features: number of input columns, at least 1.
        l2: L2 penalty strength on ``w`` (not ``b``), a finite number >= 0.
        dtype: compute dtype, ``np.float32`` (default) or ``np.float64``.

    Raises:
        ConfigTypeError: a value has the wrong type (``n_features=True``, ``l2="0.1"``).
        ConfigError: a value is out of range (``n_features=0``, ``l2=-1``, ``l2=nan``).

    Example:
        >>> import numpy as np
        >>> model = LinearRegression(2)
        >>> params = model.init(np.random.default_rng(0))
        >>> X = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
        >>> loss, grads = model.loss_and_grad(params, X, np.array([1.0, 0.0]))
        >>> loss, grads["w"].tolist(), grads["b"].dtype
        (1.0, [-2.0, -4.0], dtype('float32'))
    """

    @property
    def n_classes(self) -> None:
        """Always ``None``: this is a regression model."""
        return None

    @property
    def n_outputs(self) -> int:
        """Number of values predicted per row: 1 (``y`` has shape (n,))."""
        return 1

    def loss_and_grad(
        self,
        params: Params,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        sample_weight: npt.NDArray[Any] | None = None,
    ) -> tuple[float, Grads]:
        """Return the summed squared error and its gradient (see :class:`Model`).

        Args:
            params: ``w`` (n_features,) and ``b`` (1,).
            X: (n, n_features) inputs.
            y: (n,) float targets.
            sample_weight: (n,) row weights; the loss is ``sum_i w_i * loss_i``.

        Returns:
            ``(loss_sum, {"w": ..., "b": ...})``.
        """
        X = as_input(X, self.dtype)
        weight = None if sample_weight is None else as_weights(sample_weight, self.dtype)
        residual = self._scores(params, X)
        loss = squared_error_(residual, y, weight)
        return self._finish(loss, params, X, residual, weight)

    def predict(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return the (n,) predictions ``X @ w + b`` in ``dtype``.

        Example:
            >>> import numpy as np
            >>> model = LinearRegression(1)
            >>> params = {"w": np.array([2.0], np.float32), "b": np.array([1.0], np.float32)}
            >>> model.predict(params, np.array([[3.0]], np.float32)).tolist()
            [7.0]
        """
        return self._scores(params, as_input(X, self.dtype))
