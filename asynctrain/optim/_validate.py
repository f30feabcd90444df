"""Checks of optimizer hyper-parameters, on top of :mod:`asynctrain._checks`."""

from __future__ import annotations

import math

import numpy as np

from asynctrain._checks import check_float
from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain._types import Params
from asynctrain.optim._base import LearningRate, Schedule


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as a float in ``[0, 1)`` (a decay, momentum or beta).

    The range is checked here, not by :func:`check_float`, whose message would name the
    closed ``[0.0, 1.0]`` for a value below 0 or above 1.
    """
    result = check_float(name, value, minimum=-math.inf)  # a finite real number
    if not 0.0 <= result < 1.0:
        raise ConfigError(f"{name} must be in [0.0, 1.0), got {result}; pass e.g. 0.9")
    return result


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a finite float ``> 0`` (an epsilon or a norm bound)."""
    return check_float(name, value, inclusive=False)


def check_learning_rate(value: object, name: str = "learning_rate") -> LearningRate:
    """Return a valid constant learning rate (a float >= 0) or schedule.

    A schedule is called once at step 0 so that a broken one fails before training.
    """
    if callable(value):
        schedule: Schedule = value
        scheduled_value(schedule, 0, name)
        return schedule
    return check_float(name, value)


def scheduled_value(schedule: Schedule, step: int, name: str = "learning_rate") -> float:
    """Return ``schedule(step)``; raise ConfigError if it is negative or non-finite."""
    return check_float(f"{name} schedule value at step {step}", schedule(step))


def check_floating(params: Params) -> None:
    """Raise ConfigTypeError if a parameter is not a floating-point array."""
    for key, value in params.items():
        if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
            kind = getattr(value, "dtype", type(value).__name__)
            raise ConfigTypeError(
                f"parameter {key!r} must be a floating-point numpy array, got {kind}; "
                "convert it with np.asarray(value, dtype=np.float32)"
            )


def check_eps(transform: str, eps: float, params: Params, *, under_root: bool) -> None:
    """Raise ConfigError unless ``eps`` keeps its use in the parameters' dtype.

    ``eps`` guards a division by a root of the squared gradients, and is cast to the
    parameters' dtype (float16's smallest normal number is 6.1e-05). Under the root
    (RMS, Adagrad) it must not round to 0: a zero gradient gave 0/0 = NaN. Added to the
    root (Adam) it must be a normal number: one that rounds to 0 or to a subnormal left
    a zero gradient NaN and a tiny one (its square underflowing, not its moment) +-inf.
    In float32 and float64 only an eps below their smallest normal numbers (1.2e-38,
    2.2e-308) is refused, and only Adam's.
    """
    for dtype in {value.dtype for value in params.values()}:
        cast = float(np.array(eps, dtype))
        floor = float(np.finfo(dtype).tiny)
        if (cast == 0.0) if under_root else (cast < floor):
            raise ConfigError(
                f"eps={eps:g} ({transform}) is {cast:.3g} in {dtype}, so a zero or tiny "
                f"gradient would give a NaN or infinite update; pass an eps of at least "
                f"{floor:.2g} ({dtype}'s smallest normal number, e.g. eps=1e-4) for "
                f"{dtype} parameters, or keep the parameters in float32"
            )
