"""Epochs of an in-memory fit, the events that close them, and a fit's result."""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from asynctrain._config import TrainConfig
from asynctrain._engine._context import FitParts, arrays_of, open_context, partition_arrays
from asynctrain._engine._evaluate import Evaluation, evaluate
from asynctrain._engine._step import StepContext
from asynctrain._engine._update import TrainState
from asynctrain._events import (
    Callback,
    EpochEvent,
    Event,
    FitResult,
    StepEvent,
    summarize_staleness,
)
from asynctrain._monitor import LoopLagMonitor
from asynctrain.backends import SharedArrays
from asynctrain.data import Dataset, epoch_order
from asynctrain.data._partition import shard_epoch_order

if TYPE_CHECKING:
    from asynctrain._control import FitControl


async def run_epochs(
    parts: FitParts,
    train: Dataset,
    val: Dataset | None,
    epochs: int,
    metrics: tuple[str, ...] = (),
) -> AsyncGenerator[Event, None]:
    """Train ``epochs`` epochs from the updater's epoch position; yield every event.

    ``metrics`` are checked names (:func:`~asynctrain._engine._metrics.check_metrics`)
    computed on ``val`` after every epoch.
    """
    config, partitions = parts.config, None
    if config.shuffle == "shard":  # each shard's rows, copied: off the loop
        partitions = await parts.updater.call(
            partition_arrays, train, config.batch_size, config.shards, config.seed
        )
    async with open_context(parts, arrays_of(train), val, partitions=partitions) as (
        ctx,
        val_data,
    ):
        updater = ctx.updater
        for epoch in range(updater.state.epoch, updater.state.epoch + epochs):
            began, seen = time.perf_counter(), (ctx.samples, ctx.weight)
            # A permutation of every sample (~6 ms for 200,000): off the loop.
            order = await updater.call(epoch_rows, len(train), config, epoch)
            losses = []
            # Closed at once, not when garbage-collected: a pipelined mode's in-flight
            # shard tasks stop before the fit's resources are released.
            epoch_steps = parts.mode.run_epoch(ctx, epoch, order, updater.state.batch)
            async with contextlib.aclosing(epoch_steps):
                async for event in epoch_steps:
                    losses.append(event.loss * event.weight)
                    yield event
            updater.state = updater.state._replace(epoch=epoch + 1, batch=0)
            yield await epoch_event(
                ctx, epoch, val, val_data, losses, began, seen, parts.lag, metrics
            )


async def epoch_event(
    ctx: StepContext,
    epoch: int,
    val: Dataset | None,
    val_data: SharedArrays | None,
    losses: list[float],
    began: float,
    seen: tuple[int, float],
    lag: LoopLagMonitor | None = None,
    metrics: tuple[str, ...] = (),
) -> EpochEvent:
    """Close an epoch (or a stream's period): validate, and report loss and speed.

    ``losses`` are the period's per-step loss sums (weighted, for weighted data), divided
    by the period's total weight; ``began`` and ``seen`` the time and ``(ctx.samples,
    ctx.weight)`` when it opened; ``lag`` the fit's loop-lag monitor, if it has one;
    ``metrics`` the validation metrics to compute besides loss and accuracy.
    """
    result = Evaluation(math.nan, math.nan, {})
    if val is not None and val_data is not None:
        slot = ctx.updater.state.version % ctx.params.slots
        result = await evaluate(
            ctx.model,
            ctx.backend,
            val_data,
            len(val),
            ctx.params,
            slot,
            metrics=metrics,
            off_loop=ctx.updater.call,
            carried=ctx.carried,
        )
    seconds = time.perf_counter() - began
    samples, weight = ctx.samples - seen[0], ctx.weight - seen[1]
    return EpochEvent(
        epoch=epoch,
        loss=sum(losses) / weight if weight > 0 else 0.0,
        val_loss=result.loss,
        val_accuracy=result.accuracy,
        seconds=seconds,
        samples_per_s=samples / seconds if seconds else 0.0,
        steps=len(losses),
        loop_lag_p99_ms=math.nan if lag is None else lag.stats().p99_ms,
        metrics=result.metrics,
    )


def epoch_rows(n: int, config: TrainConfig, epoch: int) -> npt.NDArray[np.int64]:
    """The order of an epoch of ``n`` rows as ``config.shuffle`` draws it (rows, or with
    ``"shard"`` positions in the partitions: see :mod:`asynctrain.data._partition`)."""
    if config.shuffle == "shard":
        return shard_epoch_order(
            n, batch_size=config.batch_size, shards=config.shards, seed=config.seed, epoch=epoch
        )
    return epoch_order(n, seed=config.seed, epoch=epoch)


async def collect(
    current: Callable[[], TrainState],
    events: AsyncGenerator[Event, None] | None,
    callbacks: Sequence[Callback],
    after: Callable[[Event], Awaitable[None]] | None = None,
    *,
    finish: Callable[[], Awaitable[None]] | None = None,
    after_start: Callable[[], None] | None = None,
    control: FitControl | None = None,
) -> FitResult:
    """Run ``events`` to the end (or until a callback stops it) into a FitResult.

    ``current`` reads the trainer's committed state (before and after); ``after`` runs
    on every event after the callbacks, so what they change between steps (the
    learning-rate scale) is in a fit's checkpoint of that event; ``finish`` runs once the
    events end (the final checkpoint). With ``control``, the callbacks' ``on_fit_start``
    runs before the first event (then ``after_start``: a resumed fit hands the callbacks
    back their state) and their ``on_fit_end`` after ``finish``, however the fit ends:
    what it changes (restored parameters) is in the result. ``None`` events
    stand for none at all (a resumed run with nothing left to train).
    """
    started, first = time.perf_counter(), current()
    history: list[EpochEvent] = []
    staleness: list[int] = []
    samples, stopped, error = 0, False, None
    try:
        async with contextlib.aclosing(events or _no_events()) as stream:
            await call_hooks(callbacks, "on_fit_start", control)
            if after_start is not None:
                after_start()
            async for event in stream:
                if isinstance(event, EpochEvent):
                    history.append(event)
                else:
                    samples += event.samples
                    staleness.append(event.staleness)
                # No callbacks (a plain fit): no coroutine to create and await per event.
                if callbacks and await notify(callbacks, event):
                    stopped = True
                    break
                if after is not None:
                    await after(event)
        if finish is not None:
            await finish()
    except BaseException as exc:
        error = exc
        raise
    finally:
        if control is not None:
            control._end(error)
            await call_hooks(callbacks, "on_fit_end", control)
    seconds = time.perf_counter() - started
    state = current()
    staleness_mean, staleness_max = summarize_staleness(staleness)
    return FitResult(
        params=state.params,
        history=history,
        steps=state.step - first.step,
        seconds=seconds,
        samples_per_s=samples / seconds if seconds else 0.0,
        stopped_early=stopped,
        skipped_steps=state.skipped - first.skipped,
        staleness_mean=staleness_mean,
        staleness_max=staleness_max,
    )


async def call_hooks(callbacks: Sequence[Callback], hook: str, control: FitControl | None) -> None:
    """Call ``hook`` (``on_fit_start`` or ``on_fit_end``) of every callback, in order.

    Nothing without a ``control``. A callback that is not a :class:`Callback` subclass
    may lack the hook: it is skipped.
    """
    if control is None:
        return
    for callback in callbacks:
        method = getattr(callback, hook, None)
        answer = None if method is None else method(control)
        if inspect.isawaitable(answer):
            await answer


async def _no_events() -> AsyncGenerator[Event, None]:
    return
    yield


async def notify(callbacks: Sequence[Callback], event: Event) -> bool:
    """Give ``event`` to every callback (sync or async hooks); True if any asks to stop."""
    stop = False
    for callback in callbacks:
        if isinstance(event, StepEvent):
            answer: Any = callback.on_step(event)
        else:
            answer = callback.on_epoch(event)
        if inspect.isawaitable(answer):
            answer = await answer
        stop = stop or bool(answer)
    return stop
