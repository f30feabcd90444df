"""Training modes: how a step's shard tasks are scheduled and their results applied.

Each mode is a small strategy object of its own module: it says how many parameter and
gradient slots it needs, and its ``run_epoch`` (an async generator) drives the batches of
one epoch and yields a :class:`StepEvent` per step. The trainer knows nothing of how a
mode schedules work; a mode knows nothing of epochs' bookkeeping, validation or callbacks.
The public names are in :mod:`asynctrain.modes`.

======  ==========================================================  =============
mode    what waits for what                                         deterministic
======  ==========================================================  =============
sync    every step waits for all its shards                         yes
local   shards take k steps alone, then their deltas are averaged   yes
ssp     step i computes on the parameters of step i - s - 1         yes
async   each gradient is applied the moment it arrives              no
======  ==========================================================  =============
"""

from __future__ import annotations

from collections.abc import Callable

from asynctrain._checks import check_choice
from asynctrain._config import MODE_OPTIONS
from asynctrain._engine._async import Async
from asynctrain._engine._local import Local, LocalOptState
from asynctrain._engine._ssp import SSP
from asynctrain._engine._step import Mode, StepContext, run_shard, split_indices
from asynctrain._engine._sync import Sync
from asynctrain._exceptions import ConfigError, ConfigTypeError

__all__ = [
    "MODES",
    "SSP",
    "Async",
    "Local",
    "LocalOptState",
    "Mode",
    "StepContext",
    "Sync",
    "make_mode",
    "run_shard",
    "split_indices",
]

MODES: dict[str, Callable[..., Mode]] = {"sync": Sync, "local": Local, "ssp": SSP, "async": Async}
"""Each mode name and the class of its objects."""
_PARAMETERS = {"local_steps": "steps"}
"""The Trainer's name of a mode option where the mode's constructor calls it otherwise."""


def make_mode(mode: str | Mode, **options: int | None) -> Mode:
    """The mode object for ``mode``: a name built with the Trainer's mode ``options``
    (``local_steps``, ``staleness``; None: the mode's default), or a mode object as is.

    Raises:
        ConfigError: an unknown name, or an option the mode does not take (naming the
            mode that does), or an option given beside a mode object.
        ConfigTypeError: ``mode`` is neither a name nor a mode object.

    Example:
        >>> make_mode("ssp", staleness=1)
        SSP(staleness=1)
        >>> make_mode(Local(steps=8))
        Local(steps=8)
    """
    given = {name: value for name, value in options.items() if value is not None}
    if not isinstance(mode, str):
        if not isinstance(mode, Mode):
            raise ConfigTypeError(
                f"mode must be a name ({', '.join(MODES)}) or a mode object such as "
                f"asynctrain.modes.Local(steps=8), got {mode!r}"
            )
        if given:
            option = next(iter(given))
            raise ConfigError(
                f"{option}={given[option]} was given beside the mode object {mode!r}; "
                "set it on the mode object instead"
            )
        return mode
    check_choice("mode", mode, tuple(MODES))
    for option, value in given.items():
        if option not in MODE_OPTIONS[mode]:
            owner = next(m for m, names in MODE_OPTIONS.items() if option in names)
            raise ConfigError(
                f"{option}={value} is not an option of mode={mode!r}; use "
                f"mode={owner!r} with it, or leave {option} out"
            )
    return MODES[mode](**{_PARAMETERS.get(name, name): value for name, value in given.items()})
