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
