"""One data-parallel step's plumbing, shared by every mode: the step context, the Mode
protocol, cutting a batch into shard tasks, running them on the backend, and taking their
results off the queue in shard order (the arithmetic of the reduction is the updater's)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from asynctrain._engine._placement import Placement
from asynctrain._engine._update import StepStats, Updater
from asynctrain._engine._work import Rows, ShardResult, ShardTask, compute_shard
from asynctrain._events import StepEvent
from asynctrain.backends import Backend, SharedArrays
from asynctrain.data import batch_bounds, shard_bounds


@dataclass
class StepContext:
    """What a mode needs to run steps: the work's ingredients, shared once per fit.

    ``params`` has ``mode.param_slots(shards)`` slots and ``grads``
    ``mode.grad_slots(shards)``; ``extra`` is a mode's own per-fit storage (e.g. the
    per-shard optimizer states of local mode).
    """

    model: Any
    backend: Backend
    updater: Updater
    data: SharedArrays
    params: SharedArrays
    grads: SharedArrays
    batch_size: int
    shards: int
    streaming: bool = False
    """Steps come from a stream: they leave the epoch position (TrainState.batch) alone."""
    seed: int = 0
    """The trainer's seed; tasks carry it so a model's randomness is keyed by
    ``(seed, step, shard)``."""
    shipped: Any = None
    """What tasks carry in the model's place (see :func:`._work.ship_model`); None: the model."""
    placement: Placement = field(default_factory=Placement)
    """Where sync steps run their shards (see :mod:`._placement`); learns during the fit."""
    started: float = field(default_factory=time.perf_counter)
    samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def carried(self) -> Any:
        """The model as tasks carry it: its shipped handle, or the model itself."""
        return self.model if self.shipped is None else self.shipped

    def event(
        self, epoch: int, stats: StepStats, staleness: int = 0, *, step: int | None = None
    ) -> StepEvent:
        """Record ``stats`` of a step just applied and describe it as an event.

        ``step`` defaults to the last step the updater committed.
        """
        self.samples += stats.n
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return StepEvent(
            step=self.updater.state.step - 1 if step is None else step,
            epoch=epoch,
            loss=stats.loss,
            grad_norm=stats.grad_norm,
            samples=stats.n,
            samples_per_s=self.samples / elapsed,
            staleness=staleness,
            skipped=stats.skipped,
        )


@runtime_checkable
class Mode(Protocol):
    """A training mode: how a step's shard tasks are scheduled and their results applied.

    Invariant: when ``run_epoch`` finishes, the current parameter version is readable
    in slot ``version % ctx.params.slots`` (the trainer evaluates it there).
    """

    name: str

    @property
    def settings(self) -> dict[str, int]:
        """The mode's options by the Trainer's names (``{"staleness": 2}``); checkpoints
        record them, and resuming checks them."""
        ...

    def param_slots(self, shards: int) -> int:
        """Parameter slots the mode needs, so a version being read is never overwritten."""
        ...

    def grad_slots(self, shards: int) -> int:
        """Gradient (or delta) slots the mode needs."""
        ...

    def run_epoch(
        self, ctx: StepContext, epoch: int, order: npt.NDArray[np.int64], start_batch: int
    ) -> AsyncGenerator[StepEvent, None]:
        """Run batches ``start_batch..`` of the epoch whose sample order is ``order``."""
        ...


def shard_tasks(
    ctx: StepContext, indices: Rows, *, step: int, grad_base: int = 0, data_slot: int = 0
) -> list[ShardTask]:
    """The shard tasks of one step on the current parameters; shard s reads rows of data
    slot ``data_slot`` and writes gradient slot ``grad_base + s``. Empty shards (a batch
    smaller than the shard count) get none.
    """
    state = ctx.updater.state
    slot = state.version % ctx.params.slots
    return [
        ShardTask(step, s, state.version, slot, grad_base + s, part, data_slot, ctx.seed)
        for s, part in enumerate(split_indices(indices, ctx.shards))
        if len(part)
    ]


async def compute(ctx: StepContext, task: ShardTask) -> ShardResult:
    """Compute one shard task on the backend (a step of one shard awaits this directly)."""
    return await ctx.backend.run(compute_shard, ctx.carried, ctx.data, ctx.params, ctx.grads, task)


async def run_shard(ctx: StepContext, task: ShardTask, queue: asyncio.Queue[ShardResult]) -> None:
    """Compute one shard on the backend and put its result on ``queue``."""
    queue.put_nowait(await compute(ctx, task))


def split_indices(indices: Rows, shards: int) -> list[Rows]:
    """Split a batch's rows into ``shards`` contiguous parts (trailing ones may be empty)."""
    return [indices[start:stop] for start, stop in _bounds(len(indices), shards)]


@functools.lru_cache(maxsize=64)
def _bounds(length: int, shards: int) -> tuple[tuple[int, int], ...]:
    # Every full batch of a fit has the same length: compute its shard bounds once.
    return tuple(shard_bounds(length, shards))


def batches_of(
    order: npt.NDArray[np.int64], batch_size: int, start_batch: int
) -> list[npt.NDArray[np.int64]]:
    """The sample indices of the epoch's batches from ``start_batch`` on."""
    return [order[a:b] for a, b in batch_bounds(len(order), batch_size)[start_batch:]]


async def collect_in_order(queue: asyncio.Queue[ShardResult], shards: int) -> list[ShardResult]:
    """Take ``shards`` results of one step off ``queue`` and return them in shard order.

    No array math happens here (this runs on the event loop); summing is
    :func:`sum_in_order`'s job on the updater.
    """
    slots: list[ShardResult | None] = [None] * shards
    for _ in range(shards):
        result = await queue.get()
        slots[result.shard] = result
    return [r for r in slots if r is not None]
