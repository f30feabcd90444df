"""Ready-made optimizers, each a short :func:`chain` of the building blocks."""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable
from inspect import signature
from typing import Any

from asynctrain._checks import check_bool
from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain.optim._base import (
    GradientTransformation,
    LearningRate,
    _call_label,
    _labelled,
    chain,
)
from asynctrain.optim._moments import scale_by_adagrad, scale_by_adam, scale_by_rms
from asynctrain.optim._transforms import add_decayed_weights, scale_by_learning_rate, trace
from asynctrain.optim._validate import check_fraction


def _alias_label(name: str, *args: object, **kwargs: object) -> str:
    """The label of an alias, every setting a number (all are floats but ``nesterov``)
    written as the float its building block took it as: ``adam(1)`` reads as
    ``adam(1.0)`` does, and ``np.int64(1)`` too. A checkpoint compares these labels, and
    equal settings must read the same. Called once the blocks have checked them."""

    def taken(value: object) -> object:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        return value  # a schedule, or nesterov

    return _call_label(name, *map(taken, args), **{k: taken(v) for k, v in kwargs.items()})


def sgd(
    learning_rate: LearningRate, *, momentum: float = 0.0, nesterov: bool = False
) -> GradientTransformation:
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    ``p -= lr * g``; with momentum, ``t = momentum*t + g`` and ``p -= lr * t`` (or
    ``p -= lr * (g + momentum*t)`` with ``nesterov=True``), as in PyTorch and optax.

    Args:
        learning_rate: a constant ``>= 0`` or a schedule.
        momentum: in ``[0, 1)``; 0 means no momentum buffer.
        nesterov: use Nesterov momentum.

    Returns:
        ``chain(trace(momentum, nesterov=...), scale_by_learning_rate(learning_rate))``,
        without the trace when ``momentum == 0``.

    Raises:
        ConfigTypeError: an argument has the wrong type (a bool learning rate, ...).
        ConfigError: an argument is out of range (see the building blocks), or
            ``nesterov=True`` without momentum (as PyTorch refuses it).

    Example:
        >>> sgd(0.1, momentum=0.9)
        <GradientTransformation sgd(0.1, momentum=0.9, nesterov=False)>
    """
    momentum = check_fraction("momentum", momentum)
    nesterov = check_bool("nesterov", nesterov)
    if nesterov and not momentum:  # it would be plain SGD, whatever the caller meant
        raise ConfigError(
            "nesterov=True needs a momentum > 0 (it looks ahead along the momentum), e.g. "
            "sgd(0.1, momentum=0.9, nesterov=True)"
        )
    momentum_part = [trace(momentum, nesterov=nesterov)] if momentum else []
    opt = chain(*momentum_part, scale_by_learning_rate(learning_rate))
    return _labelled(_alias_label("sgd", learning_rate, momentum=momentum, nesterov=nesterov), opt)


def adam(
    learning_rate: LearningRate = 1e-3, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    """Adam (Kingma & Ba, 2015): :func:`scale_by_adam`, then the learning rate.

    Args:
        learning_rate: a constant ``>= 0`` or a schedule.
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the second moment, in ``[0, 1)``.
        eps: added to the denominator, ``> 0``.

    Returns:
        ``chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(learning_rate))``.

    Raises:
        ConfigTypeError: an argument has the wrong type.
        ConfigError: an argument is out of range.

    Example:
        >>> adam(3e-4)
        <GradientTransformation adam(0.0003, b1=0.9, b2=0.999, eps=1e-08)>
    """
    opt = chain(scale_by_adam(b1, b2, eps), scale_by_learning_rate(learning_rate))
    return _labelled(_alias_label("adam", learning_rate, b1=b1, b2=b2, eps=eps), opt)


def adamw(
    learning_rate: LearningRate = 1e-3,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
) -> GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as in optax.

    The update is ``-lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)``: the decay
    is added after the Adam rescaling and before the learning rate. ``update`` needs
    ``params``.

    Args:
        learning_rate: a constant ``>= 0`` or a schedule.
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the second moment, in ``[0, 1)``.
        eps: added to the denominator, ``> 0``.
        weight_decay: a coefficient ``>= 0``.

    Returns:
        ``chain(scale_by_adam(...), add_decayed_weights(...), scale_by_learning_rate(...))``.

    Raises:
        ConfigTypeError: an argument has the wrong type.
        ConfigError: an argument is out of range.

    Example:
        >>> adamw(1e-3, weight_decay=0.01)
        <GradientTransformation adamw(0.001, b1=0.9, b2=0.999, eps=1e-08, weight_decay=0.01)>
    """
    opt = chain(
        scale_by_adam(b1, b2, eps),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )
    label = _alias_label("adamw", learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return _labelled(label, opt)


def adagrad(
    learning_rate: LearningRate = 0.01,
    *,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
) -> GradientTransformation:
    """Adagrad (Duchi et al., 2011): ``p -= lr * g / sqrt(s + eps)`` with ``s += g**2``.

    Args:
        learning_rate: a constant ``>= 0`` or a schedule.
        initial_accumulator_value: the starting value of ``s``, ``>= 0``.
        eps: added under the square root, ``> 0``.

    Returns:
        ``chain(scale_by_adagrad(...), scale_by_learning_rate(learning_rate))``.

    Raises:
        ConfigTypeError: an argument has the wrong type.
        ConfigError: an argument is out of range.

    Example:
        >>> adagrad(0.1)
        <GradientTransformation adagrad(0.1, initial_accumulator_value=0.1, eps=1e-07)>
    """
    opt = chain(
        scale_by_adagrad(initial_accumulator_value, eps), scale_by_learning_rate(learning_rate)
    )
    label = _alias_label(
        "adagrad", learning_rate, initial_accumulator_value=initial_accumulator_value, eps=eps
    )
    return _labelled(label, opt)


def rmsprop(
    learning_rate: LearningRate = 0.01,
    *,
    decay: float = 0.9,
    eps: float = 1e-8,
    momentum: float = 0.0,
) -> GradientTransformation:
    """RMSprop (Tieleman & Hinton, 2012): ``p -= lr * g / sqrt(v + eps)``, optional momentum.

    ``v = decay*v + (1-decay)*g**2``; ``eps`` sits inside the square root as in optax.
    With momentum, ``t = momentum*t + g / sqrt(v + eps)`` and ``p -= lr * t``: the
    buffer holds unscaled steps, so a learning-rate schedule acts at once (as in PyTorch).

    Args:
        learning_rate: a constant ``>= 0`` or a schedule.
        decay: decay of the running mean of squares, in ``[0, 1)``.
        eps: added under the square root, ``> 0``.
        momentum: in ``[0, 1)``; 0 means no momentum buffer.

    Returns:
        ``chain(scale_by_rms(decay, eps), [trace(momentum)], scale_by_learning_rate(lr))``.

    Raises:
        ConfigTypeError: an argument has the wrong type.
        ConfigError: an argument is out of range.

    Example:
        >>> rmsprop(0.01, momentum=0.9)
        <GradientTransformation rmsprop(0.01, decay=0.9, eps=1e-08, momentum=0.9)>
    """
    momentum = check_fraction("momentum", momentum)
    momentum_part = [trace(momentum)] if momentum else []
    opt = chain(scale_by_rms(decay, eps), *momentum_part, scale_by_learning_rate(learning_rate))
    label = _alias_label("rmsprop", learning_rate, decay=decay, eps=eps, momentum=momentum)
    return _labelled(label, opt)


_BY_NAME: dict[str, Callable[..., GradientTransformation]] = {
    "adagrad": adagrad,
    "adam": adam,
    "adamw": adamw,
    "rmsprop": rmsprop,
    "sgd": sgd,
}


def names() -> list[str]:
    """The optimizer names :func:`get` accepts, sorted.

    Example:
        >>> names()
        ['adagrad', 'adam', 'adamw', 'rmsprop', 'sgd']
    """
    return sorted(_BY_NAME)


def get(
    name: str, learning_rate: LearningRate | None = None, **options: Any
) -> GradientTransformation:
    """The optimizer registered as ``name``, built with ``learning_rate`` and ``options``.

    For settings given as text (a command line, a config file); in code, call the alias
    (``adam(1e-2)``) itself.

    Args:
        name: one of :func:`names` (``"adam"``, ``"sgd"``, ...), in any case
            (``"Adam"``); nothing else is stripped or guessed: ``" adam"`` is refused,
            its message suggesting the name meant.
        learning_rate: the learning rate; None: the alias' default (``sgd`` has none).
        options: the alias' keyword options (``momentum=0.9`` for ``sgd``, ...).

    Returns:
        ``alias(learning_rate, **options)``.

    Raises:
        ConfigTypeError: ``name`` is not a str, an option is unknown, or ``sgd`` is
            given no learning rate.
        ConfigError: ``name`` is not registered (the message lists the names), or an
            option is out of range.

    Example:
        >>> get("adam", 1e-2)
        <GradientTransformation adam(0.01, b1=0.9, b2=0.999, eps=1e-08)>
    """
    if not isinstance(name, str):
        raise ConfigTypeError(f"an optimizer name must be a str, got {name!r}")
    factory = _BY_NAME.get(name.lower())
    if factory is None:
        close = difflib.get_close_matches(name.strip().lower(), names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown optimizer {name!r}{hint}; the registered names are "
            f"{', '.join(names())}, or pass a GradientTransformation (e.g. "
            "asynctrain.optim.chain(...))"
        )
    args = () if learning_rate is None else (learning_rate,)
    try:
        signature(factory).bind(*args, **options)
    except TypeError as exc:
        raise ConfigTypeError(f"optimizer {name!r}: {exc}") from None
    return factory(*args, **options)


def as_optimizer(optimizer: object) -> GradientTransformation:
    """``optimizer`` itself, the alias a name stands for (``"adam"``), or ``adam()`` for
    None: what a Trainer accepts as its ``optimizer``.

    Raises:
        ConfigTypeError: neither a name nor an object with ``init`` and ``update``.
        ConfigError: an unknown name.
    """
    if optimizer is None:
        return adam()
    if isinstance(optimizer, str):
        return get(optimizer)
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise ConfigTypeError(
            f"optimizer must be a GradientTransformation (e.g. asynctrain.optim.adam(1e-3)) "
            f"or one of the names {', '.join(names())}, got {optimizer!r} "
            f"({type(optimizer).__name__})"
        )
    return optimizer  # type: ignore[return-value]  # an (init, update) pair, duck-typed
