"""Async mode: every gradient applied the moment it arrives (Downpour SGD), no barrier."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import numpy as np
import numpy.typing as npt

from asynctrain._engine._step import StepContext, batches_of, run_shard
from asynctrain._engine._tasks import raise_unwrapped
from asynctrain._engine._work import ShardResult, ShardTask
from asynctrain._events import StepEvent


class SlotPool:
    """Which parameter slot holds the newest version, and which slots are being read.

    A task pins the slot of the version it reads until its result is taken; a new
    version goes to a slot nobody reads, so a straggler's parameters are never
    overwritten under it however many versions pass (``lanes + 2`` slots always leave one
    free: at most ``lanes`` pinned, plus the newest).

    Example:
        >>> pool = SlotPool(3, current=0)
        >>> pool.pin(), pool.free()
        (0, 1)
    """

    def __init__(self, slots: int, *, current: int) -> None:
        self.readers = [0] * slots
        self.current = current

    def pin(self) -> int:
        """Pin and return the slot of the newest version."""
        self.readers[self.current] += 1
        return self.current

    def unpin(self, slot: int) -> None:
        """A reader of ``slot`` is done."""
        self.readers[slot] -= 1

    def free(self) -> int:
        """A slot that neither holds the newest version nor is being read."""
        return next(s for s, n in enumerate(self.readers) if n == 0 and s != self.current)


class Async:
    """Asynchronous updates (Downpour SGD, Dean et al. 2012): no barrier at all.

    ``shards`` lanes run at once, each computing the gradient of a whole batch on the
    newest parameters it can get. Each gradient is applied the moment it comes off the
    asyncio.Queue, on whatever version is current by then, and its lane starts the next
    batch at once. An optimizer step still averages ``batch_size`` samples (learning rates
    carry over from sync), but a gradient may be many versions stale: a slow lane never
    holds the others up. Each epoch ends with a drain (before validation).

    Not deterministic: which version a gradient meets depends on timing (on the inline
    backend the order is fixed, but nowhere else). Use sync, local or ssp to reproduce
    bits.

    Example:
        >>> Async().param_slots(4)
        6
    """

    name = "async"

    @property
    def settings(self) -> dict[str, int]:
        """The mode's options: none."""
        return {}

    def param_slots(self, shards: int) -> int:
        """One slot per lane in flight, plus the newest version, plus the one written."""
        return shards + 2

    def grad_slots(self, shards: int) -> int:
        """One gradient slot per lane."""
        return shards

    async def run_epoch(
        self, ctx: StepContext, epoch: int, order: npt.NDArray[np.int64], start_batch: int
    ) -> AsyncGenerator[StepEvent, None]:
        """Run the epoch's remaining batches, applying each gradient as it arrives."""
        pending = iter(batches_of(order, ctx.batch_size, start_batch))
        pool = SlotPool(ctx.params.slots, current=ctx.updater.state.version % ctx.params.slots)
        queue: asyncio.Queue[ShardResult] = asyncio.Queue()
        pinned: dict[int, int] = {}  # lane -> the parameter slot its task reads
        try:
            async with asyncio.TaskGroup() as group:

                def launch(lane: int) -> None:
                    indices = next(pending, None)
                    if indices is not None:
                        state, pinned[lane] = ctx.updater.state, pool.pin()
                        task = ShardTask(
                            state.step,
                            lane,
                            state.version,
                            pinned[lane],
                            lane,
                            indices,
                            seed=ctx.seed,
                        )
                        group.create_task(run_shard(ctx, task, queue))

                for lane in range(ctx.shards):
                    launch(lane)
                while pinned:
                    result = await queue.get()
                    pool.unpin(pinned.pop(result.shard))
                    event = await self._apply(ctx, epoch, pool, result)
                    launch(result.shard)
                    yield event
        except BaseExceptionGroup as eg:
            raise_unwrapped(eg)
        await self._settle(ctx, pool)

    async def _apply(
        self, ctx: StepContext, epoch: int, pool: SlotPool, result: ShardResult
    ) -> StepEvent:
        """Apply one lane's gradient to the newest version, publishing to a free slot."""
        before = ctx.updater.state.version
        slot = pool.free()
        stats = await ctx.updater.apply([result], ctx.grads, ctx.params, slot=slot)
        if ctx.updater.state.version != before:  # not skipped by nonfinite="skip"
            pool.current = slot
        return ctx.event(epoch, stats, staleness=before - result.version)

    async def _settle(self, ctx: StepContext, pool: SlotPool) -> None:
        """Move the newest version to slot ``version % slots``, where the trainer reads it."""
        state = ctx.updater.state
        home = state.version % ctx.params.slots
        if pool.current != home:
            await ctx.updater.call(ctx.params.write, home, state.params)

    def __repr__(self) -> str:
        return "Async()"
