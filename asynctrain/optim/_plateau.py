"""A learning-rate scale held in the optimizer state, lowered when a metric plateaus.

:func:`scale_by_plateau` multiplies the updates by ``scale``, a value of its state, the
way optax's ``contrib.reduce_on_plateau`` does. The decision to lower it is taken
between steps by :meth:`PlateauRule.observe` (which :class:`~asynctrain.ReduceLROnPlateau`
calls after each epoch, on the trainer's update thread), from a monitored value. Because
the scale and the rule's bookkeeping (best value, epochs waited, cooldown) live in the
optimizer state, a checkpoint holds them, and a resumed run lowers the scale exactly
when the uninterrupted run would have.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from asynctrain._checks import check_float, check_int
from asynctrain._exceptions import ConfigError
from asynctrain._types import Array, Grads, Params
from asynctrain.optim._base import GradientTransformation, _labelled

# "No best yet" as a finite number: the updater refuses a step whose optimizer state holds
# a non-finite value, so infinity cannot stand in for it.
_NO_BEST = float(np.finfo(np.float64).max)


class PlateauState(NamedTuple):
    """State of :func:`scale_by_plateau`; each field is a 0-d array, changed in place.

    Attributes:
        scale: the factor every update is multiplied by (1 at init).
        best: the best monitored value so far, as "lower is better" (largest float at
            init).
        waited: epochs since the last improvement (or reduction).
        cooldown: epochs left during which no reduction happens.
    """

    scale: Array
    best: Array
    waited: Array
    cooldown: Array


def scale_by_plateau() -> GradientTransformation:
    """Multiply the updates by a scale held in the state, for
    :class:`~asynctrain.ReduceLROnPlateau` to lower between steps.

    Put it last in a chain, after the learning rate: ``chain(adam(1e-3),
    scale_by_plateau())`` steps by ``1e-3 * scale``. The scale starts at 1.

    Returns:
        A GradientTransformation with state :class:`PlateauState`.

    Example:
        >>> import numpy as np
        >>> from asynctrain.optim import chain, sgd
        >>> opt = chain(sgd(0.1), scale_by_plateau())
        >>> state = opt.init({"w": np.zeros(1)})
        >>> PlateauRule(factor=0.5, patience=1).observe(plateau_states(state), 1.0)
        1.0
        >>> PlateauRule(factor=0.5, patience=1).observe(plateau_states(state), 1.0)
        0.5
        >>> opt.update({"w": np.array([1.0])}, state)[0]["w"].tolist()
        [-0.05]
    """
    return _labelled("scale_by_plateau()", GradientTransformation(_plateau_init, _plateau_update))


def _plateau_init(params: Params) -> PlateauState:
    return PlateauState(
        scale=np.array(1.0),
        best=np.array(_NO_BEST),
        waited=np.array(0, dtype=np.int64),
        cooldown=np.array(0, dtype=np.int64),
    )


def _plateau_update(
    grads: Grads, state: PlateauState, params: Params | None = None
) -> tuple[Grads, PlateauState]:
    factor = float(state.scale)
    if factor != 1.0:
        for g in grads.values():
            np.multiply(g, factor, out=g)
    return grads, state


def plateau_states(opt_state: Any) -> list[PlateauState]:
    """Every :class:`PlateauState` in an optimizer state (a chain's, or nested ones).

    Example:
        >>> import numpy as np
        >>> from asynctrain.optim import adam, chain
        >>> len(plateau_states(chain(adam(1e-3), scale_by_plateau()).init({"w": np.zeros(2)})))
        1
    """
    if isinstance(opt_state, PlateauState):
        return [opt_state]
    found: list[PlateauState] = []
    children = opt_state.values() if isinstance(opt_state, dict) else opt_state
    if isinstance(opt_state, tuple | dict):
        for child in children:
            found += plateau_states(child)
    return found


class PlateauRule(NamedTuple):
    """When to lower the scale of :func:`scale_by_plateau`, and by how much.

    Attributes:
        factor: the scale is multiplied by this on a plateau, in ``(0, 1)``.
        patience: epochs without improvement before a reduction, >= 1.
        min_delta: smallest decrease of the value that counts as an improvement, >= 0.
        cooldown: epochs after a reduction during which no other happens, >= 0.
        min_scale: the scale never goes below this, in ``[0, 1]`` (the scale starts at
            1: a floor above it would raise the scale at the first "reduction").

    Example:
        >>> rule = PlateauRule(factor=0.1, patience=2, min_scale=1e-3)
    """

    factor: float = 0.1
    patience: int = 10
    min_delta: float = 0.0
    cooldown: int = 0
    min_scale: float = 0.0

    def checked(self) -> PlateauRule:
        """This rule, its values checked.

        Raises:
            ConfigError, ConfigTypeError: a value out of range, naming it.
        """
        factor = check_float("factor", self.factor, inclusive=False)
        if factor >= 1.0:
            raise ConfigError(f"factor must be below 1 to lower the scale, got {factor}")
        return PlateauRule(
            factor,
            check_int("patience", self.patience),
            check_float("min_delta", self.min_delta),
            check_int("cooldown", self.cooldown, minimum=0),
            check_float("min_scale", self.min_scale, maximum=1.0),
        )

    def observe(self, states: list[PlateauState], value: float) -> float:
        """Record one epoch's ``value`` (lower is better) in every state; return the scale.

        Changes the states' arrays in place: call it where updates run, between steps.
        """
        for state in states:
            self._observe(state, value)
        return float(states[0].scale) if states else 1.0

    def _observe(self, state: PlateauState, value: float) -> None:
        if value < float(state.best) - self.min_delta:
            state.best[...] = value
            state.waited[...] = 0
        else:
            state.waited[...] += 1
        if int(state.cooldown) > 0:
            state.cooldown[...] -= 1
            state.waited[...] = 0
        elif int(state.waited) >= self.patience:
            state.scale[...] = max(float(state.scale) * self.factor, self.min_scale)
            state.cooldown[...] = self.cooldown
            state.waited[...] = 0
