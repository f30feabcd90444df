"""Linear estimators: logistic (binary and multinomial) and least-squares regression."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._types import Params
from asynctrain.models import LinearRegression, LogisticRegression, Model, SoftmaxRegression
from asynctrain.models._common import sigmoid_, softmax_
from asynctrain.sklearn._kinds import AsyncClassifier, AsyncRegressor
from asynctrain.sklearn._params import (
    CLASS_WEIGHT,
    LINEAR_ALPHA,
    LinearParams,
    hyperparameters,
    param,
)


@hyperparameters
class AsyncLogisticRegression(LinearParams, AsyncClassifier):
    """Logistic regression trained by asynctrain: binary, or multinomial for 3+ classes.

    Two classes train :class:`asynctrain.models.LogisticRegression`; more train
    :class:`asynctrain.models.SoftmaxRegression`. ``coef_`` and ``intercept_`` have the
    shapes of scikit-learn's ``LogisticRegression``: (1, n_features) and (1,) for two
    classes, (n_classes, n_features) and (n_classes,) otherwise.
    {args}{fitted}        classes_: the class labels, sorted.
        coef_, intercept_: the weights, as described above.

    Example:
        >>> from sklearn.datasets import load_breast_cancer
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import StandardScaler
        >>> X, y = load_breast_cancer(return_X_y=True)
        >>> clf = make_pipeline(StandardScaler(), AsyncLogisticRegression(random_state=0))
        >>> clf.fit(X, y).score(X, y) > 0.97
        True
    """

    class_weight: Any = param(default=None, doc=CLASS_WEIGHT)

    _auto_steps = 10

    @property
    def coef_(self) -> npt.NDArray[Any]:
        """Weights: (1, n_features) for two classes, else (n_classes, n_features)."""
        params = self.params_
        coef: npt.NDArray[Any] = params["w"][None, :] if "w" in params else params["W"].T
        return coef

    @property
    def intercept_(self) -> npt.NDArray[Any]:
        """Intercepts: (1,) for two classes, else (n_classes,)."""
        intercept: npt.NDArray[Any] = self.params_["b"]
        return intercept

    def decision_function(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """Logits: (n_samples,) for two classes (positive means ``classes_[1]``), else
        (n_samples, n_classes)."""
        return self._predicted(_scores, X)

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """The most probable class of each row, from ``classes_``."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
        labels: npt.NDArray[Any] = self.classes_[index]
        return labels

    def predict_proba(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        return self._predicted(_probabilities, X)

    def _build_model(self, attrs: dict[str, Any], batch_size: int) -> Model:
        n_features, n_classes = attrs["n_features_in_"], len(attrs["classes_"])
        if n_classes == 2:
            return LogisticRegression(n_features, l2=self.alpha, dtype=self.dtype)
        return SoftmaxRegression(n_features, n_classes, l2=self.alpha, dtype=self.dtype)


@hyperparameters
class AsyncLinearRegression(LinearParams, AsyncRegressor):
    """Least-squares linear regression trained by asynctrain (optionally L2-penalised).

    Trains :class:`asynctrain.models.LinearRegression` on the mean squared error.
    ``coef_`` has shape (n_features,) and ``intercept_`` is a float, as in
    scikit-learn's ``LinearRegression``. Targets are standardised for training (any units
    of ``y`` work with one learning rate); standardise the features too
    (``StandardScaler``; for scipy.sparse ``X``, ``MaxAbsScaler``, which does not centre
    and so keeps it sparse) for a gradient method to converge quickly.
    {args}{fitted}        coef_, intercept_: the weights, as described above.
        target_mean_, target_scale_: the standardisation of the targets for training.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(500, 3))
        >>> y = X @ [1.0, -2.0, 0.5] + 3.0
        >>> reg = AsyncLinearRegression(random_state=0).fit(X, y)
        >>> np.round(reg.coef_, 1).tolist(), round(reg.intercept_, 1), reg.score(X, y) > 0.999
        ([1.0, -2.0, 0.5], 3.0, True)
    """

    _auto_steps = 10
    alpha: float = param(default=0.0, doc=LINEAR_ALPHA)

    @property
    def coef_(self) -> npt.NDArray[Any]:
        """Weights, shape (n_features,)."""
        coef: npt.NDArray[Any] = self.params_["w"]
        return coef

    @property
    def intercept_(self) -> float:
        """The intercept."""
        return float(self.params_["b"][0])

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """Predicted values, shape (n_samples,)."""
        return self._predicted(_scores, X)

    def _output_keys(self, params: Params) -> tuple[str, str]:
        return "w", "b"

    def _build_model(self, attrs: dict[str, Any], batch_size: int) -> Model:
        return LinearRegression(attrs["n_features_in_"], l2=self.alpha, dtype=self.dtype)


def _scores(X: npt.NDArray[Any], params: Params) -> npt.NDArray[Any]:
    """``X @ w + b`` (one column: (n,)) or ``X @ W + b`` (several: (n, k))."""
    scores: npt.NDArray[Any] = X @ params["w" if "w" in params else "W"] + params["b"]
    return scores


def _probabilities(X: npt.NDArray[Any], params: Params) -> npt.NDArray[Any]:
    """Class probabilities of the logits: a sigmoid for one column, else a softmax."""
    scores = _scores(X, params)
    if scores.ndim == 1:
        positive = sigmoid_(scores)  # the model's: the same probabilities as its own
        return np.column_stack([1 - positive, positive])
    softmax_(scores)
    return scores
