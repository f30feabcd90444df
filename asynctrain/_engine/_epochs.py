"""Epochs of an in-memory fit, the events that close them, and a fit's result."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

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
from asynctrain._exceptions import ConfigTypeError
from asynctrain._monitor import LoopLagMonitor
from asynctrain._offloop import off_loop
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
    orders: EpochOrders | None = None,
) -> AsyncGenerator[Event, None]:
    """Train ``epochs`` epochs from the updater's epoch position; yield every event.

    ``metrics`` are checked names (:func:`~asynctrain._engine._metrics.check_metrics`)
    computed on ``val`` after every epoch. ``orders``: the epochs' orders, drawn from
    before ``train`` was prepared (the caller closes them too); used if made for as many
    rows and these epochs, else closed and drawn afresh.
    """
    config, partitions, updater = parts.config, None, parts.updater
    epoch_range = range(updater.state.epoch, updater.state.epoch + epochs)
    async with contextlib.AsyncExitStack() as stack:
        if orders is None or not orders.fits(len(train), epoch_range):
            if orders is not None:
                await orders.aclose()
            # Drawn from now on: the first order while the fit shares its data.
            orders = EpochOrders(len(train), config, epoch_range, ahead=not parts.backend.inline)
        stack.push_async_callback(orders.aclose)
        if config.shuffle == "shard":  # each shard's rows, copied: off the loop
            partitions = await updater.call(
                partition_arrays, train, config.batch_size, config.shards, config.seed
            )
        ctx, val_data = await stack.enter_async_context(
            open_context(parts, arrays_of(train), val, partitions=partitions)
        )
        for epoch in epoch_range:
            began, seen = time.perf_counter(), (ctx.samples, ctx.weight)
            order = await orders.take()
            losses = []
            # The next order is drawn once half of this epoch's rows are trained: a fit
            # stopped early draws none for nothing, and it is still ready in time.
            halfway = (len(order) - updater.state.batch * config.batch_size) // 2
            # Closed at once, not when garbage-collected: a pipelined mode's in-flight
            # shard tasks stop before the fit's resources are released.
            epoch_steps = parts.mode.run_epoch(ctx, epoch, order, updater.state.batch)
            async with contextlib.aclosing(epoch_steps):
                async for event in epoch_steps:
                    losses.append(event.loss * event.weight)
                    halfway -= event.samples
                    if halfway <= 0:
                        orders.draw_ahead()
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
        metrics={f"val_{name}": value for name, value in result.metrics.items()},
    )


class EpochOrders:
    """The orders of a fit's epochs (:func:`epoch_rows`), each drawn ahead on a thread of
    its own while the epoch before it trains.

    A permutation of every row takes a while (about 2 ms for 200,000 rows and 11 ms for
    1,000,000 here) that a fit drawing it at an epoch's start waits for, every epoch. Here
    the first order is drawn from the moment this is made (a fit makes it before it
    prepares and shares its data, on a row count read off the data as given) and each
    next one from :meth:`draw_ahead` on (the fit calls it halfway through an
    epoch), so it is usually ready when its epoch starts; numpy draws it without the GIL,
    beside the steps. One order is held ahead at a time: 8 bytes a row. An order not
    drawn ahead is drawn when taken. With ``ahead=False`` (the inline backend, which does
    all its work on the loop) each order is drawn on the loop when it is taken.

    Orders are pure functions of the seed and the epoch, so drawing them early changes
    no bit of a fit. Call :meth:`aclose` once done, however the fit ends: an order still
    being drawn is waited for (a thread is never left behind).

    Example:
        >>> import asynctrain
        >>> from asynctrain._config import TrainConfig
        >>> async def demo():
        ...     orders = EpochOrders(4, TrainConfig(), range(2), ahead=True)
        ...     try:
        ...         first = await orders.take()
        ...         orders.draw_ahead()  # epoch 1's, while epoch 0 trains
        ...         return [sorted(o.tolist()) for o in (first, await orders.take())]
        ...     finally:
        ...         await orders.aclose()
        >>> asynctrain.run(demo())
        [[0, 1, 2, 3], [0, 1, 2, 3]]
    """

    def __init__(self, n: int, config: TrainConfig, epochs: range, *, ahead: bool) -> None:
        self._n, self._config, self._epochs, self._ahead = n, config, epochs, ahead
        self._next = epochs.start
        self._drawing: asyncio.Task[npt.NDArray[np.int64]] | None = None
        self.draw_ahead()

    def fits(self, n: int, epochs: range) -> bool:
        """Whether these are the orders of ``epochs`` over ``n`` rows."""
        return n == self._n and epochs == self._epochs

    def draw_ahead(self) -> None:
        """Start drawing the next epoch's order on a thread of its own, unless it is
        being drawn already, there is none left, or orders are not drawn ahead."""
        if self._ahead and self._drawing is None and self._next < self._epochs.stop:
            work = off_loop(epoch_rows, self._n, self._config, self._next)
            self._drawing = asyncio.ensure_future(work)

    async def take(self) -> npt.NDArray[np.int64]:
        """The order of the next epoch (from ``epochs.start`` on): the one drawn ahead,
        or drawn now."""
        if self._next >= self._epochs.stop:
            raise IndexError(f"every order of epochs {self._epochs} has been taken")
        if not self._ahead:
            self._next += 1
            return epoch_rows(self._n, self._config, self._next - 1)
        self.draw_ahead()
        drawing, self._drawing = self._drawing, None
        assert drawing is not None, "ahead, with an order left: it is being drawn"
        # Cancelled here, the drawing task is cancelled with this one and waits for its
        # thread before either ends (off_loop).
        order = await drawing
        self._next += 1
        return order

    async def aclose(self) -> None:
        """Stop drawing: cancel the order being drawn and wait for its thread."""
        drawing, self._drawing = self._drawing, None
        if drawing is not None:
            drawing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drawing


def epoch_rows(n: int, config: TrainConfig, epoch: int) -> npt.NDArray[np.int64]:
    """The order of an epoch of ``n`` rows as ``config.shuffle`` draws it (rows, or with
    ``"shard"`` positions in the partitions: see :mod:`asynctrain.data._partition`;
    ``"none"``: the rows in the order given)."""
    if config.shuffle == "none":
        return np.arange(n, dtype=np.int64)
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
    finish: Callable[[bool], Awaitable[None]] | None = None,
    after_start: Callable[[], None] | None = None,
    control: FitControl | None = None,
) -> FitResult:
    """Run ``events`` to the end (or until a callback stops it) into a FitResult.

    ``current`` reads the trainer's committed state (before and after); ``after`` runs
    on every event after the callbacks, so what they change between steps (the
    learning-rate scale) is in a fit's checkpoint of that event; ``finish`` runs once the
    events end (the final checkpoint), told whether a callback stopped them. With
    ``control``, the callbacks' ``on_fit_start`` runs before the first event (then
    ``after_start``: a resumed fit hands the callbacks back their state) and their
    ``on_fit_end`` after ``finish``, however the fit ends: what it changes (restored
    parameters) is in the result. ``None`` events
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
            await finish(stopped)
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
    may lack the hook: it is skipped. ``on_fit_end`` is each callback's one chance to
    release what it opened (a logger's file and thread), so one that raises does not
    deprive the others of theirs: every one runs, then the first error is raised, with
    the later ones noted on it.
    """
    if control is None:
        return
    failed: Exception | None = None
    for callback in callbacks:
        method = getattr(callback, hook, None)
        try:
            answer = None if method is None else method(control)
            if inspect.isawaitable(answer):
                await answer
        except Exception as exc:
            if hook != "on_fit_end":
                raise
            if failed is None:
                failed = exc
            else:
                failed.add_note(f"and {callback!r}.{hook} raised {type(exc).__name__}: {exc}")
    if failed is not None:
        raise failed


async def _no_events() -> AsyncGenerator[Event, None]:
    return
    yield


async def notify(callbacks: Sequence[Callback], event: Event) -> bool:
    """Give ``event`` to every callback (sync or async hooks); True if any asks to stop.

    A hook's answer is taken for its truth (the :class:`Callback` contract); one that has
    none (an array of several values) is refused naming the hook, not left to raise numpy's
    "truth value is ambiguous" from here.
    """
    stop = False
    for callback in callbacks:
        if isinstance(event, StepEvent):
            hook, answer = "on_step", callback.on_step(event)
        else:
            hook, answer = "on_epoch", callback.on_epoch(event)
        if inspect.isawaitable(answer):
            answer = await answer
        try:
            asks = bool(answer)
        except Exception as exc:
            raise ConfigTypeError(
                f"{type(callback).__name__}.{hook} returned {answer!r:.80}, which is neither "
                f"true nor false ({exc}); return True to stop the fit, or None to go on"
            ) from None
        stop = stop or asks
    return stop
