"""What runs on a worker in local mode: k optimizer steps on one shard's stream.

Module-level and picklable like :mod:`asynctrain._engine._work`: a task carries indices, slot
numbers and the optimizer state's skeleton; the parameters, the shard's optimizer state
and its parameter delta travel through shared slots.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from asynctrain._engine._update import mean_in_place
from asynctrain._engine._work import Indices, ShardResult, gather, resolve_model, weight_sum
from asynctrain.backends import SharedArrays
from asynctrain.models._protocol import shard_loss_and_grad
from asynctrain.optim import GradientTransformation, apply_updates
from asynctrain.optim._tree import rebuild, to_arrays


class LocalTask(NamedTuple):
    """One shard's part of a local round: its indices for each of the round's steps."""

    step: int
    shard: int
    version: int
    param_slot: int
    grad_slot: int
    parts: tuple[Indices, ...]
    skeleton: Any
    seed: int = 0
    """The trainer's seed: local step ``i`` keys a model's randomness by
    ``(seed, step + i, shard)``."""
    state_in: int = -1
    """The slot of the shard's committed optimizer state (-1: slot ``shard``)."""
    state_out: int = -1
    """The slot the shard's new optimizer state goes to, never ``state_in``: a task re-run
    after its worker died must start from the committed state (-1: slot ``shard``)."""


class LocalResult(NamedTuple):
    """A shard's round: its summed result (the delta waits in ``result.grad_slot``) and
    the loss sum, sample count and total sample weight of each local step."""

    result: ShardResult
    losses: tuple[float, ...]
    counts: tuple[int, ...]
    weights: tuple[float, ...]


def local_shard(
    model: Any,
    optimizer: GradientTransformation,
    data: SharedArrays,
    params: SharedArrays,
    deltas: SharedArrays,
    states: SharedArrays | None,
    task: LocalTask,
) -> LocalResult:
    """Take one optimizer step per part of ``task`` from the published parameters, with
    the shard's own optimizer state; write ``W * (new - old)`` to the delta slot.

    Weighting the delta by the shard's total sample weight ``W`` (its sample count
    without sample weights) lets the trainer average the shards' deltas with the same
    ordered sum it uses for gradients.
    """
    model = resolve_model(model)
    arrays = data.read(0)
    start = params.read(task.param_slot)
    state_in = task.shard if task.state_in < 0 else task.state_in
    state_out = task.shard if task.state_out < 0 else task.state_out
    state = rebuild(task.skeleton, {} if states is None else states.read(state_in))
    current, losses, counts, weights = start, [], [], []
    for i, part in enumerate(task.parts):
        loss, weight = 0.0, 0.0
        if len(part):
            rows = gather(arrays, part)
            X, y, w = rows.X, rows.y, rows.w
            key = (task.seed, task.step + i, task.shard)
            loss, grads = shard_loss_and_grad(model, current, X, y, key, w)
            weight = weight_sum(w, len(part))
            # The optimizer's work, as the sync updater's: an overflow or NaN is looked
            # for when the round is committed (the deltas, the states), not reported as
            # numpy warnings here, which warnings-as-errors would turn into a failed
            # round on the inline and thread backends only.
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                mean_in_place(grads, weight)
                updates, state = optimizer.update(grads, state, current)
                current = apply_updates(current, updates)
        losses.append(float(loss))
        counts.append(len(part))
        weights.append(weight)
    n, total = sum(counts), sum(weights)
    with np.errstate(over="ignore", invalid="ignore"):
        delta = {key: (current[key] - start[key]) * total for key in start}
    deltas.write(task.grad_slot, delta)
    if states is not None:
        states.write(state_out, to_arrays(state))
    result = ShardResult(task.step, task.shard, task.version, task.grad_slot, n, sum(losses), total)
    return LocalResult(result, tuple(losses), tuple(counts), tuple(weights))
