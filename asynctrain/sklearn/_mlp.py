"""Multi-layer perceptrons: a classifier and a (multi-output) regressor."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_float
from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain._types import Params
from asynctrain.models import MLP, Model
from asynctrain.sklearn._kinds import AsyncClassifier, AsyncRegressor
from asynctrain.sklearn._params import CLASS_WEIGHT, MLPParams, hyperparameters, param


class _MLP(MLPParams):
    """Hyper-parameters, the network and fitted views shared by the two MLP estimators."""

    params_: dict[str, npt.NDArray[Any]]
    model_: MLP

    def _sizes(self, n_features: int, n_outputs: int) -> tuple[int, ...]:
        hidden = self.hidden_layer_sizes
        if isinstance(hidden, int | np.integer):
            hidden = (hidden,)
        elif isinstance(hidden, np.ndarray) and hidden.ndim == 1:  # array-like, as in sklearn
            hidden = tuple(hidden.tolist())
        if not isinstance(hidden, Sequence) or isinstance(hidden, str):
            raise ConfigTypeError(
                f"hidden_layer_sizes must be a tuple of layer widths such as (100,), got "
                f"{self.hidden_layer_sizes!r}"
            )
        for width in hidden:  # named here: the network's own check names its ``sizes``
            if isinstance(width, bool) or not isinstance(width, int | np.integer):
                raise ConfigTypeError(
                    f"hidden_layer_sizes must be integer widths such as (100,), got "
                    f"{self.hidden_layer_sizes!r}"
                )
            if width < 1:
                raise ConfigError(
                    f"hidden_layer_sizes must be widths >= 1, got {self.hidden_layer_sizes!r}"
                )
        return (n_features, *hidden, n_outputs)

    def _init_params(self, model: Model, rng: np.random.Generator) -> Params:
        """scikit-learn's MLP initialisation: weights and biases of a layer uniform in
        ``±sqrt(6 / (fan_in + fan_out))`` (on small data it learns faster than He's)."""
        params: Params = {}
        sizes = cast(MLP, model).sizes
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            params[f"W{i}"] = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(model.dtype)
            params[f"b{i}"] = rng.uniform(-bound, bound, fan_out).astype(model.dtype)
        return params

    def _mlp(self, sizes: tuple[int, ...], task: str, batch_size: int) -> Model:
        # scikit-learn's MLPs add 0.5 * alpha * ||W||^2 / batch_size to a batch's mean loss.
        l2 = check_float("alpha", self.alpha) / batch_size
        return MLP(sizes, activation=self.activation, task=task, l2=l2, dtype=self.dtype)

    @property
    def coefs_(self) -> list[npt.NDArray[Any]]:
        """Weight matrices, layer by layer: ``coefs_[i]`` is (width i, width i+1)."""
        return [self.params_[f"W{i}"] for i in range(len(self.params_) // 2)]

    @property
    def intercepts_(self) -> list[npt.NDArray[Any]]:
        """Bias vectors, layer by layer."""
        return [self.params_[f"b{i}"] for i in range(len(self.params_) // 2)]

    def _network(self, dtype: np.dtype[Any]) -> MLP:
        """The trained network, computing in ``dtype`` (that of the input to predict)."""
        model: MLP = self.model_
        return MLP(
            model.sizes,
            activation=model.activation,
            initializer=model.initializer,
            task=model.task,
            dtype=dtype,
        )


@hyperparameters
class AsyncMLPClassifier(_MLP, AsyncClassifier):
    """A multi-layer perceptron classifier trained by asynctrain (softmax output).

    Trains :class:`asynctrain.models.MLP` with ``task="classification"`` on the
    cross-entropy; two classes use a two-unit softmax. Defaults follow scikit-learn's
    ``MLPClassifier`` (one hidden layer of 100 relu units, Adam at 1e-3, batches of
    ``min(200, n)``, ``alpha=1e-4``, up to 200 epochs).
    {args}{fitted}        classes_: the class labels, sorted.
        coefs_, intercepts_: the weights and biases of each layer.

    Example:
        >>> from sklearn.datasets import load_digits
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import StandardScaler
        >>> X, y = load_digits(return_X_y=True)
        >>> clf = make_pipeline(StandardScaler(), AsyncMLPClassifier(random_state=0))
        >>> clf.fit(X[:1000], y[:1000]).score(X[1000:], y[1000:]) > 0.9
        True
    """

    class_weight: Any = param(default=None, doc=CLASS_WEIGHT)

    def predict_proba(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        return self._predicted(self._proba, X)

    def _proba(self, X: npt.NDArray[Any], params: Params) -> npt.NDArray[Any]:
        proba: npt.NDArray[Any] = self._network(X.dtype).predict_proba(params, X)
        return proba

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """The most probable class of each row, from ``classes_``."""
        index = self.predict_proba(X).argmax(axis=1)
        labels: npt.NDArray[Any] = self.classes_[index]
        return labels

    def _build_model(self, attrs: dict[str, Any], batch_size: int) -> Model:
        sizes = self._sizes(attrs["n_features_in_"], len(attrs["classes_"]))
        return self._mlp(sizes, "classification", batch_size)


@hyperparameters
class AsyncMLPRegressor(_MLP, AsyncRegressor):
    """A multi-layer perceptron regressor trained by asynctrain (linear output).

    Trains :class:`asynctrain.models.MLP` with ``task="regression"`` on the mean squared
    error; ``y`` may have several columns (one output unit each). Defaults follow
    scikit-learn's ``MLPRegressor``.
    {args}{fitted}        n_outputs_: number of targets per row.
        target_mean_, target_scale_: the standardisation of the targets for training.
        coefs_, intercepts_: the weights and biases of each layer.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).uniform(-2, 2, size=(1000, 1))
        >>> reg = AsyncMLPRegressor((32,), learning_rate=1e-2, random_state=0)
        >>> reg.fit(X, np.sin(X[:, 0])).score(X, np.sin(X[:, 0])) > 0.95
        True
    """

    _multi_output = True

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """Predictions: (n_samples,) for one target, else (n_samples, n_outputs_)."""
        return self._predicted(self._values, X)

    def _values(self, X: npt.NDArray[Any], params: Params) -> npt.NDArray[Any]:
        prediction: npt.NDArray[Any] = self._network(X.dtype).predict(params, X)
        return prediction

    def _output_keys(self, params: Params) -> tuple[str, str]:
        last = len(params) // 2 - 1
        return f"W{last}", f"b{last}"

    def _build_model(self, attrs: dict[str, Any], batch_size: int) -> Model:
        sizes = self._sizes(attrs["n_features_in_"], attrs["n_outputs_"])
        return self._mlp(sizes, "regression", batch_size)
