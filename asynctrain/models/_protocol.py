"""The model seam: what the trainer calls, and what any user model must provide."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigError
from asynctrain._types import Grads, Params


@runtime_checkable
class Model(Protocol):
    """A differentiable model as pure numpy functions of its parameters.

    The model object holds only configuration (it must be picklable); the parameters
    live in a separate ``Params`` dict that the trainer owns and updates. No method may
    modify ``params``, ``X`` or ``y``.

    **Summed loss.** ``loss_and_grad`` returns the loss *summed* over the rows of ``X``
    and the gradient of that sum, so results of shards add up and the trainer divides by
    the batch size once. An L2 penalty is charged per sample so the sums still add up::

        loss_sum = sum_i loss_i + n * 0.5 * l2 * sum(W ** 2)   # weight matrices only
        grad_W   = sum_i grad_i + n * l2 * W                   # biases get no penalty

    where ``n = len(X)``; dividing by ``n`` gives the usual mean loss plus
    ``0.5 * l2 * ||W||^2``.

    **Randomness (optional).** A model whose training loss draws random numbers (dropout)
    sets the class attribute ``uses_key = True`` and accepts a keyword ``key``:
    ``loss_and_grad(params, X, y, key=(seed, step, shard))``. The trainer passes the
    shard task's key, so the draws depend on the trainer's seed, the step and the shard
    only, never on the backend, the worker or timing. Called without ``key`` (evaluation,
    :func:`check_gradients`) the loss must be deterministic. Models without the attribute
    (every numpy model) are called exactly as above.

    **Sample weights (optional).** A model that can weigh its rows sets the class
    attribute ``supports_sample_weight = True`` and accepts a keyword ``sample_weight``:
    ``loss_and_grad(params, X, y, sample_weight=w)`` with ``w`` an (n,) array of weights
    ``>= 0`` in ``dtype``, returning ``sum_i w_i * loss_i`` and its gradient, with the L2
    penalty charged on ``sum_i w_i`` instead of ``n`` (a weight of k counts like k copies
    of the row). The trainer passes it only for data with weights (a Dataset's
    ``sample_weight``, an ``(X, y, w)`` triple, or ``class_weight``), and refuses such data
    before any work for a model without the attribute. Every built-in model and both
    bridges support it.

    **Row shape (optional).** A model whose rows are not flat feature vectors declares
    ``input_shape`` (e.g. ``(1, 8, 8)``); ``X`` is then ``(n, *input_shape)`` and
    ``n_features`` is the product of ``input_shape``.

    **Sparse input (optional).** A model that computes on a scipy.sparse CSR ``X`` as it
    is (without densifying it) sets the class attribute ``accepts_sparse = True``; the
    built-in linear, logistic, softmax and MLP models do. ``fit`` refuses sparse data for
    any other model before work starts.

    **dtype.** Parameters from ``init`` are in ``dtype`` (float32 by default); gradients
    have the keys, shapes and dtypes of the parameters passed in.

    Attributes:
        n_features: number of columns ``X`` must have.
        n_classes: ``None`` for regression; the number of classes for a classifier
            (2 for binary logistic regression).
        dtype: the compute dtype, float32 or float64.

    Example:
        >>> import numpy as np
        >>> from asynctrain.models import LinearRegression, Model
        >>> isinstance(LinearRegression(3), Model)
        True
    """

    @property
    def n_features(self) -> int:
        """Number of input features (columns of ``X``)."""
        ...

    @property
    def n_classes(self) -> int | None:
        """Number of classes, or ``None`` for a regression model."""
        ...

    @property
    def dtype(self) -> np.dtype[Any]:
        """Compute dtype of parameters and results (float32 or float64)."""
        ...

    def init(self, rng: np.random.Generator) -> Params:
        """Return fresh parameters in ``dtype``, drawn from ``rng`` where random.

        Args:
            rng: the only source of randomness, so a seed fixes the parameters.

        Returns:
            A new dict of arrays the caller owns.
        """
        ...

    def loss_and_grad(
        self, params: Params, X: npt.NDArray[Any], y: npt.NDArray[Any]
    ) -> tuple[float, Grads]:
        """Return the loss summed over the rows of ``X`` and its gradient.

        Args:
            params: parameters as returned by ``init`` (not modified).
            X: (n, n_features) inputs, ideally already in ``dtype`` (else copied).
            y: (n,) targets: int64 class labels or float values.

        Returns:
            ``(loss_sum, grads)``: a Python float (a numpy scalar or 0-d array is taken
            as ``float(loss_sum)``; an array with a shape is refused) and new arrays
            keyed like ``params``.
        """
        ...

    def predict(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return predicted values (regression) or int64 class labels (classifiers)."""
        ...


@runtime_checkable
class Classifier(Model, Protocol):
    """A :class:`Model` that also returns class probabilities.

    Example:
        >>> from asynctrain.models import Classifier, SoftmaxRegression
        >>> isinstance(SoftmaxRegression(4, 3), Classifier)
        True
    """

    def predict_proba(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return (n, n_classes) probabilities in ``dtype``; each row sums to 1.

        Binary models return two columns, ``P(y=0)`` and ``P(y=1)``.
        """
        ...


def supports_sample_weight(model: object) -> bool:
    """Whether ``model`` declares ``supports_sample_weight = True`` (see :class:`Model`)."""
    return getattr(model, "supports_sample_weight", False) is True


def loss_and_predict_of(model: Any) -> Callable[..., tuple[float, Any]] | None:
    """The model's ``loss_and_predict(params, X, y, *, sample_weight=None)``, if it has
    one that speaks for its ``loss_and_grad`` and ``predict``: the loss of the one and
    the predictions of the other from one forward pass, no gradient (the built-in
    :class:`~asynctrain.models.MLP`). Evaluation uses it; None otherwise, and also for a
    subclass that overrides ``loss_and_grad`` or ``predict`` but not it (its inherited
    ``loss_and_predict`` would not compute what the override does)."""
    method: Callable[..., tuple[float, Any]] | None = getattr(model, "loss_and_predict", None)
    kind: Any = type(model)  # (typeshed does not see a class as Hashable)
    if method is None or not _defined_together(kind):
        return None
    return method


@functools.lru_cache(maxsize=64)  # per model class, asked once per chunk evaluated
def _defined_together(kind: type) -> bool:
    def owner(name: str) -> type | None:
        return next((c for c in kind.__mro__ if name in vars(c)), None)

    return owner("loss_and_predict") is owner("loss_and_grad") is owner("predict")


def quiet_float_errors() -> np.errstate:
    """numpy's floating-point warnings (overflow, invalid, divide) off for a model call
    the trainer makes: what they would say, a non-finite loss or gradient, is the
    non-finite policy's to report (``nonfinite=``), the same on every backend. Left on,
    they were warnings of the caller's thread on the inline and thread backends (an
    exception under warnings-as-errors) and lines on a process worker's stderr.
    A model's own ``np.errstate`` inside its call still applies."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def shard_loss_and_grad(
    model: Any,
    params: Params,
    X: npt.NDArray[Any],
    y: npt.NDArray[Any],
    key: tuple[int, int, int],
    sample_weight: npt.NDArray[Any] | None = None,
) -> tuple[float, Grads]:
    """Call ``model.loss_and_grad`` for a shard task whose randomness ``key`` is
    ``(seed, step, shard)``; only a model with ``uses_key = True`` receives the key, and
    ``sample_weight`` is passed only when the data has weights (models without support
    were refused before the fit started)."""
    uses_key = getattr(model, "uses_key", False)
    with quiet_float_errors():
        if sample_weight is None:  # the common case: no options dict, no ** call
            if uses_key:
                result = model.loss_and_grad(params, X, y, key=key)
            else:
                result = model.loss_and_grad(params, X, y)
        elif uses_key:
            result = model.loss_and_grad(params, X, y, key=key, sample_weight=sample_weight)
        else:
            result = model.loss_and_grad(params, X, y, sample_weight=sample_weight)
    check_grads(model, params, result[1])
    return loss_value(model, result[0]), result[1]


def loss_value(model: Any, loss: Any, method: str = "loss_and_grad") -> float:
    """``loss`` as a Python float: a float as it is, a numpy scalar or a 0-d array (or any
    other scalar) by ``float()``, which keeps its value, so the bits are those of a float
    returned. A ConfigError names the fix for anything else: an array with a shape (even
    of one value, which numpy 2 no longer converts: a per-row loss of a one-row shard
    would pass for a sum), a string or None.
    """
    if type(loss) is float:  # the common case: one type test
        return loss
    shape = getattr(loss, "shape", ())
    problem = f"a loss of shape {tuple(shape)}" if shape != () else None
    if problem is None:
        try:
            return float(loss)
        except (TypeError, ValueError):
            problem = "a loss that is not a number"
    raise ConfigError(
        f"{type(model).__name__}.{method} returned {problem} ({type(loss).__name__}); "
        "return the loss summed over the rows as one number, a float: e.g. "
        "float(losses.sum()), or loss.item() for an array of one value"
    )


def check_grads(model: Any, params: Params, grads: Any) -> None:
    """Raise ConfigError unless ``grads`` has the keys and shapes of ``params``.

    Checked where every backend calls the model, so a bad gradient fails the same way
    everywhere: unchecked, the in-process backends summed a broadcastable one (shape
    ``(1,)`` for ``(8,)``) into a wrong result while the process backend refused it, and
    others failed deep in numpy (a ValueError about broadcasting, a bare KeyError).
    """
    # Every shard of every step asks: the usual case (a dict of arrays) costs two
    # attribute reads a parameter, not an ABC check and np.shape's dispatch (4 % of the
    # logreg reference's inline epoch, measured).
    mapping = type(grads) is dict or isinstance(grads, Mapping)
    bad = None
    if not mapping or grads.keys() != params.keys():
        keys = sorted(grads) if mapping else type(grads).__name__
        bad = f"keys {keys}, the parameters have {sorted(params)}"
    else:
        for name, value in params.items():
            grad = grads[name]
            shape = grad.shape if type(grad) is np.ndarray else np.shape(grad)
            if shape != value.shape:
                bad = f"{name!r} of shape {shape} for a parameter of {value.shape}"
                break
    if bad is not None:
        raise ConfigError(
            f"{type(model).__name__}.loss_and_grad returned a gradient with {bad}; return a "
            "dict of arrays keyed and shaped like the params it was given"
        )
