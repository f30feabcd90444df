"""Training modes: how a step's shard tasks are scheduled and their results applied.

Each mode is a small strategy of its own module: it says how many parameter and gradient
slots it needs, and its ``run_epoch`` (an async generator) drives the batches of one epoch
and yields a :class:`StepEvent` per step. The trainer knows nothing of how a mode
schedules work; a mode knows nothing of epochs' bookkeeping, validation or callbacks.

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

from asynctrain._config import MODE_OPTIONS, TrainConfig
from asynctrain._engine._async import AsyncMode
from asynctrain._engine._local import LocalMode, LocalOptState
from asynctrain._engine._ssp import SSPMode
from asynctrain._engine._step import Mode, StepContext, run_shard, split_indices
from asynctrain._engine._sync import SyncMode

__all__ = [
    "MODES",
    "AsyncMode",
    "LocalMode",
    "LocalOptState",
    "Mode",
    "SSPMode",
    "StepContext",
    "SyncMode",
    "make_mode",
    "run_shard",
    "split_indices",
]

MODES: dict[str, type[SyncMode | LocalMode | SSPMode | AsyncMode]] = {
    "sync": SyncMode,
    "local": LocalMode,
    "ssp": SSPMode,
    "async": AsyncMode,
}


def make_mode(config: TrainConfig) -> Mode:
    """The mode ``config.mode`` names, with the mode-specific options set in ``config``.

    Example:
        >>> make_mode(TrainConfig(mode="ssp", staleness=1))
        SSPMode(staleness=1)
    """
    options = {name: getattr(config, name) for name in MODE_OPTIONS[config.mode]}
    mode: Mode = MODES[config.mode](**options)
    return mode
