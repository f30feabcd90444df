"""Trainer: the one place that holds model, optimizer, backend and data together.

The whole class lives here: its lifecycle (unopened → open → closed, one fit at a time),
in-memory fits (``fit``/``steps``), streams and ``partial_fit``, ``evaluate``, and
checkpoints (``save``/``load``/``restore``). The helpers it drives take explicit arguments:
epochs in ``_epochs``, streams in ``_streaming``, files in ``_checkpoint``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from asynctrain._checkpoint import CheckpointSession, PathLike
from asynctrain._checkpoint._content import Checkpoint, Subject
from asynctrain._checkpoint._session import (
    Resume,
    Writer,
    refuse_reserved,
    restored_settings,
    save_to,
)
from asynctrain._checks import check_bool, check_int
from asynctrain._config import TrainConfig, default_shards
from asynctrain._control import FitControl
from asynctrain._engine import Mode, make_mode
from asynctrain._engine._context import FitParts
from asynctrain._engine._epochs import EpochOrders, collect, run_epochs
from asynctrain._engine._evaluate import EVAL_CHUNK, evaluate_once
from asynctrain._engine._metrics import check_metrics
from asynctrain._engine._update import TrainState, Updater
from asynctrain._events import Callback, Event, FitResult, check_callbacks
from asynctrain._exceptions import ConfigError, ConfigTypeError, StateError
from asynctrain._inputs import (
    ClassWeight,
    DataLike,
    check_class_weight,
    predictions,
    prepare,
    prepare_validation,
    rows_given,
)
from asynctrain._monitor import TRAINING_INTERVAL, LoopLagMonitor
from asynctrain._offloop import off_loop, to_the_end
from asynctrain._streaming._batch import NameRecord
from asynctrain._streaming._sources import Reading, close_unread
from asynctrain._streaming._stream import (
    DEFAULT_BUFFER,
    Source,
    StreamLimits,
    check_source,
    check_streamable,
    stream_events,
)
from asynctrain._types import Params, State
from asynctrain.backends import Backend, get_backend
from asynctrain.backends._base import readonly
from asynctrain.data import Dataset, ParquetStream
from asynctrain.data._frames import FeatureNames
from asynctrain.models import Model
from asynctrain.optim import GradientTransformation
from asynctrain.optim._alias import as_optimizer

__all__ = ["DataLike", "Trainer"]

FIT_LAG_WINDOW = 1_000  # heartbeats behind fit(monitor_lag=True): ~10 s, sorted once


class Trainer:
    """Train a model with data-parallel shards on an asyncio event loop.

    Each step splits its batch into ``shards`` shards, runs one asyncio task per shard
    that offloads the shard's ``loss_and_grad`` to the backend, collects the results
    through an ``asyncio.Queue``, sums them in shard order and applies one optimizer update
    off the loop. Use it as an async context manager to keep the backend open across fits;
    without one, each fit opens and closes what it needs.

    Args:
        model: any object following :class:`~asynctrain.models.Model`.
        optimizer: a :class:`~asynctrain.optim.GradientTransformation`, or a name
            :func:`asynctrain.optim.get` knows (``"adam"``, with its default learning
            rate); default ``adam(1e-3)``.
        backend: ``"thread"`` (default), ``"inline"``, another registered name, or a
            :class:`~asynctrain.backends.Backend` object (which the trainer never closes).
        workers: workers of a backend created by name; default: the usable cores.
        shards: shards per batch; default ``min(4, batch_size)``, independent of workers.
        batch_size: samples per step.
        seed: seeds initialisation and shuffling.
        nonfinite: ``"raise"`` or ``"skip"`` (see :class:`~asynctrain.TrainConfig`).
        shuffle: ``"global"`` (default: each epoch shuffles all rows), ``"shard"``
            (each shard shuffles its own fixed partition of the rows every epoch, so a
            Dask worker holds only its shards' partitions) or ``"none"`` (the rows in
            the order given, every epoch); see :class:`~asynctrain.TrainConfig`.
            Bit-identical on every backend whichever is chosen.
        mode: a mode name, ``"sync"`` (default), ``"local"``, ``"ssp"`` or ``"async"``,
            or a mode object (:mod:`asynctrain.modes`: ``Local(steps=8)``,
            ``SSP(staleness=2)``); see docs/modes.md for what each waits for.
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
        optimizer: GradientTransformation | str | None = None,
        *,
        backend: str | Backend = "thread",
        workers: int | None = None,
        shards: int | None = None,
        batch_size: int = 512,
        seed: int = 0,
        nonfinite: str = "raise",
        shuffle: str = "global",
        mode: str | Mode = "sync",
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
            shuffle=shuffle,
        )
        self.model = model
        self.optimizer = as_optimizer(optimizer)
        self.mode = make_mode(mode, local_steps=local_steps, staleness=staleness)
        if self.config.shuffle == "shard" and self.mode.name == "async":
            raise ConfigError(
                "mode='async' hands each whole batch to one lane, so no shard keeps to one "
                "partition of the rows: use shuffle='shard' with mode 'sync', 'local' or "
                "'ssp', or the default shuffle='global' with 'async'"
            )
        self._backend_spec = backend
        workers = None if workers is None else check_int("workers", workers)
        self._backend, self._owns_backend = get_backend(backend, workers=workers)
        self._updater: Updater | None = None
        self._saved_state: TrainState | None = None
        self._state = State.UNOPENED
        self._running = False
        self._activity = "a fit"  # what runs while _running: a fit, or an evaluation
        self._entered = False  # inside an ``async with`` block
        self._fits: dict[asyncio.Task[Any], asyncio.Future[None]] = {}  # task → fit ended
        # Rows of the data of the current or last fit (or of a checkpoint's, loaded).
        self._samples: int | None = None
        self._partial_lock = asyncio.Lock()  # FIFO: partial_fit calls apply in call order
        self._partials = 0  # partial_fit calls waiting or running
        self._feature_names: FeatureNames | None = None
        # The checkpoint_dir of the running fit: its step-<n>.ckpt files are the fit's.
        self._fit_directory: Path | None = None
        self.lag: LoopLagMonitor | None = None
        """The loop-lag monitor of the running fit (``fit(monitor_lag=True)``), else None."""

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the backend and the update thread for the fits of the block; leaving it
        closes the trainer.

        Raises:
            StateError: the trainer is closed, or already inside an ``async with`` block
                (nesting is refused rather than counted: the inner block's exit would
                close the trainer under the outer one, and a block that closes the
                trainer is its owner; fit inside the outer block instead).
        """
        if self._state is State.CLOSED:
            raise StateError(f"{self!r} is closed; create a new Trainer")
        if self._entered:
            raise StateError(
                f"{self!r} is already open in an `async with` block, whose exit closes "
                "it; fit inside that block without entering the trainer again"
            )
        await self._open()
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._entered = False
        await self.aclose()

    async def aclose(self) -> None:
        """Stop a fit still running, then release the backend (if the trainer created it)
        and the update thread; idempotent.

        A fit running in another task (``asyncio.create_task(trainer.fit(...))``) is
        cancelled and awaited first: it ends with ``CancelledError``, keeping the
        parameters of its last applied step, and nothing it started is left behind.

        Raises:
            StateError: called from inside a fit of this trainer (e.g. a callback): stop
                the fit (a callback returning True) and close the trainer after it.
        """
        if asyncio.current_task() in self._fits:
            raise StateError(
                f"cannot close {self!r} from inside its own fit; return True from a "
                "callback to stop the fit, and close the trainer after it"
            )
        self._state = State.CLOSED  # no fit starts from here on
        fits = dict(self._fits)
        for task in fits:
            task.cancel()
        for task, ended in fits.items():
            # A task that stopped iterating a steps() generator without closing it never
            # ends its fit: waiting for the task too keeps close from hanging on it.
            await asyncio.wait([ended, task], return_when=asyncio.FIRST_COMPLETED)
        await self._release()

    async def _open(self) -> None:
        if self._state is State.OPEN:
            return
        if self._owns_backend and self._backend.state is State.CLOSED:  # closed by its user
            self._backend = self._next_backend()
        if self._saved_state is None and not self._backend.inline:
            # The first open draws the initial parameters and optimizer state (the
            # ``state`` property): array math as large as the model (seconds for a wide
            # one), off the loop so that a service keeps answering meanwhile. The inline
            # backend does all its work on the loop.
            await off_loop(_draw_state, self)
        await self._backend.__aenter__()
        self._updater = Updater(
            self.optimizer,
            self.state,
            nonfinite=self.config.nonfinite,
            inline=self._backend.inline,
        )
        self._state = State.OPEN

    async def _release(self) -> None:
        """Close the updater and a backend the trainer made, to the end whatever cancels
        the caller meanwhile (a second cancel of a cancelled fit, a timeout expiring as a
        fit ends): the cancel is raised once the release is done. Cut short, it left the
        trainer marked open without an updater (its next fit failed on an assertion) and
        its backend half-closed (a stopped worker never killed)."""
        await to_the_end(self._release_now())

    async def _release_now(self) -> None:
        updater, self._updater = self._updater, None
        if updater is not None:
            self._saved_state = updater.state
            await off_loop(updater.close)
        if self._owns_backend:
            await self._backend.aclose()
            self._backend = self._next_backend()
        if self._state is State.OPEN:
            self._state = State.UNOPENED

    def _next_backend(self) -> Backend:
        """A new backend, unopened, for the next fit: of the trainer's kind and of the
        size the closed one had last. So ``trainer.backend`` stays usable between fits
        (``await trainer.backend.resize(n)`` records the next fit's size, as on any
        unopened backend) and a resize made during a fit lasts; a closed one could only
        refuse, naming a backend its user never made."""
        last = self._backend
        return get_backend(self._backend_spec, workers=None if last.inline else last.workers)[0]

    @contextlib.asynccontextmanager
    async def _running_fit(
        self, *, partial: bool = False, activity: str = "a fit"
    ) -> AsyncIterator[None]:
        """Mark the trainer running ``activity`` (a fit or an evaluation: one at a time),
        opening it if it is not."""
        if self._state is State.CLOSED:
            raise StateError(f"{self!r} is closed; create a new Trainer")
        if self._running or (self._partials and not partial):
            running = self._activity if self._running else "partial_fit calls"
            raise StateError(f"{self!r} is already running {running}; await it first")
        self._running, auto = True, self._state is State.UNOPENED
        self._activity = activity
        task, ended = asyncio.current_task(), asyncio.get_running_loop().create_future()
        if task is not None:
            self._fits[task] = ended
        try:
            await self._open()
            yield
        finally:
            self._running = False
            try:
                if auto:
                    await self._release()
            finally:
                self._fits.pop(task, None)  # type: ignore[arg-type]
                ended.set_result(None)

    # -- training --------------------------------------------------------------------------

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
        resume: Resume = False,
        monitor_lag: bool = False,
        metrics: Sequence[str] = (),
        class_weight: ClassWeight = None,
    ) -> FitResult:
        """Train for ``epochs`` epochs and return a :class:`FitResult`.

        Args:
            data: a :class:`~asynctrain.data.Dataset` (with or without
                ``sample_weight``), an ``(X, y)`` pair or an ``(X, y, sample_weight)``
                triple. A weight of k counts like k copies of its row: a step's gradient
                is the weighted sum over its batch divided by the batch's sum of weights
                (see docs/guide.md). ``X`` may be a pandas/polars DataFrame or a pyarrow
                Table (its column names become :attr:`feature_names`, which a later frame
                must match), ``y`` a Series or an Arrow array.
            epochs: epochs to train (an interrupted epoch counts as the first); with
                ``resume=True``, the epochs of the whole run, restored ones included.
            validation: data to evaluate after every epoch (loss and accuracy).
            callbacks: :class:`Callback` objects; one returning True stops the fit.
            checkpoint_dir: save checkpoints (``step-<n>.ckpt``) here: every epoch, or
                every ``checkpoint_every`` steps, and at the end; writes overlap training.
            checkpoint_every: steps between checkpoints (None: once per epoch).
            keep: how many of the latest checkpoints to keep (None: all).
            resume: continue from the latest checkpoint in ``checkpoint_dir``, if any,
                exactly where it left off (parameters, optimizer, data order); its model
                and optimizer settings must equal this trainer's. A run that a callback
                stopped early is over: resuming it trains nothing and returns at once
                (``stopped_early`` set), as resuming a finished run does. ``"params"``:
                take only its parameters (and step, epoch and data position) and start
                the optimizer afresh, so the optimizer or the model's hyperparameters may
                differ; this starts a new run, which trains on after an early stop too.
            monitor_lag: True to measure the event loop's lag during the fit with a
                :class:`~asynctrain.LoopLagMonitor` beating every 10 ms (anything but True
                or False, ``1`` or an interval, is a ConfigTypeError; a 1 ms heartbeat
                took about 9 % of a thread backend's throughput); its p50/p99/max (ms) go
                into ``FitResult.extra`` as ``loop_lag_p50_ms``, ``loop_lag_p99_ms`` and
                ``loop_lag_max_ms`` (over the fit's last 1,000 heartbeats, ~10 s; NaN
                for a fit over before the first), and each EpochEvent carries the p99 so
                far (``loop_lag_p99_ms``).
            metrics: validation metrics to compute after every epoch besides loss and
                accuracy, by name: ``"f1"`` (macro F1) and ``"auc"`` (ROC AUC; one-vs-rest
                macro for more than two classes) for classifiers, ``"r2"`` and ``"mae"``
                for regression; reported as ``val_<name>`` in ``EpochEvent.metrics``
                (see docs/callbacks.md).
            class_weight: classifiers only: ``"balanced"`` (class ``c`` weighs
                ``n / (n_classes_present * n_c)``, with sums of sample weights in place of
                counts for weighted data) or a dict ``{label: weight}`` (labels left out
                weigh 1); multiplies the sample weights. The training data only: the
                validation data keeps its own sample weights.

        Raises:
            DataError, ConfigError: bad data or settings, before any work starts (a
                data frame whose columns are not :attr:`feature_names` included).
            NonFiniteError: a non-finite loss or gradient with ``nonfinite="raise"``.
            CheckpointError: the checkpoint_dir is not writable or another fit holds it,
                a checkpoint could not be written, or the one to resume from is
                unreadable or does not match this trainer.
            StateError: the trainer is closed or already running a fit.

        Example:
            >>> result = await trainer.fit(data, epochs=10, checkpoint_dir="ckpt",
            ...                            resume=True)  # doctest: +SKIP
        """
        epochs = check_int("epochs", epochs)
        callbacks = check_callbacks(callbacks)
        check_bool(
            "monitor_lag",
            monitor_lag,
            means="it turns the fit's loop-lag monitor on (a heartbeat every 10 ms) or off",
        )
        session = CheckpointSession(
            checkpoint_dir,
            every=checkpoint_every,
            keep=keep,
            resume=resume,
            subject=self._checkpoint_subject,
            current=self._current,
            restore=self._restore,
            callbacks=callbacks,
        )
        async with self._monitoring_lag(monitor_lag) as lag, session, self._saving_into(session):
            epochs = await session.resume(epochs, data)
            events = None
            if epochs:
                events = self.steps(
                    data,
                    epochs=epochs,
                    validation=validation,
                    metrics=metrics,
                    class_weight=class_weight,
                )
            result = await collect(
                self._current,
                events,
                callbacks,
                # No checkpoint directory: nothing to do after an event, and no coroutine
                # to create and await on every step for it.
                session.after if session.directory is not None else None,
                finish=session.finish,
                after_start=session.restore_callbacks,
                control=FitControl(self),
            )
        if lag is not None:
            result.extra.update(lag.stats().as_dict("loop_lag_"))
        if session.resumed_stopped:  # the rerun of a run a callback stopped: still stopped
            result = dataclasses.replace(result, stopped_early=True)
        return self._named(result)

    @contextlib.asynccontextmanager
    async def _saving_into(self, session: CheckpointSession) -> AsyncIterator[None]:
        """Keep :meth:`save` out of the fit's checkpoint_dir while the fit runs (a second
        fit, refused as the trainer runs one, leaves the first one's alone)."""
        previous = self._fit_directory
        if previous is None:
            self._fit_directory = session.directory
        try:
            yield
        finally:
            self._fit_directory = previous

    @contextlib.asynccontextmanager
    async def _monitoring_lag(self, on: bool) -> AsyncIterator[LoopLagMonitor | None]:
        """A loop-lag monitor for the fit when ``on`` (its epoch events report it too)."""
        if not on:
            yield None
            return
        async with LoopLagMonitor(interval=TRAINING_INTERVAL, window=FIT_LAG_WINDOW) as lag:
            self.lag = lag
            try:
                yield lag
            finally:
                self.lag = None

    async def steps(
        self,
        data: DataLike,
        *,
        epochs: int = 1,
        validation: DataLike | None = None,
        metrics: Sequence[str] = (),
        class_weight: ClassWeight = None,
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
        # The first epoch's order is drawn (off the loop) while the data is prepared.
        orders = self._orders(rows_given(data), epochs)
        try:
            train = await self._prepare(data, "data", self._feature_names, class_weight)
            features = train.feature_names or self._feature_names
            val = (
                None
                if validation is None
                else await self._prepare(validation, "validation", features)
            )
            names = check_metrics(metrics, self.model, validation=val is not None)
            self._check_picklable()
            # Close the inner generator as soon as this one stops, so the fit's shared
            # arrays are released now rather than whenever the garbage collector gets to it.
            async with (
                self._running_fit(),  # opens the trainer first: then its parts exist
                contextlib.aclosing(
                    run_epochs(self._parts(), train, val, epochs, names, orders)
                ) as events,
            ):
                self._continue_epoch_on(len(train))
                self._samples, self._feature_names = len(train), features
                async for event in events:
                    yield event
        finally:
            if orders is not None:
                await orders.aclose()  # if the fit never started: its first order's draw

    def _continue_epoch_on(self, rows: int) -> None:
        """Start an interrupted epoch over if this fit's data is not the data it was
        interrupted on (another number of rows; the trainer is running).

        The epoch's next batch is a position in that data's order, which means nothing in
        this data's: continuing there would skip rows of it, or all of them (a fit that
        trained nothing and closed the epoch). A checkpoint resumed or loaded brings the
        rows of the data it was taken on (a resume refuses other data before this)."""
        state = self.state
        if state.batch and self._samples is not None and self._samples != rows:
            assert self._updater is not None, "the fit has opened the trainer"
            self._updater.state = state._replace(batch=0)

    # -- streams and partial_fit -----------------------------------------------------------

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
        class_weight: ClassWeight = None,
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
                pairs or ``(X, y, sample_weight)`` triples of arrays, or Datasets; either
                every batch has weights or none has. A sync source's ``next()`` runs off
                the loop.
            max_steps: stop after this many steps (None: no limit).
            max_samples: train on at most the stream's first ``max_samples`` rows.
            validate_every: close a period (validate, report an EpochEvent, call
                ``on_epoch`` callbacks) every this many steps; None: once, at the end.
            validation: data to evaluate at the end of each period.
            callbacks: :class:`Callback` objects; one returning True stops the fit.
            buffer: validated batches held before the producer waits, >= 1.
            class_weight: a dict ``{label: weight}`` multiplying each row's weight by its
                class's (classifiers only). ``"balanced"`` is refused: it needs the label
                counts of the whole stream, unknown in advance.

        Raises:
            DataError: a bad batch, naming its number (counting from 0); no part of it is
                trained, and the parameters are those after every full batch before it.
            ConfigError, ConfigTypeError: a bad setting, or a source that is not a stream.
            StateError: the trainer is closed or already running a fit, or ``source`` is
                an iterator (a generator) that another running fit reads (left open for
                it; see docs/streaming.md).
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
        try:
            callbacks = check_callbacks(callbacks)
        except BaseException:
            await self._close_unread(source)
            raise
        events = self.stream_steps(
            source,
            max_steps=max_steps,
            max_samples=max_samples,
            validate_every=validate_every,
            validation=validation,
            buffer=buffer,
            class_weight=class_weight,
        )
        # The callbacks' on_fit_start runs before the events are first asked for: if it
        # fails (or the fit is cancelled there), stream_steps never started, so it never
        # took the source over to close it; the fit closes it, as a refused one does.
        started = False

        def start() -> None:
            nonlocal started
            started = True

        try:
            result = await collect(
                self._current, events, callbacks, after_start=start, control=FitControl(self)
            )
        except BaseException:
            if not started:
                await self._close_unread(source)
            raise
        return self._named(result)

    async def stream_steps(
        self,
        source: Source,
        *,
        max_steps: int | None = None,
        max_samples: int | None = None,
        validate_every: int | None = None,
        validation: DataLike | None = None,
        buffer: int = DEFAULT_BUFFER,
        class_weight: ClassWeight = None,
    ) -> AsyncGenerator[Event, None]:
        """Train like :meth:`fit_stream`, yielding a :class:`StepEvent` per step and an
        :class:`EpochEvent` per period. Close it when you stop early
        (``contextlib.aclosing``): that stops consuming the source and closes it.

        A fit refused before it reads the source (a bad setting, a trainer that cannot
        train a stream or is already running) closes it too, as one that ran does.
        """
        source = check_source(source)
        async with contextlib.AsyncExitStack() as stack:
            reading = Reading(source)  # before anything can close it: not another fit's
            stack.callback(reading.release)
            try:
                limits = StreamLimits(
                    max_steps=max_steps,
                    max_samples=max_samples,
                    validate_every=validate_every,
                    buffer=buffer,
                )
                check_streamable(self.config, self.mode)
                check_class_weight(self.model, class_weight, where="a stream")
                features = self._feature_names
                val = (
                    None
                    if validation is None
                    else await self._prepare(validation, "validation", features)
                )
                record = NameRecord(features if val is None else val.feature_names or features)
                if isinstance(source, ParquetStream):
                    # Its batches are plain arrays, but its columns have names: record
                    # them, so a frame given to predict later is checked against them.
                    read = source.feature_names
                    names = read() if self._backend.inline else await off_loop(read)
                    record.meet(names, name="X")
                self._check_picklable()
                await stack.enter_async_context(self._running_fit())
            except BaseException:
                reading.release()  # else close_unread would take it for another fit's
                await self._close_unread(source)
                raise
            # From here the feed reads the source and closes it. The events are closed
            # explicitly, not at garbage collection: that stops the feed.
            events = await stack.enter_async_context(
                contextlib.aclosing(
                    stream_events(
                        self._parts(), source, limits, val, names=record, class_weight=class_weight
                    )
                )
            )
            try:
                async for event in events:
                    yield event
            finally:
                self._feature_names = record.names

    async def _close_unread(self, source: Source) -> None:
        """Close a stream a refused fit was handed (see ``_sources.close_unread``)."""
        await close_unread(source, inline=self._backend.inline)

    async def partial_fit(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        sample_weight: npt.ArrayLike | None = None,
        *,
        class_weight: ClassWeight = None,
    ) -> FitResult:
        """One update pass over ``(X, y)``: ``ceil(len(X) / batch_size)`` steps, in order.

        ``sample_weight`` weighs the rows (as in :meth:`fit`); ``class_weight`` is a dict
        ``{label: weight}`` (``"balanced"`` is refused: one call does not know the label
        counts of all the data).

        Safe to call from many request handlers at once: calls are applied one at a time,
        whole, in the order they were made (FIFO), each exactly once. It refuses to run
        while a fit is running, and a fit refuses to start while calls are pending.
        Keep the trainer open (``async with``) so calls share one backend.

        Returns:
            A FitResult of this call (``steps``, ``loss``, ``params`` after it).

        Raises:
            DataError, DataTypeError: ``(X, y)`` is unusable; nothing of it is applied.
            ConfigError: a bad ``class_weight``, or weights for a model without
                ``supports_sample_weight``.
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
                f"{self!r} is running {self._activity}; partial_fit does not wait behind "
                f"{self._activity}: await it first, or feed the rows to fit_stream"
            )
        self._check_picklable()
        check_streamable(self.config, self.mode)
        check_class_weight(self.model, class_weight, where="partial_fit")
        batch = (X, y) if sample_weight is None else (X, y, sample_weight)
        self._partials += 1
        try:
            async with self._partial_lock, self._running_fit(partial=True):
                record = NameRecord(self._feature_names)
                events = stream_events(
                    self._parts(),
                    [batch],
                    StreamLimits(),
                    None,
                    describe=lambda _: "partial_fit data",
                    names=record,
                    class_weight=class_weight,
                )
                try:
                    result = await collect(self._current, events, ())
                finally:
                    self._feature_names = record.names
                return self._named(result)
        finally:
            self._partials -= 1

    # -- evaluation ------------------------------------------------------------------------

    async def evaluate(
        self,
        data: DataLike,
        *,
        metrics: Sequence[str] = (),
        batch_size: int | None = None,
    ) -> dict[str, float]:
        """Evaluate the parameters of the last fully applied step on ``data``.

        The numbers a fit reports for ``validation=data``, computed the same way: ``data``
        is checked as validation data is (one class is enough), its rows are evaluated in
        chunks of ``batch_size`` on the trainer's backend (on workers, as validation is;
        the inline backend's on the loop) and the metrics are combined on the update
        thread. With the default ``batch_size`` the values equal, bit for bit, the
        ``val_*`` values a fit's last epoch reports for the same data and parameters.

        Args:
            data: what ``fit(validation=...)`` takes: a
                :class:`~asynctrain.data.Dataset` (dense or sparse, with or without
                ``sample_weight``), an ``(X, y)`` pair or an ``(X, y, sample_weight)``
                triple. ``X`` may be a data frame: after a fit on one, it needs the
                columns of :attr:`feature_names`, in that order.
            metrics: metrics besides loss and accuracy, by name, as in
                :meth:`fit`: ``"f1"`` (macro F1) and ``"auc"`` (ROC AUC; one-vs-rest
                macro for more than two classes) for classifiers, ``"r2"`` and ``"mae"``
                for regression.
            batch_size: rows per evaluation task; default 8,192, validation's. Another
                size changes only the order the chunks' sums are added in (the last
                bits of the loss and accuracy).

        Returns:
            ``{"loss": ..., "accuracy": ..., <metric>: ...}``: the mean loss (the model's
            training objective, its L2 penalty included, as ``val_loss``), the accuracy
            (classifiers only: a regression model's mapping has no ``"accuracy"``), then
            each of ``metrics`` in the order given. The names are those of a fit's
            ``val_*`` values without the prefix. Loss and accuracy are weighted means
            under the data's sample weights; the named metrics are unweighted.

        Raises:
            StateError: the trainer is closed, runs a fit (or another evaluation), or
                has not applied a step yet (fit it, or load a checkpoint).
            ConfigError, ConfigTypeError: an unknown metric, one for the other kind of
                model, ``"auc"`` for a model without ``predict_proba``, a bad
                ``batch_size``, or sample weights for a model that cannot weigh rows.
            DataError, DataTypeError: ``data`` is unusable for the model (shape,
                feature count, labels out of range, NaN/Inf, a frame whose columns are
                not :attr:`feature_names`); the message says it is the evaluation data.

        Example:
            >>> import asynctrain as at
            >>> train, test = at.data.synthetic("logreg", n=2000).split(0.25)
            >>> async def main():
            ...     model = at.models.LogisticRegression(64)
            ...     async with at.Trainer(model, "adam", backend="inline") as trainer:
            ...         await trainer.fit(train, epochs=2)
            ...         return await trainer.evaluate(test, metrics=["f1", "auc"])
            >>> sorted(at.run(main()))
            ['accuracy', 'auc', 'f1', 'loss']
        """
        chunk = EVAL_CHUNK if batch_size is None else check_int("batch_size", batch_size)
        names = check_metrics(metrics, self.model, validation=True)
        self._check_trained("evaluate", busy=True)
        evaluated = await self._prepare(data, "evaluation", self._feature_names)
        self._check_picklable()
        async with self._running_fit(activity="an evaluation"):
            assert self._updater is not None, "the trainer is open"
            result = await evaluate_once(
                self.model,
                self._backend,
                evaluated,
                self.state.params,
                metrics=names,
                off_loop=self._updater.call,
                chunk=chunk,
            )
        values = {"loss": result.loss}
        if self.model.n_classes is not None:
            values["accuracy"] = result.accuracy
        return values | result.metrics

    def _check_trained(self, what: str, *, busy: bool = False) -> None:
        """Refuse ``what`` (predict, evaluate) before the first applied step, and with
        ``busy`` also on a closed trainer or one running a fit."""
        if busy and self._state is State.CLOSED:
            raise StateError(f"{self!r} is closed; create a new Trainer")
        if busy and (self._running or self._partials):
            running = self._activity if self._running else "partial_fit calls"
            raise StateError(
                f"cannot {what} with {self!r} while it runs {running}; await it first, "
                "or evaluate every epoch of a fit with fit(validation=data, metrics=[...])"
            )
        if self.state.step == 0:
            raise StateError(
                f"{self!r} has not trained yet; fit it or load a checkpoint before {what}"
            )

    # -- checkpoints -----------------------------------------------------------------------

    async def save(self, path: PathLike) -> Path:
        """Save a checkpoint of the last fully applied step; return the file written.

        The copy is taken between updates, so this may be awaited during a fit (from a
        callback, or another task). The write is atomic and runs off the event loop.

        Args:
            path: the file to write, or an existing directory to write
                ``step-<n>.ckpt`` into. A path ending in a separator (``"run/"``)
                names a directory, which must exist.

        Raises:
            CheckpointError: the write failed (the previous file at ``path`` is intact),
                ``path`` ends in a separator and is no directory, or during a fit with a
                ``checkpoint_dir``, ``path`` would be a ``step-<n>.ckpt`` of that
                directory (the fit's own checkpoints go there, with its callbacks'
                states; a save from here would lack them yet be taken by a resume), or
                ``path`` is a ``step-<n>.ckpt`` that keeps what a save does not (a fit's
                final checkpoint, with its callbacks' states or its early-stop record;
                the file is left as it is).

        Example:
            >>> await trainer.save("run/final.ckpt")  # doctest: +SKIP
        """
        with Writer() as writer:
            payload = await writer.snapshot(self._checkpoint_subject())
            save = functools.partial(save_to, reserved=self._fit_directory)
            return await writer.run(save, path, payload, writer.cancel)

    def _check_save(self, path: PathLike) -> None:
        """Refuse now a :meth:`save` to ``path`` that the running fit's checkpoint_dir
        would refuse (:class:`FitControl.check_save <asynctrain.FitControl>`)."""
        refuse_reserved(path, self._fit_directory)

    async def load(self, path: PathLike) -> None:
        """Continue from the checkpoint at ``path`` (a file, or a directory's latest).

        Raises:
            CheckpointError: unreadable, not a checkpoint, or not matching this trainer
                (every mismatch of shards, batch size, seed, mode, model or optimizer).
            StateError: a fit is running.

        Example:
            >>> await trainer.load("run/")  # doctest: +SKIP
        """
        self._check_idle("load a checkpoint into")
        with Writer() as writer:
            await self._load(writer, await writer.run(Checkpoint.read, path))

    @classmethod
    async def restore(
        cls,
        path: PathLike,
        model: Model,
        optimizer: GradientTransformation | None = None,
        **options: Any,
    ) -> Self:
        """Create a trainer that continues from the checkpoint at ``path``.

        ``batch_size``, ``shards``, ``seed``, ``nonfinite``, ``shuffle``, ``mode`` and the
        mode's options default to the checkpoint's; ``options`` are the other Trainer arguments
        (``backend``, ...).

        Raises:
            CheckpointError: as :meth:`load`.

        Example:
            >>> trainer = await Trainer.restore("run/", model, adam(1e-2))  # doctest: +SKIP
        """
        with Writer() as writer:
            checkpoint = await writer.run(Checkpoint.read, path)
            construct: Callable[..., Self] = cls  # the Trainer's constructor
            trainer = construct(model, optimizer, **restored_settings(checkpoint, options))
            await trainer._load(writer, checkpoint)
        return trainer

    async def _load(self, writer: Writer, checkpoint: Checkpoint) -> None:
        state = await writer.run(checkpoint.train_state, self._checkpoint_subject())
        self._restore(state, checkpoint.feature_names, checkpoint.samples)

    def _restore(
        self, state: TrainState, feature_names: FeatureNames | None, samples: int | None
    ) -> None:
        """Continue from a checkpoint's ``state``, trained on its ``feature_names`` and
        on data of ``samples`` rows (not those of this trainer's last fit): a fit on data
        of other rows starts an interrupted epoch over, and a save records them (a
        mid-epoch file without them is refused on reading)."""
        self._set_state(state)
        self._feature_names, self._samples = feature_names, samples

    def _checkpoint_subject(self) -> Subject:
        return Subject(
            self.model,
            self.optimizer,
            self.config,
            self.mode,
            self._samples,
            self.state,
            self._updater,
            feature_names=self._feature_names,
        )

    def _check_idle(self, what: str) -> None:
        if self._running:
            raise StateError(f"cannot {what} {self!r} while it runs a fit; await it first")

    def _set_state(self, state: TrainState) -> None:
        self._check_idle("change the state of")
        if self._updater is not None:
            self._updater.state = state
        else:
            self._saved_state = state

    # -- state and inputs ------------------------------------------------------------------

    async def _prepare(
        self,
        data: DataLike,
        name: str,
        feature_names: FeatureNames | None,
        class_weight: ClassWeight = None,
    ) -> Dataset:
        """``data`` made ready for the model by :func:`prepare`, off the loop: it scans,
        and converting to the model's dtype copies, all of X (with the inline backend, on
        the loop, as all that backend's work). A frame must have ``feature_names``.
        ``name="validation"`` (or ``"evaluation"``) prepares data to evaluate
        (:func:`prepare_validation`)."""
        work: Callable[[], Dataset]
        if name in ("validation", "evaluation"):
            work = functools.partial(
                prepare_validation, self.model, data, feature_names=feature_names, name=name
            )
        else:
            work = functools.partial(
                prepare,
                self.model,
                data,
                name=name,
                feature_names=feature_names,
                class_weight=class_weight,
            )
        if self._backend.inline:
            return work()
        return await off_loop(work)

    def _orders(self, rows: int | None, epochs: int) -> EpochOrders | None:
        """The orders of the next ``epochs`` epochs over ``rows`` rows, drawing ahead from
        now on (None if ``rows`` is unknown, or the backend draws on the loop)."""
        if rows is None or self._backend.inline:
            return None
        first = self.state.epoch
        return EpochOrders(rows, self.config, range(first, first + epochs), ahead=True)

    def _parts(self) -> FitParts:
        """What the engine needs for one fit; the trainer is open."""
        assert self._updater is not None, "open the trainer first"
        return FitParts(self.model, self._backend, self._updater, self.mode, self.config, self.lag)

    def _current(self) -> TrainState:
        return self.state

    def _named(self, result: FitResult) -> FitResult:
        return dataclasses.replace(result, feature_names=self._feature_names)

    def _check_picklable(self) -> None:
        """Refuse, before any work, a model the backend's workers could not receive."""
        self._backend.check_picklable(self.model)

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
    def feature_names(self) -> FeatureNames | None:
        """The names of the feature columns the parameters were trained on, in order.

        Set by the first fit on a data frame (its column names), restored by ``load``,
        ``restore`` and ``resume`` from a checkpoint, which saves them; None while the
        trainer has seen only arrays. Data frames given afterwards (to fit, as
        validation, in a stream, to predict) must have these columns in this order; a
        plain array is taken by position.

        Example:
            >>> import pandas as pd
            >>> import asynctrain as at
            >>> frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
            >>> async def main():
            ...     trainer = at.Trainer(at.models.LogisticRegression(2), backend="inline")
            ...     await trainer.fit((frame, [0, 0, 1, 1]))
            ...     return trainer.feature_names
            >>> at.run(main())
            ('a', 'b')
        """
        return self._feature_names

    @property
    def workers(self) -> int:
        """Workers of the backend in use."""
        return self._backend.workers

    @property
    def backend(self) -> Backend:
        """The backend in use (created from its name, or the one given). Between fits of
        a trainer that made it from a name, the next fit's: unopened, of the last size
        (a resize of it sets the next fit's size)."""
        return self._backend

    @property
    def params(self) -> Params:
        """The parameters of the last fully applied step (read-only arrays)."""
        return self.state.params

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """Predict with the parameters of the last fully applied step.

        ``X`` may be a data frame: after a fit on one, it needs the columns of
        :attr:`feature_names`, in that order (a plain array is taken by position).

        Runs in the caller's thread; from a coroutine on a busy loop, prefer
        ``await asyncio.to_thread(trainer.predict, X)``.

        Raises:
            StateError: the trainer has not applied a step yet (fit it, or load a
                checkpoint), so there is nothing trained to predict with.
            DataError, DataTypeError: ``X`` is not a finite (n, n_features) table (see
                :func:`~asynctrain.models.check_inputs`), or a frame whose columns are
                not :attr:`feature_names` (named in the message).

        Example:
            >>> trainer.predict(X[:5])  # doctest: +SKIP
            array([3, 1, 0, 7, 7])
        """
        self._check_trained("predict")
        return predictions(self.model, self.state.params, X, self._feature_names)

    def __repr__(self) -> str:
        backend = f"{self._backend.name}({self._backend.workers})"
        running = " running" if self._running else ""
        return (
            f"<Trainer step={self.state.step} mode={self.mode.name} backend={backend} "
            f"{self._state}{running}>"
        )


def _draw_state(trainer: Trainer) -> None:
    """Draw ``trainer``'s initial state, which its ``state`` property keeps."""
    trainer.state  # noqa: B018 (a property that draws and keeps the state)
