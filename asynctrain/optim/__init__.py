"""Optimizers as composable ``(init, update)`` gradient transformations, after optax.

An optimizer is a :class:`GradientTransformation`; building blocks (:func:`scale_by_adam`,
:func:`trace`, :func:`clip_by_global_norm`, ...) compose with :func:`chain`, and the
aliases (:func:`sgd`, :func:`adam`, ...) are short chains of them. Learning rates may be
constants or schedules (:func:`cosine_decay`, :func:`linear_warmup`, ...); :func:`get`
builds an alias from its name (``get("adam", 1e-2)``), for settings given as text. ``update``
works in place on the gradients and the state to avoid allocating per step.

Example:
    >>> import numpy as np
    >>> from asynctrain.optim import adam, apply_updates
    >>> params = {"w": np.zeros(3, dtype=np.float32)}
    >>> opt = adam(1e-2)
    >>> state = opt.init(params)
    >>> grads = {"w": np.ones(3, dtype=np.float32)}
    >>> updates, state = opt.update(grads, state, params)
    >>> params = apply_updates(params, updates)
"""

from __future__ import annotations

from asynctrain.optim._alias import adagrad, adam, adamw, get, names, rmsprop, sgd
from asynctrain.optim._base import (
    EmptyState,
    GradientTransformation,
    LearningRate,
    OptState,
    Schedule,
    apply_updates,
    chain,
    global_norm,
)
from asynctrain.optim._moments import (
    ScaleByAdagradState,
    ScaleByAdamState,
    ScaleByRmsState,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_rms,
)
from asynctrain.optim._plateau import (
    PlateauRule,
    PlateauState,
    plateau_states,
    scale_by_plateau,
)
from asynctrain.optim._schedules import (
    constant_schedule,
    cosine_decay,
    linear_warmup,
    step_decay,
    warmup_cosine_decay,
)
from asynctrain.optim._transforms import (
    ScaleByScheduleState,
    TraceState,
    add_decayed_weights,
    clip_by_global_norm,
    scale,
    scale_by_learning_rate,
    trace,
)

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "LearningRate",
    "OptState",
    "PlateauRule",
    "PlateauState",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByScheduleState",
    "Schedule",
    "TraceState",
    "adagrad",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay",
    "get",
    "global_norm",
    "linear_warmup",
    "names",
    "plateau_states",
    "rmsprop",
    "scale",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_plateau",
    "scale_by_rms",
    "sgd",
    "step_decay",
    "trace",
    "warmup_cosine_decay",
]
