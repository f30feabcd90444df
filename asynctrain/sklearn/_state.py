"""Resuming training from plain arrays: what lets ``partial_fit`` keep no live trainer.

Between ``partial_fit`` calls an estimator holds only its parameters and its optimizer
state (NamedTuples of arrays and numbers). Each call starts a fresh
:class:`~asynctrain.Trainer` from them through the public seams: a model whose ``init``
returns the saved parameters and an optimizer whose ``init`` returns the saved state.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._types import Grads, Params
from asynctrain.models import Model
from asynctrain.optim import GradientTransformation, OptState


class Resumed:
    """``model``, starting from ``params`` instead of its own initialisation.

    ``n_classes`` is what the trainer's data check sees: ``partial_fit`` passes None,
    since a batch may hold a single class (its labels were checked against ``classes_``
    already), which that check refuses for classifiers. Pickling gives the plain
    ``model``: workers of a process backend only need its loss and gradient, never the
    starting parameters.
    """

    supports_sample_weight = True  # the wrapped models are asynctrain's own

    def __init__(self, model: Model, params: Params, *, n_classes: int | None) -> None:
        self.model = model
        self.params = params
        self._n_classes = n_classes

    @property
    def n_features(self) -> int:
        """The wrapped model's input width."""
        return self.model.n_features

    @property
    def n_classes(self) -> int | None:
        """The class count the trainer checks labels against; see the class docstring."""
        return self._n_classes

    @property
    def accepts_sparse(self) -> bool:
        """Whether the wrapped model computes on scipy.sparse CSR input as it is."""
        return bool(getattr(self.model, "accepts_sparse", False))

    @property
    def dtype(self) -> np.dtype[Any]:
        """The wrapped model's compute dtype."""
        return self.model.dtype

    def init(self, rng: np.random.Generator) -> Params:
        """Copies of the saved parameters (``rng`` is not used)."""
        del rng
        return {key: np.array(value, dtype=self.model.dtype) for key, value in self.params.items()}

    def loss_and_grad(
        self,
        params: Params,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        sample_weight: npt.NDArray[Any] | None = None,
    ) -> tuple[float, Grads]:
        """The wrapped model's summed (weighted) loss and gradient."""
        if sample_weight is None:
            return self.model.loss_and_grad(params, X, y)
        return self.model.loss_and_grad(params, X, y, sample_weight=sample_weight)  # type: ignore[call-arg]

    def predict(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The wrapped model's predictions."""
        return self.model.predict(params, X)

    def __reduce__(self) -> tuple[Any, tuple[Model]]:
        return copy.copy, (self.model,)


def resumed_optimizer(optimizer: GradientTransformation, state: OptState) -> GradientTransformation:
    """``optimizer`` whose ``init`` returns a copy of ``state`` (updates run in place)."""
    return GradientTransformation(lambda params: copy.deepcopy(state), optimizer.update)


def same_structure(a: Any, b: Any) -> bool:
    """True if two parameter or optimizer-state trees have the same layout.

    Arrays match by shape, dicts by keys, tuples (NamedTuples by type) item by item;
    other leaves (step counts) always match.
    """
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same_structure(a[k], b[k]) for k in a)
        )
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same_structure(x, y) for x, y in zip(a, b, strict=True))
        )
    return True
