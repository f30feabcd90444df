"""Learning-rate schedules: pure functions from the step count (0, 1, ...) to a value.

Any of them can be passed wherever a learning rate goes; the optimizer keeps the step
count in its state and evaluates the schedule once per step. Each is a
:func:`functools.partial` of a module-level function, so it pickles.
"""

from __future__ import annotations

import functools
import math

from asynctrain._checks import check_float, check_int
from asynctrain._exceptions import ConfigTypeError
from asynctrain.optim._base import Schedule, _call_label, _labelled_fn


def constant_schedule(value: float) -> Schedule:
    """Return a schedule that is ``value`` at every step.

    Args:
        value: a learning rate ``>= 0``.

    Returns:
        A :data:`Schedule`.

    Raises:
        ConfigTypeError: ``value`` is not a real number (or is a bool).
        ConfigError: ``value`` is negative or non-finite.

    Example:
        >>> constant_schedule(0.1)(1000)
        0.1
    """
    value = check_float("value", value)
    schedule = functools.partial(_constant, value)
    return _labelled_fn(_call_label("constant_schedule", value), schedule)


def _constant(value: float, step: int) -> float:
    return value


def step_decay(init_value: float, *, every: int, factor: float) -> Schedule:
    """Return a schedule that multiplies ``init_value`` by ``factor`` every ``every`` steps.

    The value at step ``s`` is ``init_value * factor ** (s // every)``.

    Args:
        init_value: the value for the first ``every`` steps, ``>= 0``.
        every: the period in steps, an integer ``>= 1``.
        factor: the multiplier per period, in ``(0, 1]``.

    Returns:
        A :data:`Schedule`.

    Raises:
        ConfigTypeError: an argument has the wrong type (``every=2.5``, a bool, ...).
        ConfigError: an argument is out of range.

    Example:
        >>> schedule = step_decay(1.0, every=10, factor=0.5)
        >>> [schedule(0), schedule(9), schedule(10), schedule(25)]
        [1.0, 1.0, 0.5, 0.25]
    """
    init_value = check_float("init_value", init_value)
    every = check_int("every", every)
    factor = check_float("factor", factor, inclusive=False, maximum=1.0)
    schedule = functools.partial(_step_decay, init_value, every, factor)
    label = _call_label("step_decay", init_value, every=every, factor=factor)
    return _labelled_fn(label, schedule)


def _step_decay(init_value: float, every: int, factor: float, step: int) -> float:
    return init_value * factor ** (max(step, 0) // every)


def cosine_decay(init_value: float, *, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Return a schedule that decays ``init_value`` along a half cosine to ``alpha * init_value``.

    The value at step ``s`` is ``init_value * ((1 - alpha) * c + alpha)`` with
    ``c = (1 + cos(pi * min(s, decay_steps) / decay_steps)) / 2``; it stays at
    ``alpha * init_value`` after ``decay_steps`` (Loshchilov & Hutter, 2017; optax).

    Args:
        init_value: the value at step 0, ``>= 0``.
        decay_steps: the length of the decay, an integer ``>= 1``.
        alpha: the final value as a fraction of ``init_value``, in ``[0, 1]``.

    Returns:
        A :data:`Schedule`.

    Raises:
        ConfigTypeError: an argument has the wrong type.
        ConfigError: an argument is out of range.

    Example:
        >>> schedule = cosine_decay(1.0, decay_steps=100, alpha=0.1)
        >>> [schedule(0), round(schedule(50), 6), schedule(100), schedule(500)]
        [1.0, 0.55, 0.1, 0.1]
    """
    init_value = check_float("init_value", init_value)
    decay_steps = check_int("decay_steps", decay_steps)
    alpha = check_float("alpha", alpha, maximum=1.0)
    schedule = functools.partial(_cosine_decay, init_value, decay_steps, alpha)
    label = _call_label("cosine_decay", init_value, decay_steps=decay_steps, alpha=alpha)
    return _labelled_fn(label, schedule)


def _cosine_decay(init_value: float, decay_steps: int, alpha: float, step: int) -> float:
    return init_value * ((1.0 - alpha) * _half_cosine(step, decay_steps) + alpha)


def linear_warmup(
    peak_value: float,
    *,
    warmup_steps: int,
    init_value: float = 0.0,
    then: Schedule | None = None,
) -> Schedule:
    """Return a schedule that ramps linearly to ``peak_value``, then holds it or hands over.

    For ``s < warmup_steps`` the value is
    ``init_value + (peak_value - init_value) * s / warmup_steps``; from then on it is
    ``peak_value``, or ``then(s - warmup_steps)`` if ``then`` is given (so ``then``
    counts its steps from 0 at the end of the warm-up).

    Args:
        peak_value: the value reached at ``warmup_steps``, ``>= 0``.
        warmup_steps: the length of the ramp, an integer ``>= 1``.
        init_value: the value at step 0, ``>= 0``.
        then: the schedule to follow after the warm-up, or None to hold ``peak_value``.

    Returns:
        A :data:`Schedule`.

    Raises:
        ConfigTypeError: an argument has the wrong type (``then`` not callable, ...).
        ConfigError: an argument is out of range.

    Example:
        >>> schedule = linear_warmup(1.0, warmup_steps=4)
        >>> [schedule(0), schedule(2), schedule(4), schedule(100)]
        [0.0, 0.5, 1.0, 1.0]
        >>> linear_warmup(1.0, warmup_steps=4, then=cosine_decay(1.0, decay_steps=10))(14)
        0.0
    """
    peak_value = check_float("peak_value", peak_value)
    warmup_steps = check_int("warmup_steps", warmup_steps)
    init_value = check_float("init_value", init_value)
    if then is not None and not callable(then):
        raise ConfigTypeError(f"then must be a schedule (step -> value) or None, got {then!r}")
    schedule = functools.partial(_linear_warmup, peak_value, warmup_steps, init_value, then)
    label = _call_label(
        "linear_warmup", peak_value, warmup_steps=warmup_steps, init_value=init_value, then=then
    )
    return _labelled_fn(label, schedule)


def _linear_warmup(
    peak_value: float, warmup_steps: int, init_value: float, then: Schedule | None, step: int
) -> float:
    if step >= warmup_steps:
        return peak_value if then is None else then(step - warmup_steps)
    return init_value + (peak_value - init_value) * max(step, 0) / warmup_steps


def warmup_cosine_decay(
    peak_value: float,
    *,
    warmup_steps: int,
    decay_steps: int,
    init_value: float = 0.0,
    end_value: float = 0.0,
) -> Schedule:
    """Return a linear warm-up to ``peak_value`` followed by a half cosine to ``end_value``.

    As in optax, ``decay_steps`` is the length of the whole schedule, warm-up included:
    the cosine runs from step ``warmup_steps`` to step ``decay_steps`` and the value
    stays at ``end_value`` afterwards.

    Args:
        peak_value: the value at the end of the warm-up, ``>= 0``.
        warmup_steps: the length of the warm-up, an integer ``>= 1``.
        decay_steps: the total length, an integer ``> warmup_steps``.
        init_value: the value at step 0, ``>= 0``.
        end_value: the final value, ``>= 0``.

    Returns:
        A :data:`Schedule`.

    Raises:
        ConfigTypeError: an argument has the wrong type.
        ConfigError: an argument is out of range.

    Example:
        >>> schedule = warmup_cosine_decay(1.0, warmup_steps=10, decay_steps=110)
        >>> [schedule(0), schedule(5), schedule(10), round(schedule(60), 6), schedule(110)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    peak_value = check_float("peak_value", peak_value)
    warmup_steps = check_int("warmup_steps", warmup_steps)
    cosine_steps = check_int("decay_steps", decay_steps, minimum=warmup_steps + 1) - warmup_steps
    end_value = check_float("end_value", end_value)
    cosine = functools.partial(_cosine_to, peak_value, end_value, cosine_steps)
    schedule = linear_warmup(
        peak_value, warmup_steps=warmup_steps, init_value=init_value, then=cosine
    )
    label = _call_label(
        "warmup_cosine_decay",
        peak_value,
        warmup_steps=warmup_steps,
        decay_steps=decay_steps,
        init_value=init_value,
        end_value=end_value,
    )
    return _labelled_fn(label, schedule)


def _cosine_to(peak_value: float, end_value: float, steps: int, step: int) -> float:
    return end_value + (peak_value - end_value) * _half_cosine(step, steps)


def _half_cosine(step: int, steps: int) -> float:
    """Return ``(1 + cos(pi * t)) / 2`` for ``t = step / steps`` clipped to ``[0, 1]``."""
    progress = min(max(step, 0), steps) / steps
    return 0.5 * (1.0 + math.cos(math.pi * progress))
