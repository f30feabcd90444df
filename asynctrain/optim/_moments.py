"""Adaptive building blocks that keep running moments of the gradients: Adam, RMS, Adagrad.

Each ``update`` rewrites ``grads`` and its moment buffers in place (see the contract on
:class:`~asynctrain.optim.GradientTransformation`). Adam allocates nothing per step;
RMS and Adagrad need one temporary per parameter, because the gradient is still needed
after its square has been accumulated and numpy has no fused multiply-add.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from asynctrain._checks import check_float
from asynctrain._types import Array, Grads, Params
from asynctrain.optim._base import GradientTransformation, _call_label, _labelled, checked_buffers
from asynctrain.optim._flat import constants
from asynctrain.optim._transforms import full_like
from asynctrain.optim._validate import check_eps, check_fraction, check_positive


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`: steps taken, first and second moments."""

    count: int  # type: ignore[assignment]  # shadows tuple.count, as in optax
    mu: dict[str, Array]
    nu: dict[str, Array]


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`: the running mean of squared gradients."""

    nu: dict[str, Array]


class ScaleByAdagradState(NamedTuple):
    """State of :func:`scale_by_adagrad`: the running sum of squared gradients."""

    sum_of_squares: dict[str, Array]


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Rescale by Adam's bias-corrected moments: ``m_hat / (sqrt(v_hat) + eps)``.

    With ``t`` the 1-based step, ``m = b1*m + (1-b1)*g``, ``v = b2*v + (1-b2)*g**2``,
    ``m_hat = m / (1 - b1**t)`` and ``v_hat = v / (1 - b2**t)`` (Kingma & Ba, 2015).

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the second moment, in ``[0, 1)``.
        eps: added to the denominator, ``> 0``.

    Returns:
        A GradientTransformation with state :class:`ScaleByAdamState` (zeros, count 0).

    Raises:
        ConfigTypeError: an argument is not a real number (or is a bool).
        ConfigError: ``b1`` or ``b2`` is outside ``[0, 1)``, or ``eps <= 0``; at
            ``init``, ``eps`` is below the smallest normal number of the parameters'
            dtype (float16: 6.1e-05), where a zero gradient's update was NaN.

    Example:
        >>> import numpy as np
        >>> opt = scale_by_adam()
        >>> state = opt.init({"w": np.zeros(2)})
        >>> opt.update({"w": np.array([3.0, -0.5])}, state)[0]["w"].round(6).tolist()
        [1.0, -1.0]
    """
    b1 = check_fraction("b1", b1)
    b2 = check_fraction("b2", b2)
    eps = check_positive("eps", eps)
    init = functools.partial(_adam_init, eps)
    update = functools.partial(_adam_update, b1, b2, eps)
    label = _call_label("scale_by_adam", b1=b1, b2=b2, eps=eps)
    return _labelled(label, GradientTransformation(init, update))


def _adam_init(eps: float, params: Params) -> ScaleByAdamState:
    state = ScaleByAdamState(count=0, mu=full_like(params), nu=full_like(params))
    check_eps("scale_by_adam: adam, adamw", eps, params, under_root=False)
    return state


def _adam_update(
    b1: float,
    b2: float,
    eps: float,
    grads: Grads,
    state: ScaleByAdamState,
    params: Params | None = None,
) -> tuple[Grads, ScaleByAdamState]:
    blocks = checked_buffers("gradient", grads, state.mu, state.nu)
    count = state.count + 1
    correction1, correction2 = 1.0 - b1**count, 1.0 - b2**count
    # g is scaled by (1 - b1) for the first moment; this turns its square into (1-b2)*g**2.
    square_factor = (1.0 - b2) / (1.0 - b1) ** 2
    for g, mu, nu in blocks:
        # 0-d operands of the buffer's dtype: the bits of Python floats, in less time.
        dtype = g.dtype
        k1, k1_rest, k_square, k2, k_eps = constants(dtype, b1, 1.0 - b1, square_factor, b2, eps)
        c1, c2 = np.array(correction1, dtype), np.array(correction2, dtype)
        np.multiply(mu, k1, out=mu)
        np.multiply(g, k1_rest, out=g)
        np.add(mu, g, out=mu)
        np.square(g, out=g)
        np.multiply(g, k_square, out=g)
        np.multiply(nu, k2, out=nu)
        np.add(nu, g, out=nu)
        np.divide(nu, c2, out=g)
        np.sqrt(g, out=g)
        np.add(g, k_eps, out=g)
        np.divide(mu, g, out=g)
        np.divide(g, c1, out=g)
    # Built directly: _replace leaves one tuple per step on CPython's free list.
    return grads, ScaleByAdamState(count, state.mu, state.nu)


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8) -> GradientTransformation:
    """Rescale by the root of a running mean of squared gradients: ``g / sqrt(v + eps)``.

    ``v = decay*v + (1-decay)*g**2``, starting from zeros. As in optax, ``eps`` is added
    inside the square root (PyTorch adds it outside).

    Args:
        decay: decay of the running mean, in ``[0, 1)``.
        eps: added under the square root, ``> 0``.

    Returns:
        A GradientTransformation with state :class:`ScaleByRmsState`.

    Raises:
        ConfigTypeError: an argument is not a real number (or is a bool).
        ConfigError: ``decay`` is outside ``[0, 1)`` or ``eps <= 0``; at ``init``,
            ``eps`` rounds to 0 in the parameters' dtype (float16: below 3e-08).

    Example:
        >>> import numpy as np
        >>> opt = scale_by_rms(decay=0.75)
        >>> state = opt.init({"w": np.zeros(1)})
        >>> opt.update({"w": np.array([-2.0])}, state)[0]["w"].round(6).tolist()
        [-2.0]
    """
    decay = check_fraction("decay", decay)
    eps = check_positive("eps", eps)
    init = functools.partial(_rms_init, eps)
    update = functools.partial(_rms_update, decay, eps)
    label = _call_label("scale_by_rms", decay=decay, eps=eps)
    return _labelled(label, GradientTransformation(init, update))


def _rms_init(eps: float, params: Params) -> ScaleByRmsState:
    state = ScaleByRmsState(nu=full_like(params))
    check_eps("scale_by_rms: rmsprop", eps, params, under_root=True)
    return state


def _rms_update(
    decay: float, eps: float, grads: Grads, state: ScaleByRmsState, params: Params | None = None
) -> tuple[Grads, ScaleByRmsState]:
    for g, nu in checked_buffers("gradient", grads, state.nu):
        scratch = np.square(g, out=np.empty_like(g))  # out=: a 0-d g stays an array
        np.multiply(scratch, 1.0 - decay, out=scratch)
        np.multiply(nu, decay, out=nu)
        np.add(nu, scratch, out=nu)
        _divide_by_root(g, nu, eps, scratch)
    return grads, state


def scale_by_adagrad(
    initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> GradientTransformation:
    """Rescale by the root of the running sum of squared gradients: ``g / sqrt(s + eps)``.

    ``s = s + g**2``, starting from ``initial_accumulator_value`` (Duchi et al., 2011;
    optax's ``scale_by_rss``).

    Args:
        initial_accumulator_value: the starting value of ``s``, ``>= 0``.
        eps: added under the square root, ``> 0``.

    Returns:
        A GradientTransformation with state :class:`ScaleByAdagradState`.

    Raises:
        ConfigTypeError: an argument is not a real number (or is a bool).
        ConfigError: ``initial_accumulator_value < 0`` or ``eps <= 0``; at ``init``,
            ``eps`` rounds to 0 in the parameters' dtype (float16: below 3e-08).

    Example:
        >>> import numpy as np
        >>> opt = scale_by_adagrad(initial_accumulator_value=0.0)
        >>> state = opt.init({"w": np.zeros(1)})
        >>> opt.update({"w": np.array([-3.0])}, state)[0]["w"].round(6).tolist()
        [-1.0]
    """
    initial = check_float("initial_accumulator_value", initial_accumulator_value)
    eps = check_positive("eps", eps)
    init = functools.partial(_adagrad_init, initial, eps)
    update = functools.partial(_adagrad_update, eps)
    label = _call_label("scale_by_adagrad", initial_accumulator_value=initial, eps=eps)
    return _labelled(label, GradientTransformation(init, update))


def _adagrad_init(initial: float, eps: float, params: Params) -> ScaleByAdagradState:
    state = ScaleByAdagradState(sum_of_squares=full_like(params, initial))
    check_eps("scale_by_adagrad: adagrad", eps, params, under_root=True)
    return state


def _adagrad_update(
    eps: float, grads: Grads, state: ScaleByAdagradState, params: Params | None = None
) -> tuple[Grads, ScaleByAdagradState]:
    for g, total in checked_buffers("gradient", grads, state.sum_of_squares):
        scratch = np.square(g, out=np.empty_like(g))  # out=: a 0-d g stays an array
        np.add(total, scratch, out=total)
        _divide_by_root(g, total, eps, scratch)
    return grads, state


def _divide_by_root(g: Array, v: Array, eps: float, scratch: Array) -> None:
    """Set ``g = g / sqrt(v + eps)`` in place, using ``scratch`` (shaped like ``g``)."""
    np.add(v, eps, out=scratch)
    np.sqrt(scratch, out=scratch)
    np.divide(g, scratch, out=g)
