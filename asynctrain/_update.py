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
import numpy.typing as npt

from asynctrain._exceptions import NonFiniteError
from asynctrain._reduce import mean_in_place, sum_in_order, zeros_like
from asynctrain._tree import arrays_in, leaves
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
        self._backup = StateBackup()
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
        self,
        results: Sequence[ShardResult],
        grads: SharedArrays,
        publish: SharedArrays,
        *,
        slot: int | None = None,
        advance_batch: bool = True,
    ) -> StepStats:
        """Apply one step from ``results`` (in shard order); publish the new version.

        The new version goes to slot ``slot`` of ``publish``, by default
        ``version % publish.slots``. ``advance_batch=False`` (a step on streamed data)
        leaves ``TrainState.batch``, the position within the current epoch of an
        in-memory dataset, as it was.
        """
        return await self.call(self._apply, results, grads, publish, slot, int(advance_batch))

    async def commit(self, fn: Callable[..., tuple[TrainState, T]], /, *args: Any) -> T:
        """Run ``fn(state, *args) -> (new_state, result)`` where updates run; commit
        ``new_state`` whole and return ``result``.

        For modes whose update is not one optimizer step on a summed gradient (local
        mode averages parameter deltas). If ``fn`` raises, nothing is committed.
        """
        return await self.call(self._commit, fn, *args)

    def close(self) -> None:
        """Stop the update thread (waits for an update in progress)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _commit(self, fn: Callable[..., tuple[TrainState, T]], *args: Any) -> T:
        self.state, result = fn(self.state, *args)
        return result

    def _apply(
        self,
        results: Sequence[ShardResult],
        grads: SharedArrays,
        publish: SharedArrays,
        slot: int | None,
        advance: int,
    ) -> StepStats:
        state, acc = self.state, self._scratch
        loss_sum, n = sum_in_order(results, grads, acc)
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            mean_in_place(acc, n)
            norm = global_norm(acc)
        # A finite norm means every gradient is finite: one pass instead of a scan per array.
        finite = math.isfinite(loss_sum) and math.isfinite(norm)
        problem = (
            None if finite else _first_nonfinite(loss_sum, acc, "gradient of", from_shards=True)
        )
        if problem is None:
            params, opt_state, problem = self._update(state, acc)
        if problem is not None:
            return self._refuse(results, grads, loss_sum / max(n, 1), n, problem, advance)
        version = state.version + 1
        params = readonly(params)
        publish.write(version % publish.slots if slot is None else slot, params)
        self.state = state._replace(
            step=state.step + 1,
            version=version,
            params=params,
            opt_state=opt_state,
            batch=state.batch + advance,
        )
        return StepStats(loss_sum / n, norm, n, skipped=False)

    def _update(self, state: TrainState, acc: Grads) -> tuple[Params, Any, Problem | None]:
        """Run the optimizer; if the result is not finite, undo its in-place state changes."""
        self._backup.save(state.opt_state)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # checked below
            updates, opt_state = self.optimizer.update(acc, state.opt_state, state.params)
            params = apply_updates(state.params, updates)
        problem = _first_nonfinite(0.0, params, "parameter", from_shards=False)
        problem = problem or _nonfinite_state(opt_state)
        if problem is not None:
            self._backup.restore()
        return params, opt_state, problem

    def _refuse(
        self,
        results: Sequence[ShardResult],
        grads: SharedArrays,
        loss: float,
        n: int,
        problem: Problem,
        advance: int,
    ) -> StepStats:
        state = self.state
        if self.nonfinite == "raise":
            shard = _first_bad_shard(results, grads) if problem.from_shards else None
            where = "" if shard is None else f" (first in shard {shard})"
            raise NonFiniteError(
                f"step {state.step}: non-finite {problem.what}{where}; the parameters and the "
                "optimizer state were left as they were. Lower the learning rate, add "
                "clip_by_global_norm, check the data, or pass nonfinite='skip'",
                step=state.step,
                shard=shard,
                parameter=problem.parameter,
            )
        self.state = state._replace(
            step=state.step + 1, skipped=state.skipped + 1, batch=state.batch + advance
        )
        return StepStats(loss, math.nan, n, skipped=True)


class Problem(NamedTuple):
    """Where a non-finite value was found, for the error message and NonFiniteError."""

    what: str
    parameter: str | None
    from_shards: bool


class StateBackup:
    """Scratch copies of the optimizer state's arrays, to undo an update that is refused.

    Optimizers update their state in place; copying it first (into buffers allocated once)
    is what lets a refused step leave the state exactly as it was.
    """

    def __init__(self) -> None:
        self._arrays: list[npt.NDArray[Any]] = []
        self._copies: list[npt.NDArray[Any]] = []

    def save(self, opt_state: Any) -> None:
        """Copy the arrays of ``opt_state``."""
        self._arrays = arrays_in(opt_state)
        if [(a.shape, a.dtype) for a in self._copies] != [(a.shape, a.dtype) for a in self._arrays]:
            self._copies = [array.copy() for array in self._arrays]
            return
        for copy, array in zip(self._copies, self._arrays, strict=True):
            np.copyto(copy, array)

    def restore(self) -> None:
        """Write the saved values back into the arrays they were copied from."""
        for copy, array in zip(self._copies, self._arrays, strict=True):
            np.copyto(array, copy)


def _first_nonfinite(loss: float, arrays: Grads, what: str, *, from_shards: bool) -> Problem | None:
    """The loss if it is not finite, else the first non-finite array, else None."""
    if not math.isfinite(loss):
        return Problem("loss", None, from_shards)
    for key, value in arrays.items():
        if not np.isfinite(value).all():
            return Problem(f"{what} {key!r}", key, from_shards)
    return None


def _nonfinite_state(opt_state: Any) -> Problem | None:
    if all(np.isfinite(array).all() for array in arrays_in(opt_state)):
        return None  # the common case, without building the paths
    for where, array in leaves(opt_state):
        if not np.isfinite(array).all():
            return Problem(f"optimizer state {where}", None, from_shards=False)
    return None


def _first_bad_shard(results: Sequence[ShardResult], grads: SharedArrays) -> int | None:
    for result in results:
        if result.n and _first_nonfinite(
            result.loss, grads.read(result.grad_slot), "gradient of", from_shards=True
        ):
            return result.shard
    return None
