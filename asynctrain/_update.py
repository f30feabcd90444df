"""The updater: the one writer of parameters and optimizer state.

It sums a step's shard gradients in shard order, applies the non-finite policy, runs the
optimizer and publishes the new parameter version, all off the event loop (on one
dedicated thread; inline for the inline backend). Because it is a single thread, updates
are serialised, and because it commits a whole new :class:`TrainState` at once, a reader
(``trainer.params``, ``predict``) always sees one complete version, never half an update.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np

from asynctrain._exceptions import NonFiniteError
from asynctrain._reduce import mean_in_place, sum_in_order, zeros_like
from asynctrain._types import Grads, Params
from asynctrain._work import ShardResult
from asynctrain.backends import SharedArrays
from asynctrain.backends._base import readonly
from asynctrain.backends._thread import await_without_orphans
from asynctrain.optim import apply_updates, global_norm

T = TypeVar("T")


class TrainState(NamedTuple):
    """Everything a step changes, committed together.

    Attributes:
        step: steps taken so far (applied or skipped); the next step's number.
        version: parameter versions published so far (applied steps).
        params: the current parameters (read-only arrays).
        opt_state: the optimizer state.
        skipped: steps skipped by ``nonfinite="skip"``.
        epoch: the epoch in progress (completed epochs).
        batch: the next batch within that epoch.
    """

    step: int
    version: int
    params: Params
    opt_state: Any
    skipped: int = 0
    epoch: int = 0
    batch: int = 0


class StepStats(NamedTuple):
    """What one step did: mean loss, gradient norm, samples, and whether it was skipped."""

    loss: float
    grad_norm: float
    n: int
    skipped: bool


class Updater:
    """Applies optimizer steps from ordered shard results; see the module docstring."""

    def __init__(self, optimizer: Any, state: TrainState, *, nonfinite: str, inline: bool) -> None:
        self.optimizer = optimizer
        self.state = state
        self.nonfinite = nonfinite
        self._scratch: Grads = zeros_like(state.params)
        self._executor = (
            None
            if inline
            else concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="asynctrain-update")
        )

    async def call(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn(*args)`` where updates run (the update thread, or inline)."""
        if self._executor is None:
            return fn(*args)
        return await await_without_orphans(self._executor.submit(fn, *args))

    async def apply(
        self, results: Sequence[ShardResult], grads: SharedArrays, publish: SharedArrays
    ) -> StepStats:
        """Apply one step from ``results`` (in shard order); publish the new version."""
        return await self.call(self._apply, results, grads, publish)

    def close(self) -> None:
        """Stop the update thread (waits for an update in progress)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _apply(
        self, results: Sequence[ShardResult], grads: SharedArrays, publish: SharedArrays
    ) -> StepStats:
        state, acc = self.state, self._scratch
        loss_sum, n = sum_in_order(results, grads, acc)
        mean_in_place(acc, n)
        norm = global_norm(acc)
        # A finite norm means every gradient is finite: one pass instead of a scan per array.
        finite = math.isfinite(loss_sum) and math.isfinite(norm)
        problem = None if finite else _first_nonfinite(loss_sum, acc)
        if problem is None:
            updates, opt_state = self.optimizer.update(acc, state.opt_state, state.params)
            params = apply_updates(state.params, updates)
            problem = _first_nonfinite(0.0, params)
        if problem is not None:
            return self._refuse(results, grads, loss_sum / max(n, 1), n, problem)
        version = state.version + 1
        params = readonly(params)
        publish.write(version % publish.slots, params)
        self.state = state._replace(
            step=state.step + 1,
            version=version,
            params=params,
            opt_state=opt_state,
            batch=state.batch + 1,
        )
        return StepStats(loss_sum / n, norm, n, skipped=False)

    def _refuse(
        self,
        results: Sequence[ShardResult],
        grads: SharedArrays,
        loss: float,
        n: int,
        parameter: str | None,
    ) -> StepStats:
        state = self.state
        if self.nonfinite == "raise":
            shard = _first_bad_shard(results, grads)
            where = "loss" if parameter == "" else f"parameter {parameter!r}"
            raise NonFiniteError(
                f"step {state.step}: non-finite {where} (first in shard {shard}); the "
                "parameters were left as they were. Lower the learning rate, add "
                "clip_by_global_norm, check the data, or pass nonfinite='skip'",
                step=state.step,
                shard=shard,
                parameter=parameter or None,
            )
        self.state = state._replace(
            step=state.step + 1, skipped=state.skipped + 1, batch=state.batch + 1
        )
        return StepStats(loss, math.nan, n, skipped=True)


def _first_nonfinite(loss: float, arrays: Grads) -> str | None:
    """``""`` if ``loss`` is not finite, else the first non-finite array's name, else None."""
    if not math.isfinite(loss):
        return ""
    for key, value in arrays.items():
        if not np.isfinite(value).all():
            return key
    return None


def _first_bad_shard(results: Sequence[ShardResult], grads: SharedArrays) -> int | None:
    for result in results:
        if result.n and _first_nonfinite(result.loss, grads.read(result.grad_slot)) is not None:
            return result.shard
    return None
