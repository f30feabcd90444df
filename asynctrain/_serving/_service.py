"""TrainingService: named training jobs on one shared backend, for long-running services.

The service owns everything it starts: one backend (a pool shared by every job), one task
per running job, a FIFO queue of jobs waiting for a running slot, and a loop-lag monitor
on its event loop. ``aclose`` cancels every job, waits for each to stop, and closes the
backend it created, so nothing is left running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import difflib
import functools
import inspect
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Self

from asynctrain._checkpoint import PathLike, Resume, checked_options
from asynctrain._checks import check_int
from asynctrain._events import Callback, check_callbacks
from asynctrain._exceptions import CheckpointError, ConfigError, ConfigTypeError, StateError
from asynctrain._inputs import ClassWeight, DataLike, prepare, prepare_validation
from asynctrain._monitor import TRAINING_INTERVAL, LagStats, LoopLagMonitor
from asynctrain._offloop import off_loop
from asynctrain._serving._job import FINISHED, Job
from asynctrain._serving._metrics import (
    ServiceMetrics,
    StepCounters,
    cumulative_buckets,
    shared_memory_bytes,
)
from asynctrain._trainer import Trainer
from asynctrain._types import State
from asynctrain.backends import Backend, get_backend
from asynctrain.models import Model
from asynctrain.optim import GradientTransformation

_NOT_PER_JOB = ("backend", "workers")


@functools.cache
def _job_trainer_options() -> tuple[str, ...]:
    """The Trainer settings a job takes as ``start(**trainer_options)``."""
    parameters = inspect.signature(Trainer).parameters.values()
    keyword = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return tuple(name for name in keyword if name not in _NOT_PER_JOB)


@functools.cache
def _start_options() -> tuple[str, ...]:
    """Every option :meth:`TrainingService.start` takes after the model and optimizer."""
    parameters = inspect.signature(TrainingService.start).parameters.values()
    own = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return (*own, *_job_trainer_options())


METRICS_TIMEOUT = 10.0
"""Seconds :meth:`TrainingService.metrics` called from another thread waits for the
service's loop to take the snapshot (a scrape's own timeout is usually about as long)."""


class TrainingService:
    """Run named training jobs concurrently on one shared backend.

    At most ``max_running`` jobs train at once; the others wait in a FIFO queue. Each job
    streams its events to any number of subscribers (see :meth:`Job.events`), serves
    predictions from its latest parameters and keeps its outcome after it finishes.

    Args:
        backend: a backend name (created, opened and closed by the service) or an open
            :class:`~asynctrain.backends.Backend` (shared, never closed by the service).
            Use ``"process"`` when the model's gradient holds the GIL; see
            ``docs/service.md``.
        workers: workers of a backend created by name (default: the usable cores).
        max_running: jobs training at the same time.
        history: events each job keeps for subscribers that join late.
        buffer: unread events held per subscriber; a slower one loses its oldest.
        keep_finished: finished jobs remembered; the oldest are forgotten beyond it.
        lag_interval: seconds between the heartbeats of the service's loop-lag monitor
            (:meth:`loop_lag`), in (0, 1]. Each heartbeat takes the GIL from the workers
            of a thread backend: every 1 ms they cost its training about 5 % of its
            throughput, every 10 ms (the default) too little to tell from noise
            (``docs/service.md``). A stall shorter than the interval may fall between two
            heartbeats; a ``LoopLagMonitor`` of your own can beat faster.

    Raises:
        ConfigError, ConfigTypeError: a bad setting or backend name.

    Example:
        >>> import asynctrain as at
        >>> async def main():
        ...     data = at.data.synthetic("softmax", n=2000)
        ...     async with at.TrainingService(backend="thread", workers=2) as service:
        ...         job = await service.start("a", at.models.SoftmaxRegression(128, 10), data)
        ...         return (await job.result()).steps
        >>> at.run(main())
        4
    """

    def __init__(
        self,
        *,
        backend: str | Backend = "thread",
        workers: int | None = None,
        max_running: int = 1,
        history: int = 1024,
        buffer: int = 256,
        keep_finished: int = 100,
        lag_interval: float = TRAINING_INTERVAL,
    ) -> None:
        self._backend, self._owns_backend = get_backend(backend, workers=workers)
        self.max_running = check_int("max_running", max_running)
        self.history = check_int("history", history, minimum=0)
        self.buffer = check_int("buffer", buffer)
        self.keep_finished = check_int("keep_finished", keep_finished, minimum=0)
        self._jobs: dict[str, Job] = {}
        self._reserved: set[str] = set()
        self._queue: deque[Job] = deque()
        self._running: set[Job] = set()
        self._lag = LoopLagMonitor(interval=lag_interval)
        self._counters = StepCounters()
        self._state = State.UNOPENED
        self._closing: asyncio.Task[None] | None = None  # aclose()'s, once begun
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop that opened it

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the backend and start the loop-lag monitor (idempotent)."""
        if self._state is State.CLOSED:
            raise StateError(f"{self!r} is closed; create a new TrainingService")
        if self._state is State.UNOPENED:
            await self._backend.__aenter__()
            self._lag.start()
            self._loop = asyncio.get_running_loop()
            self._state = State.OPEN

    async def aclose(self) -> None:
        """Cancel every job, wait until each has stopped, close what the service opened.

        Once begun, closing runs to its end: a caller cancelled meanwhile hears the
        cancel only after every job has stopped and the service's own backend is closed
        (a second cancel too), and a second call waits for the same closing. Left half
        done, the service would count as closed with a job still training on a backend
        that nothing closes.
        """
        if self._closing is None:
            was_open, self._state = self._state is State.OPEN, State.CLOSED
            self._closing = asyncio.get_running_loop().create_task(
                self._close(was_open), name="asynctrain-service-close"
            )
        closing = self._closing
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            while not closing.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([closing])
            raise

    async def _close(self, was_open: bool) -> None:
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        for job in jobs:
            await job.wait()
        if was_open:
            self._lag.stop()
            if self._owns_backend:
                await self._backend.aclose()

    # -- jobs ----------------------------------------------------------------------------

    async def start(
        self,
        name: str,
        model: Model,
        data: DataLike,
        *,
        optimizer: GradientTransformation | None = None,
        epochs: int = 1,
        validation: DataLike | None = None,
        callbacks: Sequence[Callback] = (),
        class_weight: ClassWeight = None,
        checkpoint_dir: PathLike | None = None,
        checkpoint_every: int | None = None,
        keep: int | None = 3,
        resume: Resume = False,
        **trainer_options: Any,
    ) -> Job:
        """Create job ``name``, training ``model`` on ``data``; queue it if all slots are busy.

        The data is validated (in a thread: large arrays are scanned off the loop) before
        the job exists. ``data`` may carry sample weights (a weighted Dataset or an
        ``(X, y, sample_weight)`` triple), and ``class_weight`` weighs its classes, as in
        :meth:`Trainer.fit <asynctrain.Trainer.fit>`. ``checkpoint_dir``,
        ``checkpoint_every``, ``keep`` and ``resume`` are fit's too: the job saves its
        checkpoints there, and a later job (after a restart, say) given the same
        directory and ``resume=True`` continues that run exactly where it stopped.
        ``trainer_options`` are :class:`~asynctrain.Trainer`'s
        (``batch_size``, ``shards``, ``seed``, ``nonfinite``, ``mode``), except the
        backend, which is the service's.

        Raises:
            StateError: the service is not open, or a job named ``name`` exists.
            ConfigError, DataError: bad settings or data, before the job exists.
            CheckpointError: another job of the service that has not finished (running
                or queued) has the same ``checkpoint_dir``.
        """
        self._check_new(name, trainer_options)
        self._reserved.add(name)
        try:
            trainer = Trainer(model, optimizer, backend=self._backend, **trainer_options)
            fit = {"epochs": check_int("epochs", epochs), "callbacks": check_callbacks(callbacks)}
            directory, fit["checkpoint_every"], fit["keep"] = checked_options(
                checkpoint_dir, every=checkpoint_every, keep=keep, resume=resume
            )
            if directory is not None:  # resolved: one directory, however it is spelt
                directory = await off_loop(Path.resolve, directory)
            fit |= {"checkpoint_dir": directory, "resume": resume}
            train = await off_loop(
                functools.partial(prepare, class_weight=class_weight), model, data
            )
            if validation is not None:
                fit["validation"] = await off_loop(prepare_validation, model, validation)
            if self._state is not State.OPEN:
                raise StateError(f"{self!r} closed while job {name!r} was being created")
            self._check_directory_free(directory)
            job = Job(
                name,
                trainer,
                train,
                fit,
                history=self.history,
                buffer=self.buffer,
                counters=self._counters,
                on_settle=self._settled,
            )
        finally:
            self._reserved.discard(name)
        self._jobs[name] = job
        self._queue.append(job)
        self._dispatch()
        return job

    def __getitem__(self, name: str) -> Job:
        """The job called ``name``; KeyError if there is none (or it was forgotten)."""
        return self._jobs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._jobs

    @property
    def jobs(self) -> Mapping[str, Job]:
        """All remembered jobs by name, oldest first (a read-only view)."""
        return MappingProxyType(self._jobs)

    @property
    def backend(self) -> Backend:
        """The backend every job runs on."""
        return self._backend

    def loop_lag(self) -> LagStats:
        """Lag of the service's event loop over the monitor's recent window (ms)."""
        return self._lag.stats()

    @property
    def queued(self) -> int:
        """Jobs waiting for a running slot."""
        return sum(job.status == "queued" for job in self._queue)

    def metrics(self) -> ServiceMetrics:
        """A snapshot of the service's counters and gauges (see :class:`ServiceMetrics`).

        Callable from any thread; :class:`~asynctrain.PrometheusCollector` exports it.
        The counters belong to the service's event loop, which changes them without
        locks, so from another thread (``prometheus_client.start_http_server``'s) while
        that loop runs, the snapshot is taken on the loop, between two of its
        callbacks, and this call waits for it.

        Raises:
            TimeoutError: called from another thread, the loop took no snapshot within
                :data:`METRICS_TIMEOUT` seconds (it was blocked, or stopped meanwhile).

        Example:
            >>> service.metrics().steps  # doctest: +SKIP
            480
        """
        loop = self._loop
        if loop is None or _running_loop() is loop or not loop.is_running():
            return self._snapshot()  # on the loop, or nothing runs there to change it
        taken: concurrent.futures.Future[ServiceMetrics] = concurrent.futures.Future()

        def take() -> None:
            if taken.set_running_or_notify_cancel():
                try:
                    taken.set_result(self._snapshot())
                except BaseException as exc:
                    taken.set_exception(exc)

        try:
            loop.call_soon_threadsafe(take)
        except RuntimeError:  # closed since: nothing runs there any more
            return self._snapshot()
        try:
            return taken.result(timeout=METRICS_TIMEOUT)
        except concurrent.futures.TimeoutError:
            taken.cancel()
            raise TimeoutError(
                f"{self!r}'s event loop took no metrics snapshot within {METRICS_TIMEOUT} s; "
                "is something blocking it?"
            ) from None

    def _snapshot(self) -> ServiceMetrics:
        """:meth:`metrics`, read directly (on the loop, or with nothing running there)."""
        jobs: dict[str, int] = dict.fromkeys(("queued", "running", *FINISHED), 0)
        for job in self._jobs.values():
            jobs[job.status] += 1
        lag, counters = self._lag.stats(), self._counters
        return ServiceMetrics(
            jobs=jobs,
            steps=counters.steps,
            samples=counters.samples,
            step_seconds=cumulative_buckets(counters.step_seconds_buckets),
            step_seconds_sum=counters.step_seconds_sum,
            loop_lag_p50_ms=lag.p50_ms,
            loop_lag_p99_ms=lag.p99_ms,
            queued=self.queued,
            running=len(self._running),
            shared_memory_bytes=shared_memory_bytes(),
        )

    # -- scheduling ----------------------------------------------------------------------

    def _check_new(self, name: str, options: Mapping[str, Any]) -> None:
        if self._state is not State.OPEN:
            raise StateError(f"{self!r} is not open; use `async with TrainingService()`")
        if not isinstance(name, str) or not name:
            raise ConfigTypeError(f"a job name must be a non-empty string, got {name!r}")
        if name in self._jobs or name in self._reserved:
            raise StateError(f"a job named {name!r} already exists; pick another name")
        shared = [key for key in _NOT_PER_JOB if key in options]
        if shared:
            raise ConfigError(
                f"{shared[0]}= is a setting of the service, not of a job: every job runs "
                "on the service's shared backend; set it on TrainingService(...)"
            )
        unknown = [key for key in options if key not in _job_trainer_options()]
        if unknown:
            close = difflib.get_close_matches(unknown[0], _start_options(), n=1)
            hint = f"did you mean {close[0]}=? " if close else ""
            raise ConfigTypeError(
                f"start() got an unknown option {unknown[0]}=; {hint}a job takes "
                f"{', '.join(f'{key}=' for key in _start_options())} (docs/service.md)"
            )

    def _check_directory_free(self, directory: Path | None) -> None:
        """Refuse a checkpoint directory that an unfinished job has: whether the new job
        would run at once (and fail on the directory's lock) or wait in the queue would
        otherwise depend on free slots."""
        for job in self._jobs.values():
            if directory is not None and job.checkpoint_dir == directory and not job.done:
                raise CheckpointError(
                    f"checkpoint_dir {str(directory)!r} is in use by job {job.name!r} "
                    f"({job.status}); give each job its own directory, or resume it "
                    "once that job has finished"
                )

    def _dispatch(self) -> None:
        """Start queued jobs, oldest first, while running slots are free."""
        while self._queue and len(self._running) < self.max_running and self._state is State.OPEN:
            job = self._queue.popleft()
            if job.status != "queued":  # cancelled while it waited
                continue
            task = asyncio.get_running_loop().create_task(
                job._run(), name=f"asynctrain-job-{job.name}"
            )
            task.add_done_callback(functools.partial(self._finished, job))
            self._running.add(job)
            job._begin(task)

    def _finished(self, job: Job, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            task.exception()  # an interrupt the job raised on: its error, reported there
        self._running.discard(job)
        job._settle_outcome()
        self._dispatch()

    def _settled(self, job: Job) -> None:
        """A job finished, by its task's end or cancelled while queued: take it off the
        queue and forget the oldest finished jobs beyond ``keep_finished``. Done here, not
        only when a task ends, because while long jobs run none ends: jobs cancelled in
        the queue piled up in it and in ``jobs`` without bound."""
        if job in self._queue:
            self._queue.remove(job)
        self._forget_old()

    def _forget_old(self) -> None:
        finished = [name for name, job in self._jobs.items() if job.done]
        for name in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[name]

    def __repr__(self) -> str:
        backend = f"{self._backend.name}({self._backend.workers})"
        return (
            f"<TrainingService jobs={len(self._jobs)} running={len(self._running)} "
            f"queued={self.queued} backend={backend} "
            f"{self._state}>"
        )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
