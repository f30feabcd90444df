"""Binary logistic regression with a numerically stable log-loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._types import Grads, Params
from asynctrain.models._common import as_input, as_weights, logistic_loss_, sigmoid_
from asynctrain.models._linear import LinearModel


@dataclass(frozen=True, init=False)
class LogisticRegression(LinearModel):
    """Binary logistic regression: ``P(y=1 | x) = sigmoid(x . w + b)``.

    Per-row loss is the log-loss ``-log P(y_i | x_i)``, computed as a softplus of the
    logit so it stays finite for huge logits; summed over rows, plus the per-sample L2
    penalty on ``w`` described in :class:`Model`. Labels are 0 or 1 (int64).

    Args:
        n_features: number of input columns, at least 1.
        l2: L2 penalty strength on ``w`` (not ``b``), a finite number >= 0.
        dtype: compute dtype, ``np.float32`` (default) or ``np.float64``.

    Raises:
        ConfigTypeError: a value has the wrong type (``n_features=2.0``).
        ConfigError: a value is out of range (``n_features=0``, ``l2=-1``).

    Example:
        >>> import numpy as np
        >>> model = LogisticRegression(1, dtype=np.float64)
        >>> params = model.init(np.random.default_rng(0))
        >>> loss, grads = model.loss_and_grad(params, np.ones((2, 1)), np.array([0, 1]))
        >>> round(loss, 4), grads["b"].tolist()
        (1.3863, [0.0])
    """

    @property
    def n_classes(self) -> int:
        """Always 2: labels are 0 and 1."""
        return 2

    def loss_and_grad(
        self,
        params: Params,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        sample_weight: npt.NDArray[Any] | None = None,
    ) -> tuple[float, Grads]:
        """Return the summed log-loss and its gradient (see :class:`Model`).

        Args:
            params: ``w`` (n_features,) and ``b`` (1,).
            X: (n, n_features) inputs.
            y: (n,) labels in {0, 1}.
            sample_weight: (n,) row weights; the loss is ``sum_i w_i * loss_i``.

        Returns:
            ``(loss_sum, {"w": ..., "b": ...})``.
        """
        X = as_input(X, self.dtype)
        weight = None if sample_weight is None else as_weights(sample_weight, self.dtype)
        z = self._scores(params, X)
        loss = logistic_loss_(z, y, weight)
        return self._finish(loss, params, X, z, weight)

    def predict(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return (n,) int64 labels: 1 where the logit is positive, else 0.

        Example:
            >>> import numpy as np
            >>> params = {"w": np.array([1.0], np.float32), "b": np.zeros(1, np.float32)}
            >>> LogisticRegression(1).predict(params, np.array([[-2.0], [3.0]])).tolist()
            [0, 1]
        """
        z = self._scores(params, as_input(X, self.dtype))
        return (z > 0).astype(np.int64)

    def predict_proba(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return (n, 2) probabilities ``[P(y=0), P(y=1)]`` in ``dtype``.

        Example:
            >>> import numpy as np
            >>> params = {"w": np.zeros(1, np.float32), "b": np.zeros(1, np.float32)}
            >>> LogisticRegression(1).predict_proba(params, np.zeros((1, 1))).tolist()
            [[0.5, 0.5]]
        """
        z = self._scores(params, as_input(X, self.dtype))
        sigmoid_(z)
        proba = np.empty((z.shape[0], 2), dtype=z.dtype)
        proba[:, 1] = z
        np.subtract(1, z, out=proba[:, 0])
        return proba
