"""SSP mode: stale-synchronous parallel with a fixed staleness, applied in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_int
from asynctrain._config import DEFAULT_STALENESS
from asynctrain._engine._step import (
    StepContext,
    batches_of,
    collect_in_order,
    run_shard,
    shard_tasks,
)
from asynctrain._engine._tasks import raise_unwrapped
from asynctrain._engine._work import ShardResult
from asynctrain._events import StepEvent
from asynctrain._exceptions import ConfigError

MAX_STALENESS = 1024
"""The largest ``staleness``: every step in flight holds a parameter version and a
gradient per shard for the whole fit (``staleness + 2`` and ``(staleness + 1) * shards``
copies of the parameters), allocated when the fit starts; a million of them filled the
memory of the machine before the first step. The asynchronous mode lags without bound
at a copy per shard."""


class SSP:
    """Stale-synchronous parallel (Ho et al. 2013), made deterministic.

    Up to ``staleness + 1`` steps are in flight at once: step ``i`` computes its shards
    on the parameters as they were after step ``i - staleness - 1``, so the shards of
    the next ``staleness`` steps start while a slow shard still holds up step ``i``.
    Updates are applied strictly in (step, shard) order, and which parameter version each
    step reads is fixed by the step number, never by timing: the same seed gives the same
    bits on every backend and worker count. ``staleness=0`` is sync mode.

    The pipeline fills at the start of every epoch (the first steps read fresher
    parameters) and drains at its end, before validation.

    Args:
        staleness: versions between the parameters a step computes on and those its
            update is applied to (0 to :data:`MAX_STALENESS`).

    Raises:
        ConfigError: ``staleness`` is negative or above :data:`MAX_STALENESS`.

    Example:
        >>> SSP(staleness=2).param_slots(4)
        4
    """

    name = "ssp"

    def __init__(self, *, staleness: int = DEFAULT_STALENESS) -> None:
        self.staleness = check_int("staleness", staleness, minimum=0)
        if self.staleness > MAX_STALENESS:
            raise ConfigError(
                f"staleness={self.staleness} is more than the {MAX_STALENESS} steps ssp keeps "
                f"in flight at most: each holds its own copy of the parameters and a gradient "
                f"per shard for the whole fit; use mode='async' for updates that may lag "
                f"without bound"
            )

    @property
    def settings(self) -> dict[str, int]:
        """The mode's options as the Trainer and checkpoints name them."""
        return {"staleness": self.staleness}

    def param_slots(self, shards: int) -> int:
        """``staleness + 1`` versions may be read while the next one is written."""
        return self.staleness + 2

    def grad_slots(self, shards: int) -> int:
        """One gradient slot per (step in flight, shard)."""
        return (self.staleness + 1) * shards

    async def run_epoch(
        self, ctx: StepContext, epoch: int, order: npt.NDArray[np.int64], start_batch: int
    ) -> AsyncGenerator[StepEvent, None]:
        """Run the epoch's remaining batches with ``staleness + 1`` steps in flight."""
        batches = batches_of(order, ctx.batch_size, start_batch)
        window, first = self.staleness + 1, ctx.updater.state.step
        queues: list[asyncio.Queue[ShardResult]] = [asyncio.Queue() for _ in batches]
        try:
            async with asyncio.TaskGroup() as group:

                def launch(i: int) -> int:
                    grad_base = (i % window) * ctx.shards
                    tasks = shard_tasks(ctx, batches[i], step=first + i, grad_base=grad_base)
                    for task in tasks:
                        group.create_task(run_shard(ctx, task, queues[i]))
                    return len(tasks)

                counts = [launch(i) for i in range(min(window, len(batches)))]
                for i in range(len(batches)):
                    results = await collect_in_order(queues[i], counts[i])
                    staleness = ctx.updater.state.version - results[0].version
                    stats = await ctx.updater.apply(results, ctx.grads, ctx.params)
                    if i + window < len(batches):
                        counts.append(launch(i + window))
                    yield ctx.event(epoch, stats, staleness)
        except BaseExceptionGroup as eg:
            raise_unwrapped(eg)

    def __repr__(self) -> str:
        return f"SSP(staleness={self.staleness})"
