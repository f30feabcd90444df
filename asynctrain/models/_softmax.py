"""Multinomial (softmax) logistic regression with a stable log-softmax."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_float, check_int
from asynctrain._types import DEFAULT_DTYPE, Grads, Params
from asynctrain.models._common import (
    add_l2_,
    argmax_rows,
    as_input,
    as_weights,
    check_dtype,
    product,
    set_fields,
    softmax_,
    softmax_xent_,
    t_product,
)

_WEIGHTS = ("W",)


@dataclass(frozen=True, init=False)
class SoftmaxRegression:
    """Softmax regression: ``P(y | x) = softmax(x @ W + b)`` over ``n_classes`` classes.

    Per-row loss is the cross-entropy ``-log P(y_i | x_i)`` (log-softmax after
    subtracting the row max); summed over rows, plus the per-sample L2 penalty on ``W``
    described in :class:`Model`. Params are ``W`` (n_features, n_classes) and ``b``
    (n_classes,); labels are int64 in ``0 .. n_classes - 1``.

    Args:
        n_features: number of input columns, at least 1.
        n_classes: number of classes, at least 2.
        l2: L2 penalty strength on ``W`` (not ``b``), a finite number >= 0.
        dtype: compute dtype, ``np.float32`` (default) or ``np.float64``.

    Raises:
        ConfigTypeError: a value has the wrong type (``n_classes=True``).
        ConfigError: a value is out of range (``n_classes=1``, ``l2=nan``).

    Example:
        >>> import numpy as np
        >>> model = SoftmaxRegression(2, 3)
        >>> params = model.init(np.random.default_rng(0))
        >>> params["W"].shape, params["b"].shape, params["W"].dtype
        ((2, 3), (3,), dtype('float32'))
    """

    accepts_sparse: ClassVar[bool] = True
    """``X`` may be a scipy.sparse CSR matrix: the products ``X @ W`` and ``X.T @ delta``
    are sparse, and gradients dense."""

    n_features: int
    n_classes: int
    l2: float
    dtype: np.dtype[Any]

    supports_sample_weight = True  # loss_and_grad takes sample_weight= (see Model)

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        *,
        l2: float = 0.0,
        dtype: npt.DTypeLike = DEFAULT_DTYPE,
    ) -> None:
        set_fields(
            self,
            n_features=check_int("n_features", n_features),
            n_classes=check_int("n_classes", n_classes, minimum=2),
            l2=check_float("l2", l2),
            dtype=check_dtype(dtype),
        )

    def init(self, rng: np.random.Generator) -> Params:
        """Return zero parameters ``W`` and ``b`` in ``dtype`` (convex; ``rng`` unused)."""
        del rng
        shape = (self.n_features, self.n_classes)
        return {"W": np.zeros(shape, self.dtype), "b": np.zeros(self.n_classes, self.dtype)}

    def _logits(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return the new (n, n_classes) array ``X @ W + b``."""
        logits = product(as_input(X, self.dtype), params["W"])
        logits += params["b"]
        return logits

    def loss_and_grad(
        self,
        params: Params,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        sample_weight: npt.NDArray[Any] | None = None,
    ) -> tuple[float, Grads]:
        """Return the summed cross-entropy and its gradient (see :class:`Model`).

        Args:
            params: ``W`` (n_features, n_classes) and ``b`` (n_classes,).
            X: (n, n_features) inputs.
            y: (n,) int64 labels in ``0 .. n_classes - 1``.
            sample_weight: (n,) row weights; the loss is ``sum_i w_i * loss_i``.

        Returns:
            ``(loss_sum, {"W": ..., "b": ...})``.
        """
        X = as_input(X, self.dtype)
        weight = None if sample_weight is None else as_weights(sample_weight, self.dtype)
        delta = self._logits(params, X)
        loss = softmax_xent_(delta, y, weight)
        grads = {"W": t_product(X, delta), "b": delta.sum(axis=0)}
        loss += add_l2_(grads, params, _WEIGHTS, self.l2, X.shape[0], weight)
        return loss, grads

    def predict(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return (n,) int64 labels: the argmax of the logits.

        Example:
            >>> import numpy as np
            >>> params = {"W": np.eye(2, dtype=np.float32), "b": np.zeros(2, np.float32)}
            >>> SoftmaxRegression(2, 2).predict(params, np.array([[0.0, 1.0]])).tolist()
            [1]
        """
        return argmax_rows(self._logits(params, X))

    def predict_proba(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return (n, n_classes) probabilities in ``dtype``; rows sum to 1.

        Example:
            >>> import numpy as np
            >>> params = SoftmaxRegression(2, 4).init(np.random.default_rng(0))
            >>> SoftmaxRegression(2, 4).predict_proba(params, np.ones((1, 2))).tolist()
            [[0.25, 0.25, 0.25, 0.25]]
        """
        logits = self._logits(params, X)
        softmax_(logits)
        return logits
