"""Trainer: the one place that holds model, optimizer, backend and data together."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from asynctrain._checkpoint import CheckpointMethods, CheckpointSession, PathLike
from asynctrain._checks import check_int
from asynctrain._config import TrainConfig, default_shards
from asynctrain._evaluate import evaluate
from asynctrain._events import (
    Callback,
    EpochEvent,
    Event,
    FitResult,
    StepEvent,
    summarize_staleness,
)
from asynctrain._exceptions import ConfigTypeError, StateError
from asynctrain._modes import StepContext, make_mode
from asynctrain._monitor import LoopLagMonitor
from asynctrain._reduce import zeros_like
from asynctrain._stream import DEFAULT_BUFFER, Source, StreamLimits, check_source, stream_events
from asynctrain._types import Params
from asynctrain._update import TrainState, Updater
from asynctrain.backends import Backend, get_backend
from asynctrain.backends._base import readonly
from asynctrain.data import Dataset, epoch_order
from asynctrain.models import Model, check_data
from asynctrain.optim import GradientTransformation, adam

DataLike = Dataset | tuple[npt.ArrayLike, npt.ArrayLike]
FIT_LAG_WINDOW = 10_000  # heartbeats behind fit(monitor_lag=True): ~10 s, sorted once


class Trainer(CheckpointMethods):
    """Train a model with data-parallel shards on an asyncio event loop.

    Each step splits its batch into ``shards`` shards, runs one asyncio task per shard
    that offloads the shard's ``loss_and_grad`` to the backend, collects the results
    through an ``asyncio.Queue``, sums them in shard order and applies one optimizer update
    off the loop. Use it as an async context manager to keep the backend open across fits;
    without one, each fit opens and closes what it needs.

    Args:
        model: any object following :class:`~asynctrain.models.Model`.
        optimizer: a :class:`~asynctrain.optim.GradientTransformation`; default
            ``adam(1e-3)``.
        backend: ``"thread"`` (default), ``"inline"``, another registered name, or a
            :class:`~asynctrain.backends.Backend` object (which the trainer never closes).
        workers: workers of a backend created by name; default: the usable cores.
        shards: shards per batch; default ``min(4, batch_size)``, independent of workers.
        batch_size: samples per step.
        seed: seeds initialisation and shuffling.
        nonfinite: ``"raise"`` or ``"skip"`` (see :class:`~asynctrain.TrainConfig`).
        mode: ``"sync"`` (default), ``"local"``, ``"ssp"`` or ``"async"``; see
            docs/modes.md for what each waits for and what each guarantees.
        local_steps: optimizer steps per shard between averagings (``mode="local"``).
        staleness: parameter versions a step may lag behind (``mode="ssp"``).

    Raises:
        ConfigError, ConfigTypeError: a bad setting, before any work starts.

    Example:
        >>> import asynctrain as at
        >>> data = at.data.synthetic("softmax", n=2000)
        >>> async def main():
        ...     model = at.models.SoftmaxRegression(128, 10)
        ...     async with at.Trainer(model, at.optim.adam(1e-2), backend="inline") as tr:
        ...         return await tr.fit(data, epochs=1)
        >>> at.run(main()).steps
        4
    """

    def __init__(
        self,
        model: Model,
        optimizer: GradientTransformation | None = None,
        *,
        backend: str | Backend = "thread",
        workers: int | None = None,
        shards: int | None = None,
        batch_size: int = 512,
        seed: int = 0,
        nonfinite: str = "raise",
        mode: str = "sync",
        local_steps: int | None = None,
        staleness: int | None = None,
    ) -> None:
        if not isinstance(model, Model):
            raise ConfigTypeError(
                f"model {model!r} does not follow the Model protocol: it needs n_features, "
                "n_classes, dtype, init, loss_and_grad and predict"
            )
        if shards is None and not isinstance(batch_size, bool) and isinstance(batch_size, int):
            shards = default_shards(batch_size)
        self.config = TrainConfig(
            batch_size=batch_size,
            shards=4 if shards is None else shards,
            seed=seed,
            nonfinite=nonfinite,
            mode=mode,
            local_steps=local_steps,
            staleness=staleness,
        )
        self.model = model
        self.optimizer = adam(1e-3) if optimizer is None else optimizer
        self.mode = make_mode(self.config)
        self._backend_spec: str | Backend = backend
        self._workers = None if workers is None else check_int("workers", workers)
        self._backend, self._owns_backend = get_backend(backend, workers=self._workers)
        self._updater: Updater | None = None
        self._state = "unopened"
        self._running = False
        self._samples: int | None = None  # rows of the data of the current or last fit
        self._partial_lock = asyncio.Lock()  # FIFO: partial_fit calls apply in call order
        self._partials = 0  # partial_fit calls waiting or running

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state == "closed":
            raise StateError(f"{self!r} is closed; create a new Trainer")
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the backend (if the trainer created it) and the update thread."""
        await self._release()
        self._state = "closed"

    async def _open(self) -> None:
        if self._state == "open":
            return
        if self._owns_backend and getattr(self._backend, "state", "") == "closed":
            self._backend, _ = get_backend(self._backend_spec, workers=self._workers)
        await self._backend.__aenter__()
        self._updater = Updater(
            self.optimizer,
            self._initial_state(),
            nonfinite=self.config.nonfinite,
            inline=bool(getattr(self._backend, "inline", False)),
        )
        self._state = "open"

    async def _release(self) -> None:
        updater, self._updater = self._updater, None
        if updater is not None:
            self._saved_state = updater.state
            await asyncio.to_thread(updater.close)
        if self._owns_backend:
            await self._backend.aclose()
        if self._state == "open":
            self._state = "unopened"

    def _initial_state(self) -> TrainState:
        saved: TrainState | None = getattr(self, "_saved_state", None)
        if saved is not None:
            return saved
        params = readonly(self.model.init(np.random.default_rng(self.config.seed)))
        return TrainState(0, 0, params, self.optimizer.init(params))

    @property
    def state(self) -> TrainState:
        """The current :class:`TrainState` (step, version, params, optimizer state)."""
        if self._updater is not None:
            return self._updater.state
        self._saved_state = self._initial_state()
        return self._saved_state

    # -- training ------------------------------------------------------------------------

    async def fit(
        self,
        data: DataLike,
        *,
        epochs: int = 1,
        validation: DataLike | None = None,
        callbacks: Sequence[Callback] = (),
        checkpoint_dir: PathLike | None = None,
        checkpoint_every: int | None = None,
        keep: int | None = 3,
        resume: bool = False,
        monitor_lag: bool = False,
    ) -> FitResult:
        """Train for ``epochs`` epochs and return a :class:`FitResult`.

        Args:
            data: a :class:`~asynctrain.data.Dataset` or an ``(X, y)`` pair.
            epochs: epochs to train (an interrupted epoch counts as the first); with
                ``resume=True``, the epochs of the whole run, restored ones included.
            validation: data to evaluate after every epoch (loss and accuracy).
            callbacks: :class:`Callback` objects; one returning True stops the fit.
            checkpoint_dir: save checkpoints (``step-<n>.ckpt``) here: every epoch, or
                every ``checkpoint_every`` steps, and at the end; writes overlap training.
            checkpoint_every: steps between checkpoints (None: once per epoch).
            keep: how many of the latest checkpoints to keep (None: all).
            resume: continue from the latest checkpoint in ``checkpoint_dir``, if any,
                exactly where it left off (parameters, optimizer, data order).
            monitor_lag: measure the event loop's lag during the fit with a
                :class:`~asynctrain.LoopLagMonitor`; its p50/p99/max (ms) go into
                ``FitResult.extra`` as ``loop_lag_p50_ms``, ``loop_lag_p99_ms`` and
                ``loop_lag_max_ms`` (over the fit's last 10,000 heartbeats, ~10 s).

        Raises:
            DataError, ConfigError: bad data or settings, before any work starts.
            NonFiniteError: a non-finite loss or gradient with ``nonfinite="raise"``.
            CheckpointError: a checkpoint could not be written, or the one to resume
                from is unreadable or does not match this trainer.
            StateError: the trainer is closed or already running a fit.

        Example:
            >>> result = await trainer.fit(data, epochs=10, checkpoint_dir="ckpt",
            ...                            resume=True)  # doctest: +SKIP
        """
        if monitor_lag:
            async with LoopLagMonitor(window=FIT_LAG_WINDOW) as lag:
                result = await self.fit(
                    data,
                    epochs=epochs,
                    validation=validation,
                    callbacks=callbacks,
                    checkpoint_dir=checkpoint_dir,
                    checkpoint_every=checkpoint_every,
                    keep=keep,
                    resume=resume,
                )
            result.extra.update(lag.stats().as_dict("loop_lag_"))
            return result
        epochs = check_int("epochs", epochs)
        session = CheckpointSession(
            self, checkpoint_dir, every=checkpoint_every, keep=keep, resume=resume
        )
        async with session:
            epochs = await session.resume(epochs, data)
            events = self.steps(data, epochs=epochs, validation=validation) if epochs else None
            result = await self._collect(events, callbacks, session)
            await session.finish()
        return result

    async def _collect(
        self,
        events: AsyncGenerator[Event, None] | None,
        callbacks: Sequence[Callback],
        checkpoints: CheckpointSession | None = None,
    ) -> FitResult:
        """Run ``events`` to the end (or until a callback stops it) into a FitResult.

        ``None`` stands for no events (a resumed run with nothing left to train).
        """
        started, first = time.perf_counter(), self.state
        history: list[EpochEvent] = []
        staleness: list[int] = []
        samples, stopped = 0, False
        async with contextlib.aclosing(events or _no_events()) as stream:
            async for event in stream:
                if isinstance(event, EpochEvent):
                    history.append(event)
                else:
                    samples += event.samples
                    staleness.append(event.staleness)
                if checkpoints is not None:
                    await checkpoints.after(event)
                if await _notify(callbacks, event):
                    stopped = True
                    break
        seconds = time.perf_counter() - started
        state = self.state
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

    async def steps(
        self, data: DataLike, *, epochs: int = 1, validation: DataLike | None = None
    ) -> AsyncGenerator[Event, None]:
        """Train like :meth:`fit`, yielding a :class:`StepEvent` per step and an
        :class:`EpochEvent` per epoch.

        Close the iterator when you stop early (``contextlib.aclosing``) so the fit's
        resources are released at once.

        Example:
            >>> async for event in trainer.steps(data, epochs=2):  # doctest: +SKIP
            ...     if event.kind == "step":
            ...         print(event.step, event.loss)
        """
        epochs = check_int("epochs", epochs)
        train = self._prepare(data, "data")
        val = None if validation is None else self._prepare(validation, "validation")
        check_picklable = getattr(self._backend, "check_picklable", None)
        if check_picklable is not None:  # backends whose workers are other processes
            check_picklable(self.model)
        # Close the inner generator as soon as this one stops, so the fit's shared arrays
        # are released now rather than whenever the garbage collector gets to it.
        async with (
            self._running_fit(),
            contextlib.aclosing(self._run(train, val, epochs)) as events,
        ):
            self._samples = len(train)
            async for event in events:
                yield event

    @contextlib.asynccontextmanager
    async def _running_fit(self, *, partial: bool = False) -> AsyncIterator[None]:
        if self._state == "closed":
            raise StateError(f"{self!r} is closed; create a new Trainer")
        if self._running or (self._partials and not partial):
            raise StateError(f"{self!r} is already running a fit; await it first")
        self._running, auto = True, self._state == "unopened"
        try:
            await self._open()
            yield
        finally:
            self._running = False
            if auto:
                await self._release()

    async def _run(
        self, train: Dataset, val: Dataset | None, epochs: int
    ) -> AsyncGenerator[Event, None]:
        async with self._shared(train, val) as (ctx, val_data):
            updater = ctx.updater
            for epoch in range(updater.state.epoch, updater.state.epoch + epochs):
                began, seen = time.perf_counter(), ctx.samples
                # A permutation of every sample (~6 ms for 200,000): off the loop.
                order = await updater.call(shuffle, len(train), self.config.seed, epoch)
                losses = []
                # Closed at once, not when garbage-collected: a pipelined mode's in-flight
                # shard tasks stop before the fit's resources are released.
                epoch_steps = self.mode.run_epoch(ctx, epoch, order, updater.state.batch)
                async with contextlib.aclosing(epoch_steps):
                    async for event in epoch_steps:
                        losses.append(event.loss * event.samples)
                        yield event
                updater.state = updater.state._replace(epoch=epoch + 1, batch=0)
                yield await self._epoch_event(ctx, epoch, val, val_data, losses, began, seen)

    @contextlib.asynccontextmanager
    async def _shared(
        self, train: Dataset, val: Dataset | None
    ) -> AsyncIterator[tuple[StepContext, Any]]:
        """Share the fit's data, parameters and gradient buffers once; release them after."""
        assert self._updater is not None
        backend, params = self._backend, self._updater.state.params
        shards = self.config.shards
        async with contextlib.AsyncExitStack() as stack:

            async def share(arrays: Any, slots: int = 1) -> Any:
                handle = await backend.share(arrays, slots=slots)
                stack.push_async_callback(backend.release, handle)
                return handle

            ctx = StepContext(
                model=self.model,
                backend=backend,
                updater=self._updater,
                data=await share({"X": train.X, "y": train.y}),
                params=await share(params, self.mode.param_slots(shards)),
                grads=await share(zeros_like(params), self.mode.grad_slots(shards)),
                batch_size=self.config.batch_size,
                shards=self.config.shards,
            )
            val_data = None if val is None else await share({"X": val.X, "y": val.y})
            yield ctx, val_data

    async def _epoch_event(
        self,
        ctx: StepContext,
        epoch: int,
        val: Dataset | None,
        val_data: Any,
        losses: list[float],
        began: float,
        seen: int,
    ) -> EpochEvent:
        val_loss = val_acc = math.nan
        if val is not None:
            version = ctx.updater.state.version
            val_loss, val_acc = await evaluate(
                self.model,
                self._backend,
                val_data,
                len(val),
                ctx.params,
                version % ctx.params.slots,
            )
        seconds = time.perf_counter() - began
        samples = ctx.samples - seen
        return EpochEvent(
            epoch=epoch,
            loss=sum(losses) / max(samples, 1),
            val_loss=val_loss,
            val_accuracy=val_acc,
            seconds=seconds,
            samples_per_s=samples / seconds if seconds else 0.0,
            steps=len(losses),
        )

    def _prepare(self, data: DataLike, name: str) -> Dataset:
        if isinstance(data, tuple) and len(data) == 2:
            data = Dataset(data[0], data[1])
        if isinstance(data, AsyncIterable) or inspect.isgenerator(data):
            raise ConfigTypeError(
                f"{name} is a stream ({type(data).__name__}); fit() and steps() take a "
                "Dataset or an (X, y) pair: train on a stream of batches with fit_stream()"
            )
        if not isinstance(data, Dataset):
            raise ConfigTypeError(
                f"{name} must be a Dataset or an (X, y) pair, got {type(data).__name__}"
            )
        check_data(self.model, data.X, data.y)
        if data.dtype != np.dtype(self.model.dtype):
            data = Dataset(data.X, data.y, dtype=self.model.dtype)
        return data

    # -- streams and online updates ----------------------------------------------------

    async def fit_stream(
        self,
        source: Source,
        *,
        max_steps: int | None = None,
        max_samples: int | None = None,
        validate_every: int | None = None,
        validation: DataLike | None = None,
        callbacks: Sequence[Callback] = (),
        buffer: int = DEFAULT_BUFFER,
    ) -> FitResult:
        """Train on a stream of ``(X, y)`` batches until it ends; return a FitResult.

        Batches of any size are validated as they arrive, re-cut into ``batch_size``
        rows in stream order and trained on one step per batch (the stream's last, short
        batch included). A bounded queue of ``buffer`` batches sits between the source
        and the trainer: a producer faster than training waits. ``history`` holds one
        :class:`EpochEvent` per period of ``validate_every`` steps (and one for the last,
        partial period); see ``docs/streaming.md``.

        Args:
            source: an iterable or async iterable (e.g. an async generator) of ``(X, y)``
                pairs of arrays or Datasets. A sync source's ``next()`` runs off the loop.
            max_steps: stop after this many steps (None: no limit).
            max_samples: train on at most the stream's first ``max_samples`` rows.
            validate_every: close a period (validate, report an EpochEvent, call
                ``on_epoch`` callbacks) every this many steps; None: once, at the end.
            validation: data to evaluate at the end of each period.
            callbacks: :class:`Callback` objects; one returning True stops the fit.
            buffer: validated batches held before the producer waits, >= 1.

        Raises:
            DataError: a bad batch, naming its number (counting from 0); no part of it is
                trained, and the parameters are those after every full batch before it.
            ConfigError, ConfigTypeError: a bad setting, or a source that is not a stream.
            StateError: the trainer is closed or already running a fit.
            Exception: whatever the source raised, unchanged.

        Example:
            >>> import asynctrain as at
            >>> data = at.data.synthetic("softmax", n=2000)
            >>> async def batches():  # e.g. messages from a queue
            ...     for start in range(0, len(data), 300):
            ...         yield data.X[start : start + 300], data.y[start : start + 300]
            >>> async def main():
            ...     model = at.models.SoftmaxRegression(128, 10)
            ...     async with at.Trainer(model, backend="inline", batch_size=512) as trainer:
            ...         return await trainer.fit_stream(batches(), max_steps=3)
            >>> at.run(main()).steps
            3
        """
        events = self.stream_steps(
            source,
            max_steps=max_steps,
            max_samples=max_samples,
            validate_every=validate_every,
            validation=validation,
            buffer=buffer,
        )
        return await self._collect(events, callbacks)

    async def stream_steps(
        self,
        source: Source,
        *,
        max_steps: int | None = None,
        max_samples: int | None = None,
        validate_every: int | None = None,
        validation: DataLike | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> AsyncGenerator[Event, None]:
        """Train like :meth:`fit_stream`, yielding a :class:`StepEvent` per step and an
        :class:`EpochEvent` per period. Close it when you stop early
        (``contextlib.aclosing``): that stops consuming the source and closes it."""
        limits = StreamLimits(
            max_steps=max_steps,
            max_samples=max_samples,
            validate_every=validate_every,
            buffer=buffer,
        )
        source = check_source(source)
        val = None if validation is None else self._prepare(validation, "validation")
        # The events are closed explicitly, not at garbage collection: that stops the feed.
        events = stream_events(self, source, limits, val)
        async with self._running_fit(), contextlib.aclosing(events):
            async for event in events:
                yield event

    async def partial_fit(self, X: npt.ArrayLike, y: npt.ArrayLike) -> FitResult:
        """One update pass over ``(X, y)``: ``ceil(len(X) / batch_size)`` steps, in order.

        Safe to call from many request handlers at once: calls are applied one at a time,
        whole, in the order they were made (FIFO), each exactly once. It refuses to run
        while a fit is running, and a fit refuses to start while calls are pending.
        Keep the trainer open (``async with``) so calls share one backend.

        Returns:
            A FitResult of this call (``steps``, ``loss``, ``params`` after it).

        Raises:
            DataError, DataTypeError: ``(X, y)`` is unusable; nothing of it is applied.
            StateError: the trainer is closed or running a fit.

        Example:
            >>> import asyncio
            >>> import asynctrain as at
            >>> data = at.data.synthetic("softmax", n=1000)
            >>> async def main():
            ...     model = at.models.SoftmaxRegression(128, 10)
            ...     async with at.Trainer(model, backend="inline", batch_size=64) as trainer:
            ...         first = trainer.partial_fit(data.X[:100], data.y[:100])  # 2 steps
            ...         second = trainer.partial_fit(data.X[100:120], data.y[100:120])
            ...         results = await asyncio.gather(first, second)  # in call order
            ...         return [r.steps for r in results], trainer.state.step
            >>> at.run(main())
            ([2, 1], 3)
        """
        if self._running and not self._partials:
            raise StateError(
                f"{self!r} is running a fit; partial_fit does not wait behind a fit: "
                "await the fit first, or feed the rows to fit_stream"
            )
        self._partials += 1
        try:
            async with self._partial_lock, self._running_fit(partial=True):
                events = stream_events(
                    self, [(X, y)], StreamLimits(), None, describe=lambda _: "partial_fit data"
                )
                return await self._collect(events, ())
        finally:
            self._partials -= 1

    # -- results -------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        """Workers of the backend in use."""
        return self._backend.workers

    @property
    def backend(self) -> Backend:
        """The backend in use (created from its name, or the one given)."""
        return self._backend

    @property
    def params(self) -> Params:
        """The parameters of the last fully applied step (read-only arrays)."""
        return self.state.params

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """Predict with the current parameters (runs in the caller's thread)."""
        return self.model.predict(self.params, np.asarray(X, dtype=self.model.dtype))

    def __repr__(self) -> str:
        backend = f"{getattr(self._backend, 'name', '?')}({self._backend.workers})"
        running = " running" if self._running else ""
        return (
            f"<Trainer step={self.state.step} mode={self.mode.name} backend={backend} "
            f"{self._state}{running}>"
        )


def shuffle(n: int, seed: int, epoch: int) -> npt.NDArray[np.int64]:
    """:func:`~asynctrain.data.epoch_order` with positional arguments, for ``Updater.call``."""
    return epoch_order(n, seed=seed, epoch=epoch)


async def _no_events() -> AsyncGenerator[Event, None]:
    return
    yield


async def _notify(callbacks: Sequence[Callback], event: Event) -> bool:
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
