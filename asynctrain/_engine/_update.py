"""The updater: the one writer of parameters and optimizer state.

It sums a step's shard gradients in shard order, applies the non-finite policy, runs the
optimizer and publishes the new parameter version, off the event loop (on one dedicated
thread; inline for the inline backend). Because one thread runs them, updates are
serialised, and because it commits a whole new :class:`TrainState` at once, a reader
(``trainer.params``, ``predict``) always sees one complete version, never half an update.

An update measured (before the first is timed, estimated from the parameter count) to
take at most :data:`UPDATE_BUDGET` runs on the loop instead whenever nothing else of the
updater's is in flight on its thread: the step waits for its update wherever it runs,
and the hop there and back adds two thread wake-ups to it. Serialised all the same: the
loop cannot hand the thread anything while it runs the update, and the thread has
nothing left.
"""

from __future__ import annotations

import asyncio
import math
import operator
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from asynctrain._engine._window import Window
from asynctrain._engine._work import ShardResult
from asynctrain._exceptions import NonFiniteError
from asynctrain._finite import all_finite
from asynctrain._threads import ThreadPool
from asynctrain._types import Grads, Params
from asynctrain.backends import SharedArrays
from asynctrain.optim import apply_updates, global_norm
from asynctrain.optim._flat import (
    FlatArrays,
    buffers_in,
    flat_or_values,
    flat_zeros,
    freeze,
    one_buffer_layout,
)
from asynctrain.optim._tree import leaves

T = TypeVar("T")

_QUIET = np.errstate(over="ignore", invalid="ignore", divide="ignore")
"""numpy's overflow and invalid-value warnings off for an update: the updater looks for
non-finite values itself. Used as a decorator, which sets numpy's error state per call
without building a context manager each time (0.6 against 1.4 µs, interleaved)."""

UPDATE_BUDGET = 500e-6
"""An optimizer update whose median time over the last :data:`UPDATE_WINDOW` is at most
this many seconds runs on the event loop when the update thread is idle (see the module
docstring). The bound a step's math on the loop has too
(:data:`~asynctrain._engine._step.LOOP_BUDGET`): the loop is held at most that long at a
time. Measured with 0.4 ms against the 0.1 ms before (2 workers, quiet machine,
interleaved): the reference MLP's Adam update (about 0.25 ms) moved to the loop, and its
epoch at batch 4096 in 2 shards went 0.270 / 0.259 s → 0.253 / 0.239 s on threads and
0.252 / 0.259 → 0.239 / 0.248 on processes; the service benchmark's loop p99 did not
rise (1.3-1.7 ms against 1.4-3.0)."""
UPDATE_WINDOW = 16
FIRST_UPDATE = (100e-6, 12e-9)
"""Seconds taken for an update before one has been timed: a fixed part and a part per
parameter element, so a small model's first update runs on the loop too (the first hop
to the update thread costs about 0.3 ms, as much as such an update) and a large one's
goes to the thread. Above every median measured of a whole Adam update (sum, norm, step,
checks): 0.08 ms for the 1,290 softmax parameters (estimate 0.12), 0.27 ms for 16,384
(0.30), 0.31 ms for the reference MLP's 35,594 (0.53: its first update hops)."""


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
    """What one step did: mean loss, gradient norm, samples, whether it was skipped, and
    its total sample weight (``n`` without weights)."""

    loss: float
    grad_norm: float
    n: int
    skipped: bool
    weight: float


class Updater:
    """Applies optimizer steps from ordered shard results; see the module docstring."""

    def __init__(self, optimizer: Any, state: TrainState, *, nonfinite: str, inline: bool) -> None:
        self.optimizer = optimizer
        self.state = state
        self.nonfinite = nonfinite
        # Views of one buffer: the optimizer's element-wise passes run once over it.
        self._scratch: Grads = flat_zeros(state.params)
        self._backup = StateBackup()
        self._thread = None if inline else ThreadPool(1, name="asynctrain-update")
        self._in_flight = 0  # calls handed to the thread and not yet back
        self._apply_times = Window(UPDATE_WINDOW)  # seconds of recent updates
        fixed, per_element = FIRST_UPDATE
        size = sum(np.size(value) for value in state.params.values())
        self._first_estimate = fixed + per_element * size  # seconds, until one is timed

    async def call(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn(*args)`` where updates run (the update thread, or inline)."""
        if self._thread is None:
            return fn(*args)
        self._in_flight += 1
        try:
            # Cancelled, the thread's call is dropped unstarted or waited for: either way
            # the thread has nothing of ours left when this count drops.
            return await self._thread.run(fn, *args)
        finally:
            self._in_flight -= 1

    @property
    def idle(self) -> bool:
        """No call is running or waiting on the update thread: every call handed to it has
        returned to its caller (always, inline). Then, until the event loop's next await,
        nothing changes the state: what the loop reads of it is one committed step."""
        return self._in_flight == 0

    @property
    def updates_on_loop(self) -> bool:
        """Whether the next :meth:`apply` runs on the loop: the update thread is idle and
        updates have been measured (before the first, estimated: :data:`FIRST_UPDATE`) to
        take at most :data:`UPDATE_BUDGET`."""
        if self._thread is None:
            return True
        times = self._apply_times
        seconds = times.median if times else self._first_estimate
        return self._in_flight == 0 and seconds <= UPDATE_BUDGET

    async def apply(
        self,
        results: Sequence[ShardResult],
        grads: SharedArrays,
        publish: SharedArrays,
        *,
        slot: int | None = None,
        advance_batch: bool = True,
        turn_taken: bool = False,
    ) -> StepStats:
        """Apply one step from ``results`` (in shard order); publish the new version.

        The new version goes to slot ``slot`` of ``publish``, by default
        ``version % publish.slots``. ``advance_batch=False`` (a step on streamed data)
        leaves ``TrainState.batch``, the position within the current epoch of an
        in-memory dataset, as it was. ``turn_taken``: the caller gave the loop its turn
        after the results were computed, and awaited nothing since (a step computed on
        the loop), so an update on the loop takes no second turn.
        """
        args = (results, grads, publish, slot, int(advance_batch))
        if self._thread is None:  # inline: no hop, and no second coroutine frame a step
            return self._apply(*args)
        if self.updates_on_loop:
            # The loop's turn for everything else, as a hop would give; a cancel requested
            # while the step computed lands here, before its update, as on the inline
            # backend. Whatever ran meanwhile may have handed the thread a call: asked again.
            if not turn_taken:
                await asyncio.sleep(0)
            if self.updates_on_loop:
                return self._timed_apply(*args)
        return await self.call(self._timed_apply, *args)

    async def commit(self, fn: Callable[..., tuple[TrainState, T]], /, *args: Any) -> T:
        """Run ``fn(state, *args) -> (new_state, result)`` where updates run; commit
        ``new_state`` whole and return ``result``.

        For modes whose update is not one optimizer step on a summed gradient (local
        mode averages parameter deltas). If ``fn`` raises, nothing is committed.
        """
        return await self.call(self._commit, fn, *args)

    def close(self) -> None:
        """Stop the update thread (waits for an update in progress)."""
        if self._thread is not None:
            self._thread.shutdown()

    def _timed_apply(self, *args: Any) -> StepStats:
        started = time.perf_counter()
        try:
            return self._apply(*args)
        finally:
            self._apply_times.add(time.perf_counter() - started)

    def _commit(self, fn: Callable[..., tuple[TrainState, T]], *args: Any) -> T:
        self.state, result = fn(self.state, *args)
        return result

    @_QUIET  # overflow and NaN are looked for explicitly, not reported as they happen
    def _apply(
        self,
        results: Sequence[ShardResult],
        grads: SharedArrays,
        publish: SharedArrays,
        slot: int | None,
        advance: int,
    ) -> StepStats:
        state, acc = self.state, self._scratch
        loss_sum, n, weight = sum_in_order(results, grads, acc, mean=True)
        norm = global_norm(acc)
        # A finite norm means every gradient is finite: one pass, not a scan per array.
        if math.isfinite(loss_sum) and math.isfinite(norm):
            params, opt_state, problem = self._update(state, acc)
        else:
            problem = _first_nonfinite(loss_sum, acc, "gradient of", from_shards=True)
        if problem is not None:
            return self._refuse(
                results, grads, mean_loss(loss_sum, weight), n, weight, problem, advance
            )
        version = state.version + 1
        publish.write(version % publish.slots if slot is None else slot, params)
        self.state = TrainState(
            state.step + 1,
            version,
            params,
            opt_state,
            state.skipped,
            state.epoch,
            state.batch + advance,
        )
        return StepStats(mean_loss(loss_sum, weight), norm, n, False, weight)

    def _update(self, state: TrainState, acc: Grads) -> tuple[Params, Any, Problem | None]:
        """Run the optimizer; if it raises or its result is not finite, undo its in-place
        state changes (a chain's first parts have updated theirs when a later one raises:
        a schedule's invalid value, say)."""
        self._backup.save(state.opt_state)
        try:
            updates, opt_state = self.optimizer.update(acc, state.opt_state, state.params)
            params = next_params(state.params, updates)
        except BaseException:
            self._backup.restore()
            raise
        problem = None
        if not all_finite([*flat_or_values(params), *self._backup.walk(opt_state)]):
            problem = _first_nonfinite(0.0, params, "parameter", from_shards=False)
            problem = problem or _nonfinite_state(opt_state)
            self._backup.restore()
        return params, opt_state, problem

    def _refuse(
        self,
        results: Sequence[ShardResult],
        grads: SharedArrays,
        loss: float,
        n: int,
        weight: float,
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
        return StepStats(loss, math.nan, n, True, weight)


class Problem(NamedTuple):
    """Where a non-finite value was found, for the error message and NonFiniteError."""

    what: str
    parameter: str | None
    from_shards: bool


class StateBackup:
    """Scratch copies of the optimizer state's arrays, to undo an update that is refused.

    Optimizers update their state in place; copying it first (into buffers allocated once)
    is what lets a refused step leave the state exactly as it was.

    The arrays of the state a step starts from were found by the walk that checked it
    after the step before (:meth:`walk`), so a step walks the state's tree once.
    """

    def __init__(self) -> None:
        self._arrays: list[npt.NDArray[Any]] = []  # what the copies were taken of
        self._copies: list[npt.NDArray[Any]] = []
        self._walked: tuple[object, list[npt.NDArray[Any]]] = (object(), [])

    def walk(self, opt_state: Any) -> list[npt.NDArray[Any]]:
        """The arrays of ``opt_state`` (:func:`buffers_in`), remembered for :meth:`save`:
        the very list saved last when they are the same array objects (the usual case:
        the state updated in place), which :meth:`save` then copies without a look."""
        arrays = buffers_in(opt_state)
        saved = self._arrays
        if len(arrays) == len(saved) and all(map(operator.is_, arrays, saved)):
            arrays = saved
        self._walked = (opt_state, arrays)
        return arrays

    def save(self, opt_state: Any) -> None:
        """Copy the arrays of ``opt_state``.

        The walk of the same state object by :meth:`walk` is used when there is one: only
        an update changes a state's tree (it may rebuild it, or replace an entry of one of
        its dicts), and every update's result is walked.
        """
        walked, arrays = self._walked
        if walked is not opt_state or arrays is not self._arrays:
            self._adopt(arrays if walked is opt_state else buffers_in(opt_state))
        for copy, array in zip(self._copies, self._arrays, strict=True):
            np.copyto(copy, array)

    def _adopt(self, arrays: list[npt.NDArray[Any]]) -> None:
        """Take copies of ``arrays`` from now on: in the copies there are when they fit."""
        copies = self._copies
        if len(copies) != len(arrays) or any(
            c.shape != a.shape or c.dtype != a.dtype for c, a in zip(copies, arrays, strict=False)
        ):
            self._copies = [np.empty_like(array) for array in arrays]
        self._arrays = arrays

    def restore(self) -> None:
        """Write the saved values back into the arrays they were copied from."""
        for copy, array in zip(self._copies, self._arrays, strict=True):
            np.copyto(array, copy)


def next_params(params: Params, updates: Grads) -> Params:
    """``apply_updates(params, updates)``, read-only: the version an update publishes.

    Parameters and updates that are two buffers of one layout and dtype (every step of
    the trainer's own) take one addition into a fresh buffer, made read-only before its
    views are cut, so they are read-only too: none of apply_updates' per-array checks and
    flags. The bits are those of apply_updates (the same addition, element by element).
    """
    shared = one_buffer_layout(params, updates)
    if shared is not None:
        layout, param_flat, update_flat = shared
        flat = np.add(param_flat, update_flat)
        flat.setflags(write=False)  # not .flags: a flags object made and dropped every step
        return FlatArrays(flat, layout)
    new = apply_updates(params, updates)
    freeze(new)
    return new


def _first_nonfinite(loss: float, arrays: Grads, what: str, *, from_shards: bool) -> Problem | None:
    """The loss if it is not finite, else the first non-finite array, else None."""
    if not math.isfinite(loss):
        return Problem("loss", None, from_shards)
    for key, value in arrays.items():
        if not np.isfinite(value).all():
            return Problem(f"{what} {key!r}", key, from_shards)
    return None


def _nonfinite_state(opt_state: Any) -> Problem | None:
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


def sum_in_order(
    results: Sequence[ShardResult], grads: SharedArrays, out: Grads, *, mean: bool = False
) -> tuple[float, int, float]:
    """Sum the results' gradients into ``out`` in the given order; return (loss sum, n,
    weight): the summed loss, the sample count and the total sample weight.

    ``out`` is caller-owned scratch (overwritten). Shards with no samples are skipped.
    With ``mean``, ``out`` ends divided by the total weight (the sample count without
    sample weights), with the bits of summing first and calling :func:`mean_in_place`
    after, in fewer passes: one shard's gradient is divided straight into ``out``, and the
    first two shards are added straight into it (no copy of the first). Each gradient is
    cast to ``out``'s dtype as it is read, as a shared-memory gradient slot does when a
    shard writes it.
    """
    loss, n, weight = 0.0, 0, 0.0
    shard_grads = []
    for result in results:
        if result.n:
            loss += result.loss
            n += result.n
            weight += result.weight
            shard_grads.append(grads.read(result.grad_slot))
    if not shard_grads:
        return loss, n, weight
    divide = mean and weight != 0  # rows that all weigh 0: the zero sum stays zero
    first = shard_grads[0]
    if len(shard_grads) == 1:
        for key, acc in out.items():
            if divide:
                np.divide(first[key], weight, out=acc, dtype=acc.dtype)
            else:
                np.copyto(acc, first[key])
        return loss, n, weight
    second, rest = shard_grads[1], shard_grads[2:]
    for key, acc in out.items():
        np.add(first[key], second[key], out=acc, dtype=acc.dtype)
        for more in rest:
            np.add(acc, more[key], out=acc, dtype=acc.dtype)
        if divide:
            np.divide(acc, weight, out=acc)
    return loss, n, weight


def mean_in_place(grads: Grads, weight: float) -> None:
    """Divide summed gradients by the total ``weight`` (the sample count without sample
    weights), in place.

    A batch whose rows all weigh 0 has a zero gradient sum; it stays zero (the
    optimizer still takes its step) instead of becoming 0 / 0.
    """
    if weight == 0:
        return
    for value in grads.values():
        np.divide(value, weight, out=value)


def mean_loss(loss_sum: float, weight: float) -> float:
    """The weighted mean loss of a step: ``loss_sum / weight``, and 0 when nothing weighs."""
    return loss_sum / weight if weight else 0.0


def zeros_like(params: dict[str, Any]) -> Grads:
    """Fresh zero arrays with the shapes and dtypes of ``params``."""
    return {key: np.zeros_like(value) for key, value in params.items()}
