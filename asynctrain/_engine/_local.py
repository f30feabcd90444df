"""Local mode: each shard takes k optimizer steps on its own stream, then deltas are averaged."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._checks import INT64_MAX, check_int
from asynctrain._config import DEFAULT_LOCAL_STEPS
from asynctrain._engine._local_work import LocalResult, LocalTask, local_shard
from asynctrain._engine._step import StepContext, batches_of, split_indices
from asynctrain._engine._tasks import gather_ordered
from asynctrain._engine._update import (
    Problem,
    StepStats,
    TrainState,
    _first_bad_shard,
    _first_nonfinite,
    _nonfinite_state,
    mean_in_place,
    mean_loss,
    sum_in_order,
    zeros_like,
)
from asynctrain._events import StepEvent
from asynctrain._exceptions import NonFiniteError
from asynctrain._types import Grads
from asynctrain.backends import SharedArrays
from asynctrain.backends._base import readonly
from asynctrain.optim import apply_updates
from asynctrain.optim._tree import rebuild, skeleton, to_arrays


class LocalOptState(NamedTuple):
    """The optimizer state in local mode: one optimizer state per shard, in shard order."""

    shards: tuple[Any, ...]


class _Fit(NamedTuple):
    """What local mode shares once per fit: the shards' optimizer states and scratch."""

    skeleton: Any
    # Two slots per shard (None: stateless): ``committed[s]`` holds shard s's committed
    # optimizer state, the other (``s`` or ``shards + s``) takes the state a round's task
    # writes. A task never writes the slot it reads, so a task re-run after its worker
    # died (having written its new state, but not replied) starts from the committed
    # state again, and a refused or cancelled round leaves the committed states as they
    # were.
    states: SharedArrays | None
    scratch: Grads
    committed: list[int]

    def written(self, shard: int) -> int:
        """The slot a round's task of ``shard`` writes its new state to."""
        shards = len(self.committed)
        return shard + shards if self.committed[shard] == shard else shard


class Local:
    """Local SGD / model averaging (McMahan et al. 2017; PyTorch's post-local SGD).

    Every round covers ``steps`` batches: shard ``s`` starts from the current
    parameters and takes one optimizer step on its part of each batch (on the worker),
    then the shards' parameter deltas are averaged, weighted by samples (by their total
    sample weight, for weighted data) and summed in shard order, into one new version.
    One task per shard per round instead of per step.

    Optimizer state: each shard keeps its own state from round to round (momentum,
    Adam's moments, a schedule's step count), as in post-local SGD. They live in the
    :class:`~asynctrain.TrainState` as a :class:`LocalOptState`, committed with the
    parameters after every round, so a cancelled fit keeps a matching pair. The first
    round copies the trainer's optimizer state to every shard.

    Deterministic: the same seed gives the same bits on every backend and worker count.
    With ``steps=1`` and plain SGD it computes sync mode's update up to rounding
    (averaging ``n_s * ((p - lr * g_s / n_s) - p)`` instead of summing gradients).

    Steps and events count batches: a round of k batches adds k steps and yields k
    StepEvents (their ``grad_norm`` is NaN: no mean gradient is ever formed).

    Args:
        steps: optimizer steps each shard takes between averagings (>= 1); the
            Trainer's ``local_steps`` option.

    Example:
        >>> Local(steps=8).grad_slots(4)
        4
    """

    name = "local"

    def __init__(self, *, steps: int = DEFAULT_LOCAL_STEPS) -> None:
        self.steps = check_int("local_steps", steps, minimum=1, maximum=INT64_MAX)

    @property
    def settings(self) -> dict[str, int]:
        """The mode's options as the Trainer and checkpoints name them."""
        return {"local_steps": self.steps}

    def param_slots(self, shards: int) -> int:
        """Two: every round reads one version and writes the next."""
        return 2

    def grad_slots(self, shards: int) -> int:
        """One parameter-delta slot per shard."""
        return shards

    async def run_epoch(
        self, ctx: StepContext, epoch: int, order: npt.NDArray[np.int64], start_batch: int
    ) -> AsyncGenerator[StepEvent, None]:
        """Run the epoch's remaining batches in rounds of ``steps``."""
        fit = await self._fit(ctx)
        batches = batches_of(order, ctx.batch_size, start_batch)
        for first in range(0, len(batches), self.steps):
            step = ctx.updater.state.step
            in_round = batches[first : first + self.steps]
            results = await self._round(ctx, fit, in_round)
            all_stats = await ctx.updater.commit(_commit_round, results, ctx, fit, len(in_round))
            for j, stats in enumerate(all_stats):
                yield ctx.event(epoch, stats, step=step + j)

    async def _fit(self, ctx: StepContext) -> _Fit:
        """Give each shard its optimizer state in shared slots (once per fit)."""
        if "local" not in ctx.extra:
            await ctx.updater.commit(_per_shard, ctx.shards)
            per_shard: LocalOptState = ctx.updater.state.opt_state
            arrays = to_arrays(per_shard.shards[0])
            # Released with the fit's other shared arrays when it ends.
            share = ctx.backend.share if ctx.share is None else ctx.share
            states = await share(arrays, slots=2 * ctx.shards) if arrays else None
            fit = _Fit(
                skeleton(per_shard.shards[0]),
                states,
                zeros_like(ctx.updater.state.params),
                list(range(ctx.shards)),
            )
            await ctx.updater.call(_write_states, fit, per_shard)
            ctx.extra["local"] = fit
        result: _Fit = ctx.extra["local"]
        return result

    async def _round(
        self, ctx: StepContext, fit: _Fit, batches: list[npt.NDArray[np.int64]]
    ) -> list[LocalResult]:
        """Run every shard's part of a round on the backend; results in shard order."""
        state = ctx.updater.state
        slot = state.version % ctx.params.slots
        parts = [split_indices(batch, ctx.shards) for batch in batches]
        streams = [tuple(batch[s] for batch in parts) for s in range(ctx.shards)]
        tasks = [
            LocalTask(
                state.step,
                s,
                state.version,
                slot,
                s,
                tuple(ctx.rows_of(s, part) for part in own),
                fit.skeleton,
                ctx.seed,
                fit.committed[s],
                fit.written(s),
            )
            for s, own in enumerate(streams)
            if any(len(part) for part in own)
        ]
        optimizer = ctx.updater.optimizer
        return await gather_ordered(
            ctx.backend.run(
                local_shard,
                ctx.carried,
                optimizer,
                ctx.data_of(task.shard),
                ctx.params,
                ctx.grads,
                fit.states,
                task,
            )
            for task in tasks
        )

    def checkpoint_layout(self, opt_state: Any, shards: int) -> LocalOptState:
        """How this mode keeps ``opt_state``: one copy per shard (a template to load into)."""
        skel = skeleton(opt_state)
        return LocalOptState(tuple(rebuild(skel, to_arrays(opt_state)) for _ in range(shards)))

    def __repr__(self) -> str:
        return f"Local(steps={self.steps})"


def _per_shard(state: TrainState, shards: int) -> tuple[TrainState, None]:
    """Turn the trainer's optimizer state into one copy per shard (if not already)."""
    opt = state.opt_state
    if isinstance(opt, LocalOptState) and len(opt.shards) == shards:
        return state, None
    skel = skeleton(opt)
    copies = tuple(rebuild(skel, to_arrays(opt)) for _ in range(shards))
    return state._replace(opt_state=LocalOptState(copies)), None


def _write_states(fit: _Fit, per_shard: LocalOptState) -> None:
    """Publish each shard's committed optimizer state to its slot."""
    if fit.states is not None:
        for s, shard_state in enumerate(per_shard.shards):
            fit.states.write(fit.committed[s], to_arrays(shard_state))


def _commit_round(
    state: TrainState, results: Sequence[LocalResult], ctx: StepContext, fit: _Fit, steps: int
) -> tuple[TrainState, list[StepStats]]:
    """Average the shards' deltas into a new version (on the update thread)."""
    summed = [r.result for r in results]
    # Overflow and NaN are looked for explicitly, not reported as they happen (as in sync).
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        loss, _, weight = sum_in_order(summed, ctx.grads, fit.scratch)
        problem = _first_nonfinite(loss, fit.scratch, "gradient of", from_shards=True)
        if problem is None:
            mean_in_place(fit.scratch, weight)
            params = apply_updates(state.params, fit.scratch)
            problem = _first_nonfinite(0.0, params, "parameter", from_shards=False)
    if problem is not None:
        return _refuse(state, results, ctx, fit, steps, problem)
    opt_state = _read_states(state.opt_state, fit, results)
    bad = _nonfinite_shard_state(opt_state, results)
    if bad is not None:
        shard, problem = bad
        return _refuse(state, results, ctx, fit, steps, problem, shard=shard)
    if fit.states is not None:  # the round's states are now the committed ones
        for r in results:
            fit.committed[r.result.shard] = fit.written(r.result.shard)
    version = state.version + 1
    params = readonly(params)
    ctx.params.write(version % ctx.params.slots, params)
    new = state._replace(
        step=state.step + steps,
        version=version,
        params=params,
        opt_state=opt_state,
        batch=state.batch + steps,
    )
    return new, _batch_stats(results, steps, skipped=False)


def _nonfinite_shard_state(
    opt_state: LocalOptState, results: Sequence[LocalResult]
) -> tuple[int, Problem] | None:
    """The first shard of the round whose optimizer state went non-finite, and where.

    A shard's parameters may stay finite while its state does not (a finite gradient
    whose square overflows Adam's float32 moment gives an update of 0): sync mode
    refuses such a step, and so does a round.
    """
    for r in results:
        shard = r.result.shard
        problem = _nonfinite_state(opt_state.shards[shard])
        if problem is not None:
            return shard, problem
    return None


def _read_states(old: LocalOptState, fit: _Fit, results: Sequence[LocalResult]) -> LocalOptState:
    """The shards' optimizer states after a round (unchanged for shards that sat out)."""
    if fit.states is None:
        return old
    shards = list(old.shards)
    for r in results:
        shards[r.result.shard] = rebuild(fit.skeleton, fit.states.read(fit.written(r.result.shard)))
    return LocalOptState(tuple(shards))


def _refuse(
    state: TrainState,
    results: Sequence[LocalResult],
    ctx: StepContext,
    fit: _Fit,
    steps: int,
    problem: Problem,
    *,
    shard: int | None = None,
) -> tuple[TrainState, list[StepStats]]:
    """Apply the non-finite policy to a round: raise, or skip all of its steps.

    ``shard``: the shard whose optimizer state went bad, for a problem found there.
    """
    if ctx.updater.nonfinite == "raise":
        if problem.from_shards:
            shard = _first_bad_shard([r.result for r in results], ctx.grads)
        where = problem.what + ("" if shard is None else f" (first in shard {shard})")
        raise NonFiniteError(
            f"steps {state.step}..{state.step + steps - 1} (one local round): non-finite "
            f"{where}; the parameters were left as they were. "
            "Lower the learning rate or local_steps, add clip_by_global_norm, check the "
            "data, or pass nonfinite='skip'",
            step=state.step,
            shard=shard,
            parameter=problem.parameter,
        )
    # The workers wrote their (bad) states to the other slots: the committed ones stand.
    new = state._replace(
        step=state.step + steps, skipped=state.skipped + steps, batch=state.batch + steps
    )
    return new, _batch_stats(results, steps, skipped=True)


def _batch_stats(results: Sequence[LocalResult], steps: int, *, skipped: bool) -> list[StepStats]:
    """Mean loss, samples and total weight of each batch of a round, over all shards."""
    stats = []
    for j in range(steps):
        n = sum(r.counts[j] for r in results)
        weight = sum(r.weights[j] for r in results)
        loss = mean_loss(sum(r.losses[j] for r in results), weight)
        stats.append(StepStats(loss, math.nan, n, skipped, weight))
    return stats
