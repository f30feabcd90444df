"""Trainer: the one place that holds model, optimizer, backend and data together."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_choice, check_int
from asynctrain._config import TrainConfig, default_shards
from asynctrain._evaluate import evaluate
from asynctrain._events import Callback, EpochEvent, Event, FitResult, StepEvent
from asynctrain._exceptions import ConfigTypeError, StateError
from asynctrain._modes import MODES, StepContext
from asynctrain._reduce import zeros_like
from asynctrain._types import Params
from asynctrain._update import TrainState, Updater
from asynctrain.backends import Backend, get_backend
from asynctrain.backends._base import readonly
from asynctrain.data import Dataset, epoch_order, steps_per_epoch
from asynctrain.models import Model, check_data
from asynctrain.optim import GradientTransformation, adam

DataLike = Dataset | tuple[npt.ArrayLike, npt.ArrayLike]


class Trainer:
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
        mode: the training mode; ``"sync"``.

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
        )
        self.model = model
        self.optimizer = adam(1e-3) if optimizer is None else optimizer
        self.mode = MODES[check_choice("mode", mode, tuple(MODES))]()
        self._backend_spec: str | Backend = backend
        self._workers = None if workers is None else check_int("workers", workers)
        self._backend, self._owns_backend = get_backend(backend, workers=self._workers)
        self._updater: Updater | None = None
        self._state = "unopened"
        self._running = False

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
    ) -> FitResult:
        """Train for ``epochs`` epochs and return a :class:`FitResult`.

        Args:
            data: a :class:`~asynctrain.data.Dataset` or an ``(X, y)`` pair.
            epochs: epochs to train (an interrupted epoch counts as the first).
            validation: data to evaluate after every epoch (loss and accuracy).
            callbacks: :class:`Callback` objects; one returning True stops the fit.

        Raises:
            DataError, ConfigError: bad data or settings, before any work starts.
            NonFiniteError: a non-finite loss or gradient with ``nonfinite="raise"``.
            StateError: the trainer is closed or already running a fit.
        """
        started, first = time.perf_counter(), self.state
        history: list[EpochEvent] = []
        samples, stopped = 0, False
        events = self.steps(data, epochs=epochs, validation=validation)
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, EpochEvent):
                    history.append(event)
                else:
                    samples += event.samples
                if await _notify(callbacks, event):
                    stopped = True
                    break
        seconds = time.perf_counter() - started
        state = self.state
        return FitResult(
            params=state.params,
            history=history,
            steps=state.step - first.step,
            seconds=seconds,
            samples_per_s=samples / seconds if seconds else 0.0,
            stopped_early=stopped,
            skipped_steps=state.skipped - first.skipped,
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
        async with self._running_fit():
            async for event in self._run(train, val, epochs):
                yield event

    @contextlib.asynccontextmanager
    async def _running_fit(self) -> AsyncIterator[None]:
        if self._state == "closed":
            raise StateError(f"{self!r} is closed; create a new Trainer")
        if self._running:
            raise StateError(f"{self!r} is already running a fit; await it first")
        self._running, auto = True, self._state == "unopened"
        try:
            await self._open()
            yield
        finally:
            self._running = False
            if auto:
                await self._release()

    async def _run(self, train: Dataset, val: Dataset | None, epochs: int) -> AsyncIterator[Event]:
        ctx = await self._context(train)
        val_data = None if val is None else await self._backend.share({"X": val.X, "y": val.y})
        spe = steps_per_epoch(len(train), self.config.batch_size)
        updater = ctx.updater
        for epoch in range(updater.state.epoch, updater.state.epoch + epochs):
            began, seen = time.perf_counter(), ctx.samples
            order = epoch_order(len(train), seed=self.config.seed, epoch=epoch)
            losses = []
            async for step_event in self.mode.run_epoch(ctx, epoch, order, updater.state.batch):
                losses.append(step_event.loss * step_event.samples)
                yield step_event
            updater.state = updater.state._replace(epoch=epoch + 1, batch=0)
            yield await self._epoch_event(ctx, epoch, val, val_data, losses, began, seen, spe)

    async def _context(self, train: Dataset) -> StepContext:
        assert self._updater is not None
        params = self._updater.state.params
        return StepContext(
            model=self.model,
            backend=self._backend,
            updater=self._updater,
            data=await self._backend.share({"X": train.X, "y": train.y}),
            params=await self._backend.share(params, slots=2),
            grads=await self._backend.share(zeros_like(params), slots=self.config.shards),
            batch_size=self.config.batch_size,
            shards=self.config.shards,
        )

    async def _epoch_event(
        self,
        ctx: StepContext,
        epoch: int,
        val: Dataset | None,
        val_data: Any,
        losses: list[float],
        began: float,
        seen: int,
        spe: int,
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
        if not isinstance(data, Dataset):
            raise ConfigTypeError(
                f"{name} must be a Dataset or an (X, y) pair, got {type(data).__name__}"
            )
        check_data(self.model, data.X, data.y)
        if data.dtype != np.dtype(self.model.dtype):
            data = Dataset(data.X, data.y, dtype=self.model.dtype)
        return data

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
