"""Trainer: the one place that holds model, optimizer, backend and data together.

The class is assembled from small parts: its lifecycle (``_trainer_base``), in-memory
epochs (``_epochs``, driven from here), streams and partial_fit (``_stream_methods``) and
checkpoints (``_checkpoint``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence

from asynctrain._checkpoint import CheckpointMethods, CheckpointSession, PathLike
from asynctrain._checks import check_int
from asynctrain._config import TrainConfig, default_shards
from asynctrain._engine import make_mode
from asynctrain._epochs import collect, run_epochs
from asynctrain._events import Callback, Event, FitResult
from asynctrain._exceptions import ConfigTypeError
from asynctrain._monitor import LoopLagMonitor
from asynctrain._stream_methods import StreamMethods
from asynctrain._trainer_base import DataLike
from asynctrain.backends import Backend
from asynctrain.models import Model
from asynctrain.optim import GradientTransformation, adam

__all__ = ["DataLike", "Trainer"]

FIT_LAG_WINDOW = 10_000  # heartbeats behind fit(monitor_lag=True): ~10 s, sorted once


class Trainer(StreamMethods, CheckpointMethods):
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
        super().__init__(backend, None if workers is None else check_int("workers", workers))

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
                ``loop_lag_max_ms`` (over the fit's last 10,000 heartbeats, ~10 s), and
                each EpochEvent carries the p99 so far (``loop_lag_p99_ms``).

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
                self.lag = lag  # epoch events report it too
                try:
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
                finally:
                    self.lag = None
            result.extra.update(lag.stats().as_dict("loop_lag_"))
            return result
        epochs = check_int("epochs", epochs)
        session = CheckpointSession(
            self, checkpoint_dir, every=checkpoint_every, keep=keep, resume=resume
        )
        async with session:
            epochs = await session.resume(epochs, data)
            events = self.steps(data, epochs=epochs, validation=validation) if epochs else None
            result = await collect(self, events, callbacks, session)
            await session.finish()
        return result

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
        self._check_picklable()
        # Close the inner generator as soon as this one stops, so the fit's shared arrays
        # are released now rather than whenever the garbage collector gets to it.
        async with (
            self._running_fit(),
            contextlib.aclosing(run_epochs(self, train, val, epochs)) as events,
        ):
            self._samples = len(train)
            async for event in events:
                yield event
