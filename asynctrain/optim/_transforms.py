"""Stateless and momentum building blocks; each writes its result into ``grads``.

Every ``update`` here follows the in-place contract of
:class:`~asynctrain.optim.GradientTransformation`: it overwrites the arrays of ``grads``
(and of its state) and returns the ``grads`` dict as the updates.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from asynctrain._checks import check_bool, check_float
from asynctrain._exceptions import ConfigError
from asynctrain._types import Array, Grads, Params
from asynctrain.optim._base import (
    EmptyState,
    GradientTransformation,
    LearningRate,
    Schedule,
    _call_label,
    _labelled,
    check_same_shapes,
    checked_buffers,
    global_norm,
)
from asynctrain.optim._flat import constants, flat_or_values, flat_zeros
from asynctrain.optim._validate import (
    check_floating,
    check_fraction,
    check_learning_rate,
    check_positive,
    scheduled_value,
)


class TraceState(NamedTuple):
    """State of :func:`trace`: the momentum buffer of each parameter."""

    trace: dict[str, Array]


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_learning_rate` with a schedule: steps taken so far."""

    count: int  # type: ignore[assignment]  # shadows tuple.count, as in optax


def full_like(params: Params, value: float = 0.0) -> dict[str, Array]:
    """Return a fresh array filled with ``value`` per parameter (same shape and dtype);
    views of one buffer when they can be (:func:`~asynctrain.optim._flat.flat_zeros`)."""
    check_floating(params)
    return flat_zeros(params, value)


def _empty_init(params: Params) -> EmptyState:
    return EmptyState()


def scale(factor: float) -> GradientTransformation:
    """Multiply the gradients by a constant ``factor``.

    Args:
        factor: any finite real number.

    Returns:
        A GradientTransformation with state :class:`EmptyState`.

    Raises:
        ConfigTypeError: ``factor`` is not a real number (or is a bool).
        ConfigError: ``factor`` is NaN or infinite.

    Example:
        >>> import numpy as np
        >>> scale(-2.0).update({"w": np.array([1.0])}, EmptyState())[0]["w"].tolist()
        [-2.0]
    """
    factor = check_float("factor", factor, minimum=-np.inf)
    update = functools.partial(_scale_update, factor)
    return _labelled(_call_label("scale", factor), GradientTransformation(_empty_init, update))


def _scale_update(
    factor: float, grads: Grads, state: EmptyState, params: Params | None = None
) -> tuple[Grads, EmptyState]:
    for g in flat_or_values(grads):
        np.multiply(g, constants(g.dtype, factor)[0], out=g)  # the bits of the float, sooner
    return grads, state


def scale_by_learning_rate(learning_rate: LearningRate) -> GradientTransformation:
    """Multiply the gradients by ``-learning_rate(count)``, turning them into a descent step.

    Args:
        learning_rate: a constant ``>= 0`` or a schedule (step count -> value).

    Returns:
        A GradientTransformation; its state is :class:`EmptyState` for a constant and
        :class:`ScaleByScheduleState` (the step count) for a schedule.

    Raises:
        ConfigTypeError: ``learning_rate`` is a bool or neither a number nor callable.
        ConfigError: ``learning_rate`` is negative or non-finite; or a schedule's value
            is, at the step where that happens (including step 0, checked at once).

    Example:
        >>> import numpy as np
        >>> opt = scale_by_learning_rate(0.1)
        >>> opt.update({"w": np.array([2.0])}, opt.init({}))[0]["w"].tolist()
        [-0.2]
    """
    lr = check_learning_rate(learning_rate)
    label = _call_label("scale_by_learning_rate", lr)
    if not callable(lr):
        return _labelled(label, scale(-lr))
    update = functools.partial(_scheduled_update, lr)
    return _labelled(label, GradientTransformation(_schedule_init, update))


def _schedule_init(params: Params) -> ScaleByScheduleState:
    return ScaleByScheduleState(count=0)


def _scheduled_update(
    schedule: Schedule, grads: Grads, state: ScaleByScheduleState, params: Params | None = None
) -> tuple[Grads, ScaleByScheduleState]:
    factor = -scheduled_value(schedule, state.count)
    for g in flat_or_values(grads):
        np.multiply(g, factor, out=g)
    return grads, ScaleByScheduleState(state.count + 1)


def trace(decay: float, *, nesterov: bool = False) -> GradientTransformation:
    """Momentum: keep ``t = decay * t + g`` and return ``t`` (or ``g + decay * t``).

    Args:
        decay: the momentum coefficient, in ``[0, 1)``.
        nesterov: return the Nesterov look-ahead ``g + decay * t`` instead of ``t``
            (this costs one temporary array per parameter per step).

    Returns:
        A GradientTransformation with state :class:`TraceState` (zeros at init).

    Raises:
        ConfigTypeError: ``decay`` is not a real number or ``nesterov`` not a bool.
        ConfigError: ``decay`` is outside ``[0, 1)``.

    Example:
        >>> import numpy as np
        >>> opt = trace(0.9)
        >>> state = opt.init({"w": np.zeros(1)})
        >>> for _ in range(2):
        ...     updates, state = opt.update({"w": np.ones(1)}, state)
        >>> updates["w"].tolist()
        [1.9]
    """
    decay = check_fraction("decay", decay)
    nesterov = check_bool("nesterov", nesterov)
    update = functools.partial(_trace_update, decay, nesterov)
    label = _call_label("trace", decay, nesterov=nesterov)
    return _labelled(label, GradientTransformation(_trace_init, update))


def _trace_init(params: Params) -> TraceState:
    return TraceState(trace=full_like(params))


def _trace_update(
    decay: float, nesterov: bool, grads: Grads, state: TraceState, params: Params | None = None
) -> tuple[Grads, TraceState]:
    for g, t in checked_buffers("gradient", grads, state.trace):
        np.multiply(t, decay, out=t)
        np.add(t, g, out=t)
        if nesterov:
            g += decay * t
        else:
            np.copyto(g, t)
    return grads, state


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """Add ``weight_decay * params`` to the gradients (decoupled weight decay).

    Placed before :func:`scale_by_learning_rate` in a chain, as in :func:`adamw`, the
    decay is scaled by the learning rate but not by the adaptive denominators. Costs one
    temporary array per parameter per step (the parameters are never modified).

    Args:
        weight_decay: a coefficient ``>= 0``.

    Returns:
        A GradientTransformation with state :class:`EmptyState`; its ``update`` needs
        ``params``.

    Raises:
        ConfigTypeError: ``weight_decay`` is not a real number (or is a bool).
        ConfigError: ``weight_decay`` is negative or non-finite; or, at update,
            ``params`` is missing.

    Example:
        >>> import numpy as np
        >>> params = {"w": np.array([2.0])}
        >>> add_decayed_weights(0.5).update({"w": np.array([1.0])}, EmptyState(), params)[0]
        {'w': array([2.])}
    """
    weight_decay = check_float("weight_decay", weight_decay)
    update = functools.partial(_decay_update, weight_decay)
    label = _call_label("add_decayed_weights", weight_decay)
    return _labelled(label, GradientTransformation(_empty_init, update))


def _decay_update(
    weight_decay: float, grads: Grads, state: EmptyState, params: Params | None = None
) -> tuple[Grads, EmptyState]:
    if params is None:
        raise ConfigError(
            "add_decayed_weights needs the parameters: call update(grads, state, params)"
        )
    check_same_shapes("gradient", grads, params)
    if weight_decay:
        for key, g in grads.items():
            g += weight_decay * params[key]
    return grads, state


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scale all gradients together so that their :func:`global_norm` is at most ``max_norm``.

    Gradients whose global norm is already ``<= max_norm`` are left untouched.

    Args:
        max_norm: the bound, ``> 0``.

    Returns:
        A GradientTransformation with state :class:`EmptyState`.

    Raises:
        ConfigTypeError: ``max_norm`` is not a real number (or is a bool).
        ConfigError: ``max_norm`` is ``<= 0`` or non-finite.

    Example:
        >>> import numpy as np
        >>> clipped, _ = clip_by_global_norm(1.0).update({"w": np.array([3.0, 4.0])}, ())
        >>> clipped["w"].tolist()
        [0.6000000000000001, 0.8]
    """
    max_norm = check_positive("max_norm", max_norm)
    update = functools.partial(_clip_update, max_norm)
    label = _call_label("clip_by_global_norm", max_norm)
    return _labelled(label, GradientTransformation(_empty_init, update))


def _clip_update(
    max_norm: float, grads: Grads, state: EmptyState, params: Params | None = None
) -> tuple[Grads, EmptyState]:
    norm = global_norm(grads)
    if norm > max_norm:
        factor = max_norm / norm
        for g in grads.values():
            np.multiply(g, factor, out=g)
    return grads, state
