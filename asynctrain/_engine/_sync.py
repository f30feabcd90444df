"""Sync mode: lock-step data parallelism, the default."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncGenerator

import numpy as np
import numpy.typing as npt

from asynctrain._engine._step import (
    StepContext,
    batches_of,
    collect_in_order,
    compute,
    contiguous,
    run_shard,
    shard_tasks,
)
from asynctrain._engine._tasks import gather_ordered, raise_unwrapped
from asynctrain._engine._update import StepStats
from asynctrain._engine._work import (
    Gathered,
    Indices,
    ShardGroup,
    ShardResult,
    ShardTask,
    compute_group,
)
from asynctrain._events import StepEvent


class Sync:
    """Lock-step data parallelism: every step waits for all shards, reduced in shard order.

    The default. Reproducible: the same seed and shard count give bit-identical parameters
    on every backend and worker count.

    Example:
        >>> Sync().param_slots(4)
        2
    """

    name = "sync"

    @property
    def settings(self) -> dict[str, int]:
        """The mode's options: none."""
        return {}

    def param_slots(self, shards: int) -> int:
        """Two: the version being read and the one being written (double buffering)."""
        return 2

    def grad_slots(self, shards: int) -> int:
        """One gradient slot per shard."""
        return shards

    async def run_epoch(
        self, ctx: StepContext, epoch: int, order: npt.NDArray[np.int64], start_batch: int
    ) -> AsyncGenerator[StepEvent, None]:
        """Run the epoch's remaining batches one lock-step at a time (with
        ``ctx.prefetch``, later steps' rows gathered ahead while steps compute)."""
        batches = batches_of(order, ctx.batch_size, start_batch)
        if ctx.prefetch is not None:
            ctx.prefetch.begin(batches)
        for i, indices in enumerate(batches):
            upcoming = batches[i + 1] if i + 1 < len(batches) else None
            stats = await self.step(ctx, indices, upcoming=upcoming)
            yield ctx.event(epoch, stats)

    async def step(
        self,
        ctx: StepContext,
        indices: Indices,
        *,
        data_slot: int = 0,
        upcoming: Indices | None = None,
    ) -> StepStats:
        """One step on rows ``indices`` of data slot ``data_slot``: all shards in flight
        together, then one update. With ``ctx.prefetch``, its rows may have been gathered
        while earlier steps computed, and it has later steps' gathered while it does.
        ``upcoming``: the next step's rows, if known (process workers gather them once
        they have replied: :class:`._work.KeptRows`)."""
        prefetch = ctx.prefetch
        gathered = None if prefetch is None else await prefetch.take(indices)
        step = ctx.updater.state.step
        tasks = shard_tasks(ctx, indices, step=step, data_slot=data_slot, gathered=gathered)

        turn_taken = False
        if ctx.backend.inline or ctx.partitions is not None:
            # Partitioned data: a task per shard, so each reads only its own partition
            # (and a cluster backend runs it where that partition is kept).
            if len(tasks) == 1:
                results = [await compute(ctx, tasks[0])]
            else:
                results = await _run_together(ctx, tasks)
        else:
            results = await _run_placed(ctx, tasks, upcoming)
            # Computed on the loop, the step has just given the loop its turn: its update
            # needs no second one in a row.
            turn_taken = ctx.placement.on_loop
        return await ctx.updater.apply(
            results,
            ctx.grads,
            ctx.params,
            advance_batch=not ctx.streaming,
            turn_taken=turn_taken,
        )

    def __repr__(self) -> str:
        return "Sync()"


async def _run_placed(
    ctx: StepContext, tasks: list[ShardTask], upcoming: Indices | None = None
) -> list[ShardResult]:
    """Run a step's shard tasks where the fit's placement puts them (see
    :class:`._step.Placement`): spread, grouped, or on the loop; their results in shard
    order. With ``ctx.prefetch``, later steps' rows are gathered meanwhile where the
    threads the shards compute on leave a core free (see :mod:`._prefetch`).

    Where the fit gathers ahead, a step of one task takes rows gathered ahead, and a step
    spread over a worker on every core gathers its own, once each runs as its choice
    does. A step that switches does not: the first step of one task after spread ones
    gathers its own rows (the spread steps left no core to gather them), and the first
    spread step after one of one task takes rows gathered for it. Its time is the
    switch's, not its choice's, so the placement does not compare it (its math still
    counts). Compared, every grouped step the placement tries between spread ones would
    pay a gather that the choice, once taken, does not.

    On a backend whose workers work after replying (``idle_work``: processes), each group
    carries its shards' rows of the ``upcoming`` step, which its worker gathers in the
    gap before its next task (:class:`._work.KeptRows`).
    """
    placement = ctx.placement
    local = getattr(ctx.backend, "local", False)
    k = placement.tasks(len(tasks), ctx.backend.workers, local=local)
    ahead = _ahead(ctx, tasks, upcoming) if k else None
    groups = [
        ShardGroup(
            part[0].step,
            part[0].shard,
            tuple(part),
            None if ahead is None else tuple(ahead[task.shard] for task in part),
        )
        for part in contiguous(tasks, k or 1)
    ]
    prefetch, spare = ctx.prefetch, False
    started = time.perf_counter()
    if prefetch is not None and prefetch.spare(k or 1):
        spare = True
        prefetch.ahead()
    if k == 0:  # too small to pay for a hand-off: computed here, as the inline backend would
        # (in a copy of the context, as a worker: the model's np.seterr stays in there)
        outcomes = [
            contextvars.copy_context().run(
                compute_group, ctx.model, ctx.data, ctx.params, ctx.grads, groups[0]
            )
        ]
        # and, as it does, through the loop once: a cancel requested while the shards
        # computed stops the step here, before its update is handed anywhere.
        await asyncio.sleep(0)
    else:
        outcomes = await gather_ordered(
            ctx.backend.run(compute_group, ctx.carried, ctx.data, ctx.params, ctx.grads, group)
            for group in groups
        )
    math = outcomes[0].seconds if len(outcomes) == 1 else None
    like_its_choice = prefetch is None or spare == isinstance(tasks[0].indices, Gathered)
    placement.record(k, len(tasks), time.perf_counter() - started, math=math, timed=like_its_choice)
    return [result for outcome in outcomes for result in outcome.results]


def _ahead(
    ctx: StepContext, tasks: list[ShardTask], upcoming: Indices | None
) -> list[Indices] | None:
    """The ``upcoming`` step's rows of each shard, for workers that gather them after
    replying; None where there is no such step, no such worker, or the step's shards
    are not indices into the fit's data (a stream's ranges, rows gathered here)."""
    if upcoming is None or not getattr(ctx.backend, "idle_work", False):
        return None
    if not isinstance(tasks[0].indices, np.ndarray):
        return None
    return ctx.shards_of(upcoming)


async def _run_together(ctx: StepContext, tasks: list[ShardTask]) -> list[ShardResult]:
    """Run every shard task of a step at once; their results in shard order."""
    queue: asyncio.Queue[ShardResult] = asyncio.Queue()
    try:
        async with asyncio.TaskGroup() as group:
            for task in tasks:
                group.create_task(run_shard(ctx, task, queue))
            return await collect_in_order(queue, len(tasks))
    except BaseExceptionGroup as eg:
        raise_unwrapped(eg)
