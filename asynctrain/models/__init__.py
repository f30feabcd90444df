"""Models as pure numpy functions: the Model protocol, built-in models, gradient checks,
and bridges to PyTorch (:class:`TorchModel`) and JAX (:class:`JaxModel`), whose
frameworks are imported only when a bridge is built.

Every model holds only its configuration (a frozen, picklable dataclass); parameters
are a plain ``dict[str, ndarray]`` created by ``model.init(rng)``. ``loss_and_grad``
returns the loss *summed* over the rows, so shard results add up.

Example:
    >>> import numpy as np
    >>> from asynctrain.models import LogisticRegression
    >>> model = LogisticRegression(3)
    >>> sorted(model.init(np.random.default_rng(0)))
    ['b', 'w']
"""

from __future__ import annotations

from asynctrain.models._gradcheck import GradientCheck, check_gradients
from asynctrain.models._jax import JaxModel
from asynctrain.models._linear import LinearRegression
from asynctrain.models._logistic import LogisticRegression
from asynctrain.models._mlp import MLP
from asynctrain.models._protocol import Classifier, Model
from asynctrain.models._softmax import SoftmaxRegression
from asynctrain.models._torch import TorchModel
from asynctrain.models._validate import check_data, check_inputs

__all__ = [
    "MLP",
    "Classifier",
    "GradientCheck",
    "JaxModel",
    "LinearRegression",
    "LogisticRegression",
    "Model",
    "SoftmaxRegression",
    "TorchModel",
    "check_data",
    "check_gradients",
    "check_inputs",
]
