"""Job: one named training run inside a :class:`~asynctrain.TrainingService`.

A job owns a :class:`~asynctrain.Trainer` on the service's shared backend, its event
stream and its outcome (result, error, or the parameters it had when cancelled). The
service owns the job's task: it creates it when a running slot is free and settles the
job when the task ends.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple

import numpy.typing as npt

from asynctrain._engine._update import TrainState
from asynctrain._events import Callback, EpochEvent, FitResult, StepEvent
from asynctrain._exceptions import StateError
from asynctrain._inputs import predictions
from asynctrain._offloop import off_loop
from asynctrain._serving._broadcast import Broadcast, Lagged
from asynctrain._serving._metrics import StepCounters
from asynctrain._trainer import Trainer
from asynctrain._types import Params
from asynctrain.data import Dataset

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: tuple[JobStatus, ...] = ("done", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """A job changed status; the last event of every job's stream is a finished status.

    Attributes:
        job: the job's name.
        status: ``"queued"``, ``"running"``, ``"done"``, ``"failed"`` or ``"cancelled"``.
        step: steps the job had applied when its status changed.
        error: ``"Type: message"`` of a failed job's error, else None.
    """

    job: str
    status: JobStatus
    step: int
    error: str | None = None
    kind: Literal["status"] = "status"


JobEvent = StepEvent | EpochEvent | StatusEvent | Lagged
"""What :meth:`Job.events` yields; tell them apart by ``event.kind``."""


class Prediction(NamedTuple):
    """Predictions and the parameter version they were computed from (one whole version)."""

    values: npt.NDArray[Any]
    step: int
    version: int


class Job:
    """A training job: its status, live events, parameters, predictions and outcome.

    Created by :meth:`TrainingService.start <asynctrain.TrainingService.start>`, never
    directly. ``status`` moves ``queued → running → done | failed | cancelled`` (or
    straight from ``queued`` to ``cancelled``).

    Example:
        >>> job = await service.start("a", model, data, epochs=3)  # doctest: +SKIP
        >>> async for event in job.events():  # doctest: +SKIP
        ...     print(event.kind)
        >>> (await job.predict(X)).values  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        trainer: Trainer,
        data: Dataset,
        fit: dict[str, Any],
        *,
        history: int,
        buffer: int,
        counters: StepCounters | None = None,
        on_settle: Callable[[Job], None] | None = None,
    ) -> None:
        self.name = name
        self.status: JobStatus = "queued"
        self.created = time.time()
        self.epochs: list[EpochEvent] = []
        self.last_step: StepEvent | None = None
        self._trainer = trainer
        self._data: Dataset | None = data
        self._fit = fit
        self.checkpoint_dir: Path | None = fit.get("checkpoint_dir")
        """The job's checkpoint directory (resolved), else None; kept once it finishes."""
        self._stream: Broadcast[JobEvent] = Broadcast(
            history=history, buffer=buffer, coalesce=_is_progress
        )
        self._done = asyncio.Event()
        self._opened = asyncio.Event()  # set once it has parameters, or has finished
        self._live = False  # the trainer is open: its state is the job's state
        self._final: TrainState | None = None
        self._result: FitResult | None = None
        self._error: BaseException | None = None
        self._error_traceback: TracebackType | None = None  # the job's own, kept as it was
        self._task: asyncio.Task[None] | None = None
        self._counters = StepCounters() if counters is None else counters
        self._on_settle = on_settle  # the service's: a job cancelled while queued
        self._announce()

    # -- what a caller reads -------------------------------------------------------------

    @property
    def error(self) -> BaseException | None:
        """The exception a failed job raised (kept with its traceback), else None."""
        return self._error

    @property
    def done(self) -> bool:
        """True once the job is done, failed or cancelled."""
        return self.status in FINISHED

    @property
    def state(self) -> TrainState:
        """The last fully applied :class:`~asynctrain.TrainState` (one whole version).

        Raises:
            StateError: the job has not started training (queued, or failed to start).
        """
        if self._live:
            return self._trainer.state
        if self._final is None:
            raise StateError(f"job {self.name!r} is {self.status} and has no parameters yet")
        return self._final

    @property
    def params(self) -> Params:
        """The latest parameters; a cancelled job keeps those of its last applied step."""
        return self.state.params

    @property
    def step(self) -> int:
        """Steps applied so far (0 before training starts)."""
        return self.state.step if self._live or self._final is not None else 0

    def events(self, *, rate: float | None = None) -> AsyncGenerator[JobEvent, None]:
        """Iterate over the job's recent events, then live ones, until it finishes.

        A subscriber joining late first receives the recent history. A slow one never
        holds training back: it loses its oldest unread events and receives a
        :class:`~asynctrain.Lagged` marker instead. Close it when you stop early
        (``contextlib.aclosing``) to unsubscribe at once.

        Args:
            rate: at most this many step events a second for this subscriber (a
                browser needs a few, a fast fit makes hundreds): of steps arriving
                faster it receives the latest, and always the latest step before an
                epoch or status event. Epoch and status events are never held back.
                None (default): every step event.

        Raises:
            ConfigError, ConfigTypeError: ``rate`` is not a positive number.

        Example:
            >>> async for event in job.events(rate=4):  # doctest: +SKIP
            ...     print(event.kind, getattr(event, "step", None))
        """
        return self._stream.subscribe(rate=rate)

    async def wait(self) -> JobStatus:
        """Wait until the job finishes, whatever the outcome; return its status."""
        await self._done.wait()
        return self.status

    async def result(self) -> FitResult:
        """Wait for the job and return its :class:`~asynctrain.FitResult`.

        Raises:
            BaseException: a failed job's own error (type and traceback kept).
            StateError: the job was cancelled (its parameters stay in ``job.params``).
        """
        await self.wait()
        if self._error is not None:
            # From its own traceback each time: a raise appends the raising frames to the
            # error's traceback, so every call (a request polling a failed job) grew it,
            # keeping each caller's frames and their locals alive: 200 calls, 160 MB.
            raise self._error.with_traceback(self._error_traceback)
        if self._result is None:
            raise StateError(
                f"job {self.name!r} was cancelled at step {self.step}; "
                "its last parameters are in job.params"
            )
        return self._result

    def cancel(self) -> bool:
        """Ask the job to stop; False if it had already finished.

        A queued job is cancelled at once; a running one stops after the step in
        progress (await :meth:`wait`), keeping the parameters of its last applied step.
        True says the request was made, not how the job ends: one whose fit had already
        returned (its trainer closing) still ends ``done``, with its result; as many
        calls as you like, from any number of tasks, ask the same.
        """
        if self.status == "queued":
            self._settle("cancelled")
            return True
        if self._task is not None and not self._task.done():
            return self._task.cancel()
        return False

    async def predict(self, X: npt.ArrayLike) -> Prediction:
        """Predict ``X`` from one consistent snapshot of the latest parameters.

        The snapshot is taken once, on the loop; the math runs in a thread.

        A running job whose trainer is still opening is waited for (its first
        prediction then comes from its initial parameters, step 0).

        Raises:
            StateError: the job has no parameters yet (queued), or failed before it had
                any.
            DataError: ``X`` is not a finite ``(n, *row_shape)`` array (``(n, n_features)``
                for a model of tables).
        """
        if self.status == "running" and not self._live and self._final is None:
            # Running, its trainer still opening (its initial parameters drawn in a
            # thread): wait for them rather than refuse a running job as if queued.
            await self._opened.wait()
        state = self.state
        model = self._trainer.model
        names = self._trainer.feature_names
        values = await off_loop(predictions, model, state.params, X, names)
        return Prediction(values, state.step, state.version)

    # -- what the service drives ---------------------------------------------------------

    async def _run(self) -> None:
        """Train to the end; record the outcome (the service settles the status).

        Any error but a cancel is the job's outcome, kept for :meth:`result`, not the
        service's. As an asyncio task does, a ``SystemExit`` or ``KeyboardInterrupt`` is
        recorded too and then raised on, out of the event loop, which it stops.
        """
        assert self._data is not None
        try:
            async with self._trainer as trainer:
                self._live = True
                self._opened.set()
                try:
                    callbacks = [*self._fit.pop("callbacks", ()), _Publish(self)]
                    self._result = await trainer.fit(self._data, callbacks=callbacks, **self._fit)
                finally:
                    self._final, self._live = trainer.state, False
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise

    def _begin(self, task: asyncio.Task[None]) -> None:
        self._task = task
        self.status = "running"
        self._announce()

    def _settle_outcome(self) -> None:
        """Settle a job whose task ended: failed, done, or else cancelled.

        A task cancelled before it ever ran recorded nothing and counts as cancelled; one
        cancelled after its fit returned (while closing the trainer) still counts as done.
        """
        if self._error is not None:
            self._settle("failed")
        else:
            self._settle("cancelled" if self._result is None else "done")

    def _settle(self, status: JobStatus) -> None:
        if self.done:
            return
        self.status = status
        self._release()
        error = None if self._error is None else f"{type(self._error).__name__}: {self._error}"
        self._stream.publish(StatusEvent(self.name, status, self.step, error))
        self._stream.close()
        self._opened.set()
        self._done.set()
        if self._on_settle is not None:
            self._on_settle(self)

    def _release(self) -> None:
        """Drop everything that holds the dataset: a finished job keeps parameters only.

        The ended task (its stored CancelledError) and the error's traceback frames hold
        the fit's locals, the dataset among them; its shared memory is freed only once
        nothing refers to it. The error keeps its type, message and traceback lines.
        """
        self._data, self._fit, self._task = None, {}, None
        if self._error is not None:
            _clear_frames(self._error)
            self._error_traceback = self._error.__traceback__

    def _announce(self) -> None:
        self._stream.publish(StatusEvent(self.name, self.status, self.step))

    def __repr__(self) -> str:
        return f"<Job {self.name!r} {self.status} step={self.step}>"


def _is_progress(event: JobEvent) -> bool:
    """Step events: a rate-limited subscriber may skip one for a later one."""
    return event.kind == "step"


class _Publish(Callback):
    """Hands every training event to the job's stream and keeps its latest progress."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.since: float | None = None  # the job's last step; none yet

    def on_step(self, event: StepEvent) -> None:
        now = time.perf_counter()
        # The first step's time would be the job's start-up (backend, data, first touches).
        seconds = None if self.since is None else now - self.since
        self.job._counters.add_step(event.samples, seconds)
        self.since = now
        self.job.last_step = event
        self.job._stream.publish(event)

    def on_epoch(self, event: EpochEvent) -> None:
        self.job.epochs.append(event)
        self.job._stream.publish(event)


def _clear_frames(error: BaseException) -> None:
    """Clear the locals of every finished frame in ``error``'s tracebacks, causes and groups."""
    pending, seen = [error], set()
    while pending:
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        pending += [e for e in (exc.__cause__, exc.__context__) if e is not None]
        if isinstance(exc, BaseExceptionGroup):
            pending += exc.exceptions
