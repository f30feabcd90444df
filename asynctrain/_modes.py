"""Training modes: how a step's shard tasks are scheduled and their results applied.

Each mode is a small strategy with one method, ``run_epoch``, an async generator that
drives the batches of one epoch and yields a :class:`StepEvent` per step. The trainer
knows nothing of how a mode schedules work; a mode knows nothing of epochs' bookkeeping,
validation or callbacks.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from asynctrain._events import StepEvent
from asynctrain._reduce import collect_in_order
from asynctrain._tasks import unwrap_group
from asynctrain._update import StepStats, Updater
from asynctrain._work import ShardResult, ShardTask, compute_shard
from asynctrain.backends import Backend, SharedArrays
from asynctrain.data import batch_bounds, shard_bounds


@dataclass
class StepContext:
    """What a mode needs to run steps: the work's ingredients, shared once per fit."""

    model: Any
    backend: Backend
    updater: Updater
    data: SharedArrays
    params: SharedArrays
    grads: SharedArrays
    batch_size: int
    shards: int
    started: float = field(default_factory=time.perf_counter)
    samples: int = 0

    def event(self, epoch: int, stats: StepStats, staleness: int = 0) -> StepEvent:
        """Record ``stats`` of the step just applied and describe it as an event."""
        self.samples += stats.n
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return StepEvent(
            step=self.updater.state.step - 1,
            epoch=epoch,
            loss=stats.loss,
            grad_norm=stats.grad_norm,
            samples=stats.n,
            samples_per_s=self.samples / elapsed,
            staleness=staleness,
            skipped=stats.skipped,
        )


class Mode(Protocol):
    """A training mode; see the module docstring."""

    name: str

    def run_epoch(
        self, ctx: StepContext, epoch: int, order: npt.NDArray[np.int64], start_batch: int
    ) -> AsyncIterator[StepEvent]:
        """Run batches ``start_batch..`` of the epoch whose sample order is ``order``."""
        ...


class SyncMode:
    """Lock-step data parallelism: every step waits for all shards, reduced in shard order.

    The default. Reproducible: the same seed and shard count give bit-identical parameters
    on every backend and worker count.
    """

    name = "sync"

    async def run_epoch(
        self, ctx: StepContext, epoch: int, order: npt.NDArray[np.int64], start_batch: int
    ) -> AsyncIterator[StepEvent]:
        """Run the epoch's remaining batches one lock-step at a time."""
        for start, stop in batch_bounds(len(order), ctx.batch_size)[start_batch:]:
            stats = await self.step(ctx, order[start:stop])
            yield ctx.event(epoch, stats)

    async def step(self, ctx: StepContext, indices: npt.NDArray[np.int64]) -> StepStats:
        """One step on ``indices``: all shards in flight together, then one update."""
        state = ctx.updater.state
        tasks = [
            ShardTask(state.step, s, state.version, state.version % ctx.params.slots, s, part)
            for s, part in enumerate(split_indices(indices, ctx.shards))
            if len(part)
        ]
        if getattr(ctx.backend, "inline", False):
            # Shards run on the loop one by one anyway: in order, with no tasks or queue.
            results = [await _call_shard(ctx, task) for task in tasks]
            return await ctx.updater.apply(results, ctx.grads, ctx.params)
        queue: asyncio.Queue[ShardResult] = asyncio.Queue()
        try:
            async with asyncio.TaskGroup() as group:
                for task in tasks:
                    group.create_task(run_shard(ctx, task, queue))
                results = await collect_in_order(queue, len(tasks))
        except BaseExceptionGroup as eg:
            raise unwrap_group(eg) from None
        return await ctx.updater.apply(results, ctx.grads, ctx.params)


async def run_shard(ctx: StepContext, task: ShardTask, queue: asyncio.Queue[ShardResult]) -> None:
    """Compute one shard on the backend and put its result on ``queue``."""
    queue.put_nowait(await _call_shard(ctx, task))


async def _call_shard(ctx: StepContext, task: ShardTask) -> ShardResult:
    return await ctx.backend.run(compute_shard, ctx.model, ctx.data, ctx.params, ctx.grads, task)


def split_indices(indices: npt.NDArray[np.int64], shards: int) -> list[npt.NDArray[np.int64]]:
    """Split a batch's indices into ``shards`` contiguous parts (trailing ones may be empty)."""
    return [indices[start:stop] for start, stop in _shard_bounds(len(indices), shards)]


@functools.lru_cache(maxsize=64)
def _shard_bounds(length: int, shards: int) -> tuple[tuple[int, int], ...]:
    # Every full batch has the same bounds: compute (and check) them once, not every step.
    return tuple(shard_bounds(length, shards))


MODES: dict[str, type[SyncMode]] = {"sync": SyncMode}
