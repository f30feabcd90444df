"""The Trainer's lifecycle: unopened → open → closed, and one fit at a time."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterable, AsyncIterator
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from asynctrain._config import TrainConfig
from asynctrain._engine import Mode
from asynctrain._engine._update import TrainState, Updater
from asynctrain._exceptions import ConfigTypeError, StateError
from asynctrain._monitor import LoopLagMonitor
from asynctrain._types import Params
from asynctrain.backends import Backend, get_backend
from asynctrain.backends._base import readonly
from asynctrain.data import Dataset
from asynctrain.models import Model, check_data
from asynctrain.optim import GradientTransformation

DataLike = Dataset | tuple[npt.ArrayLike, npt.ArrayLike]
"""What ``fit`` trains on: a Dataset or an ``(X, y)`` pair of arrays."""


class TrainerBase:
    """State and lifecycle shared by every way of training (fit, streams, partial_fit).

    Opening starts the backend (if the trainer owns it) and the update thread; releasing
    keeps the last :class:`TrainState` so a later fit continues from it. Inside
    ``async with`` the trainer stays open across fits; otherwise each fit opens and
    releases what it needs.
    """

    config: TrainConfig
    model: Model
    optimizer: GradientTransformation
    mode: Mode

    def __init__(self, backend: str | Backend, workers: int | None) -> None:
        self._backend_spec = backend
        self._workers = workers
        self._backend, self._owns_backend = get_backend(backend, workers=workers)
        self._updater: Updater | None = None
        self._saved_state: TrainState | None = None
        self._state = "unopened"
        self._running = False
        self._samples: int | None = None  # rows of the data of the current or last fit
        self._partial_lock = asyncio.Lock()  # FIFO: partial_fit calls apply in call order
        self._partials = 0  # partial_fit calls waiting or running
        self.lag: LoopLagMonitor | None = None
        """The loop-lag monitor of the running fit (``fit(monitor_lag=True)``), else None."""

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
            self.state,
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

    @contextlib.asynccontextmanager
    async def _running_fit(self, *, partial: bool = False) -> AsyncIterator[None]:
        """Mark the trainer running (one fit at a time), opening it if it is not."""
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

    def _prepare(self, data: DataLike, name: str) -> Dataset:
        """Validate ``data`` against the model and convert it to the model's dtype."""
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

    def _check_picklable(self) -> None:
        """Refuse, before any work, a model the backend's workers could not receive."""
        check = getattr(self._backend, "check_picklable", None)
        if check is not None:  # backends whose workers are other processes
            check(self.model)

    @property
    def state(self) -> TrainState:
        """The current :class:`TrainState` (step, version, params, optimizer state)."""
        if self._updater is not None:
            return self._updater.state
        if self._saved_state is None:
            params = readonly(self.model.init(np.random.default_rng(self.config.seed)))
            self._saved_state = TrainState(0, 0, params, self.optimizer.init(params))
        return self._saved_state

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
