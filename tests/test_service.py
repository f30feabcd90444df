"""TrainingService and Job, checked against a plain inline Trainer replaying the same run.

Training is bit-reproducible (same seed and shards on any backend), so an inline replay
is an independent oracle for a job's final parameters, for the parameters a cancelled
job kept, and for every prediction served while a job trained.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from conftest import LOOPS

import asynctrain as at
from asynctrain.data import Dataset, _shared
from asynctrain.models import SoftmaxRegression

OPTIONS: dict[str, Any] = {"batch_size": 64, "shards": 4, "seed": 5}


@pytest.fixture(scope="module")
def data() -> Dataset:
    return at.data.synthetic("softmax", n=3000, seed=2)


@pytest.fixture
async def service(no_task_leaks: None) -> AsyncIterator[at.TrainingService]:
    # Depends on the task-leak check so that it is closed before that check runs.
    async with at.TrainingService(backend="thread", workers=2, max_running=2) as service:
        yield service


def _model() -> SoftmaxRegression:
    return SoftmaxRegression(128, 10)


class _Versions(at.Callback):
    """Keeps every parameter version a trainer publishes; stops after ``stop_at`` steps."""

    def __init__(self, trainer: at.Trainer, stop_at: int | None = None) -> None:
        self.trainer, self.stop_at = trainer, stop_at
        self.params = {0: trainer.state.params}

    def on_step(self, event: at.StepEvent) -> bool:
        state = self.trainer.state
        self.params[state.version] = state.params
        return self.stop_at is not None and state.step >= self.stop_at


async def _replay(data: Dataset, *, epochs: int = 1, steps: int | None = None) -> _Versions:
    """The oracle: the same training on the inline backend, every version recorded."""
    async with at.Trainer(_model(), backend="inline", **OPTIONS) as trainer:
        versions = _Versions(trainer, stop_at=steps)
        await trainer.fit(data, epochs=epochs, callbacks=[versions])
    return versions


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


async def _first_steps(job: at.Job, count: int) -> None:
    async for event in job.events():
        if event.kind == "step" and event.step + 1 >= count:
            return


async def test_a_job_trains_like_a_plain_trainer(
    service: at.TrainingService, data: Dataset
) -> None:
    job = await service.start("a", _model(), data, epochs=2, **OPTIONS)
    result = await job.result()
    oracle = await _replay(data, epochs=2)
    assert job.status == "done"
    assert result.steps == 2 * 47
    assert _same(result.params, oracle.params[result.steps])
    assert _same(job.params, result.params)
    assert [e.epoch for e in job.epochs] == [0, 1]


async def test_events_stream_to_the_end_and_late_subscribers_replay(
    service: at.TrainingService, data: Dataset
) -> None:
    job = await service.start("a", _model(), data, epochs=2, **OPTIONS)
    live = [event async for event in job.events()]
    late = [event async for event in job.events()]
    assert late == live
    statuses = [e.status for e in live if isinstance(e, at.StatusEvent)]
    assert statuses == ["queued", "running", "done"]
    steps = [e.step for e in live if isinstance(e, at.StepEvent)]
    assert steps == list(range(94))
    assert [e.kind for e in live].count("epoch") == 2
    assert live[-1] == at.StatusEvent("a", "done", 94)


async def test_a_slow_subscriber_never_holds_training_back(data: Dataset) -> None:
    async with at.TrainingService(workers=2, history=0, buffer=4) as service:
        job = await service.start("a", _model(), data, epochs=2, **OPTIONS)
        events = job.events()
        first = await anext(events)  # subscribed; now it stops reading
        assert await job.wait() == "done"
        rest = [event async for event in events]
    assert first.kind == "step"
    assert isinstance(rest[0], at.Lagged)
    assert rest[0].missed > 80
    assert len(rest) == 5
    assert rest[-1] == at.StatusEvent("a", "done", 94)


async def test_predictions_come_from_whole_versions_and_change_as_it_learns(
    service: at.TrainingService, data: Dataset
) -> None:
    X = data.X[:200]
    job = await service.start("a", _model(), data, epochs=3, **OPTIONS)
    await _first_steps(job, 1)
    served: list[at.Prediction] = []
    while not job.done:
        served.append(await job.predict(X))
    oracle = await _replay(data, epochs=3)
    model = _model()
    for prediction in served:
        expected = model.predict(oracle.params[prediction.version], X)
        assert np.array_equal(prediction.values, expected), f"version {prediction.version}"
    assert len({p.version for p in served}) >= 3
    assert len({p.values.tobytes() for p in served}) >= 2


async def test_cancel_keeps_the_last_applied_step_while_another_job_trains(
    service: at.TrainingService, data: Dataset
) -> None:
    doomed = await service.start("doomed", _model(), data, epochs=20, **OPTIONS)
    other = await service.start("other", _model(), data, epochs=2, **OPTIONS)
    await _first_steps(doomed, 5)
    assert doomed.cancel()
    assert await doomed.wait() == "cancelled"
    assert other.status == "running"
    oracle = await _replay(data, epochs=20, steps=doomed.step)
    assert _same(doomed.params, oracle.params[doomed.state.version])
    with pytest.raises(at.StateError, match="cancelled"):
        await doomed.result()
    assert (await other.result()).steps == 94
    assert not doomed.cancel()  # already finished


async def test_jobs_beyond_the_limit_queue_in_order(data: Dataset) -> None:
    async with at.TrainingService(workers=2, max_running=1) as service:
        jobs = [await service.start(f"j{i}", _model(), data, **OPTIONS) for i in range(3)]
        assert [j.status for j in jobs] == ["running", "queued", "queued"]
        with pytest.raises(at.StateError, match="no parameters"):
            await jobs[2].predict(data.X[:2])
        assert jobs[1].cancel()
        assert jobs[1].status == "cancelled"
        finished = await asyncio.gather(jobs[0].result(), jobs[2].result())
        assert [r.steps for r in finished] == [47, 47]
        ends = [e for e in [e async for e in jobs[2].events()] if e.kind == "status"]
    assert [e.status for e in ends] == ["queued", "running", "done"]


class _Flaky(SoftmaxRegression):
    calls = itertools.count()

    def loss_and_grad(self, params: Any, X: Any, y: Any) -> Any:
        if next(self.calls) >= 12:  # 4 shards a step: fails in step 3
            raise ZeroDivisionError("model bug")
        return super().loss_and_grad(params, X, y)


async def test_a_failed_job_keeps_its_error_and_its_last_parameters(
    service: at.TrainingService, data: Dataset
) -> None:
    _Flaky.calls = itertools.count()
    job = await service.start("bad", _Flaky(128, 10), data, **OPTIONS)
    assert await job.wait() == "failed"
    assert isinstance(job.error, ZeroDivisionError)
    with pytest.raises(ZeroDivisionError, match="model bug"):
        await job.result()
    assert job.step == 3
    oracle = await _replay(data, steps=3)
    assert _same(job.params, oracle.params[3])
    last = [e async for e in job.events()][-1]
    assert last == at.StatusEvent("bad", "failed", 3, "ZeroDivisionError: model bug")


async def test_aclose_cancels_everything(data: Dataset) -> None:
    service = at.TrainingService(workers=2, max_running=1)
    async with service:
        running = await service.start("r", _model(), data, epochs=50, **OPTIONS)
        queued = await service.start("q", _model(), data, **OPTIONS)
        await _first_steps(running, 2)
    assert (running.status, queued.status) == ("cancelled", "cancelled")
    assert running.step >= 2
    assert service.backend.state == "closed"
    with pytest.raises(at.StateError, match="not open"):
        await service.start("late", _model(), data)


async def test_a_cancelled_aclose_still_closes_what_the_service_opened(data: Dataset) -> None:
    """aclose() cancelled while its jobs stop: the cancel is heard only once they have
    stopped and the service's own backend is closed; a second aclose() is a no-op. Before,
    the service counted as closed from the first line, so nothing closed the backend."""
    service = at.TrainingService(backend="process", workers=2, max_running=1)
    await service.open()
    running = await service.start("r", _model(), data, epochs=50, **OPTIONS)
    await _first_steps(running, 2)
    closing = asyncio.ensure_future(service.aclose())
    await asyncio.sleep(0)  # it has cancelled the jobs and waits for them
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert running.status == "cancelled"
    assert service.backend.state == "closed"
    await service.aclose()


async def test_bad_requests_fail_before_a_job_exists(
    service: at.TrainingService, data: Dataset
) -> None:
    await service.start("a", _model(), data, **OPTIONS)
    with pytest.raises(at.StateError, match="already exists"):
        await service.start("a", _model(), data)
    with pytest.raises(at.ConfigError, match="workers= is a setting of the service"):
        await service.start("b", _model(), data, workers=2)
    with pytest.raises(at.DataError, match="features"):
        await service.start("c", SoftmaxRegression(3, 10), data)
    # An unknown option was a bare TypeError from Trainer(...), naming nothing it takes.
    with pytest.raises(
        at.ConfigTypeError, match=r"unknown option batchsize=; did you mean batch_size="
    ) as raised:
        await service.start("e", _model(), data, batchsize=64)
    assert "checkpoint_dir=" in str(raised.value)
    assert "shards=" in str(raised.value)
    with pytest.raises(
        at.ConfigTypeError, match=r"unknown option metrics=; a job takes optimizer="
    ):
        await service.start("f", _model(), data, metrics=["f1"])
    with pytest.raises(at.ConfigError, match="epochs"):
        await service.start("d", _model(), data, epochs=0)
    with pytest.raises(at.DataError, match="shape"):
        await service["a"].predict(np.zeros((2, 5)))
    with pytest.raises(at.DataError, match="numeric"):  # not OverflowError
        await service["a"].predict([[10**400] + [0.0] * 127])
    assert list(service.jobs) == ["a"]
    assert "b" not in service


async def test_a_shared_backend_is_left_open(data: Dataset) -> None:
    async with at.backends.ThreadBackend(workers=2) as backend:
        async with at.TrainingService(backend=backend, lag_interval=0.001) as service:
            await (await service.start("a", _model(), data, **OPTIONS)).result()
            assert service.loop_lag().samples > 0
        assert backend.state == "open"


async def test_the_loop_lag_heartbeat_keeps_its_interval() -> None:
    """10 ms by default (a 1 ms heartbeat costs a thread backend's training about 5 %);
    a service asked for a faster one beats faster."""
    async with (
        at.TrainingService(workers=1) as default,
        at.TrainingService(workers=1, lag_interval=0.002) as fast,
    ):
        await asyncio.sleep(0.2)
        slow_beats, fast_beats = default.loop_lag().beats, fast.loop_lag().beats
    assert 5 <= slow_beats <= 21  # 20 due; a loaded machine delays, never adds, beats
    assert fast_beats > slow_beats
    with pytest.raises(at.ConfigError, match="interval"):
        at.TrainingService(lag_interval=0.0)


async def test_finished_jobs_beyond_keep_finished_are_forgotten(data: Dataset) -> None:
    small = data.subset(np.arange(256))
    async with at.TrainingService(workers=2, keep_finished=2) as service:
        for i in range(4):
            await (await service.start(f"j{i}", _model(), small, **OPTIONS)).wait()
        assert list(service.jobs) == ["j2", "j3"]
        assert "running=0" in repr(service)


async def test_jobs_cancelled_in_the_queue_are_forgotten_while_another_runs(
    data: Dataset,
) -> None:
    # Only a job's task ending forgot old jobs: behind a long job, every job cancelled
    # in the queue stayed in service.jobs and in the queue, beyond keep_finished.
    async with at.TrainingService(workers=1, max_running=1, keep_finished=2) as service:
        long = await service.start("long", _model(), data, epochs=100, **OPTIONS)
        for i in range(6):
            (await service.start(f"q{i}", _model(), data, **OPTIONS)).cancel()
        assert list(service.jobs) == ["long", "q4", "q5"]
        assert len(service._queue) == 0
        assert long.status == "running"
        waiting = await service.start("next", _model(), data.subset(np.arange(256)), **OPTIONS)
        long.cancel()
        assert await waiting.wait() == "done"  # the queue still dispatches in order


async def test_data_arrives_in_the_models_dtype_and_as_pairs(data: Dataset) -> None:
    X64, y = data.X.astype(np.float64), np.asarray(data.y)
    async with at.TrainingService(workers=2) as service:
        pair = await service.start("pair", _model(), (X64, y), **OPTIONS)
        wide = await service.start("wide", _model(), Dataset(X64, y), **OPTIONS)
        results = [await pair.result(), await wide.result()]
    oracle = await _replay(data)
    assert all(_same(r.params, oracle.params[47]) for r in results)


async def test_jobs_share_one_process_pool(data: Dataset) -> None:
    try:
        service = at.TrainingService(backend="process", workers=2, max_running=2)
    except ImportError as exc:
        pytest.skip(f"no process backend here: {exc}")
    async with service:
        jobs = [await service.start(n, _model(), data, **OPTIONS) for n in ("a", "b")]
        results = [await job.result() for job in jobs]
        predicted = await jobs[0].predict(data.X[:10])
    oracle = await _replay(data)
    assert all(_same(r.params, oracle.params[47]) for r in results)
    assert np.array_equal(predicted.values, _model().predict(oracle.params[47], data.X[:10]))


class _HeldPredict(SoftmaxRegression):
    """Predictions wait for ``release`` and record that they finished (training is as usual)."""

    started: threading.Event
    release: threading.Event
    finished: list[int]

    def __init__(self) -> None:
        super().__init__(128, 10)
        for name in ("started", "release"):
            object.__setattr__(self, name, threading.Event())  # a frozen dataclass
        object.__setattr__(self, "finished", [])

    def predict(self, params: Any, X: Any) -> Any:
        self.started.set()
        self.release.wait()
        values = super().predict(params, X)
        self.finished.append(len(values))
        return values


async def test_a_cancelled_prediction_leaves_no_predict_running(
    service: at.TrainingService, data: Dataset
) -> None:
    # asyncio.to_thread let CancelledError reach the caller while the model still ran.
    model = _HeldPredict()
    job = await service.start("held", model, data, **OPTIONS)
    await job.result()
    served = asyncio.ensure_future(job.predict(data.X[:5]))
    try:
        await asyncio.to_thread(model.started.wait)
        served.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not served.done(), "the cancelled request returned while predict still ran"
        model.release.set()
        with pytest.raises(asyncio.CancelledError):
            await served
        assert model.finished == [5]
    finally:
        model.release.set()


async def test_a_job_cancelled_before_its_task_ran_is_settled(
    service: at.TrainingService, data: Dataset
) -> None:
    job = await service.start("early", _model(), data, **OPTIONS)
    assert job.status == "running"
    assert job.cancel()  # its task has not had a turn on the loop yet
    assert await job.wait() == "cancelled"
    assert job.step == 0
    with pytest.raises(at.StateError, match="no parameters"):
        job.params  # noqa: B018


class _Broken(SoftmaxRegression):
    def loss_and_grad(self, params: Any, X: Any, y: Any) -> Any:
        raise ZeroDivisionError("model bug")


def _exists(path: Path) -> bool:
    return path.exists()


@pytest.mark.parametrize("backend", ["inline", "process"])
@pytest.mark.parametrize("outcome", ["failed", "cancelled", "done"])
async def test_a_finished_job_releases_its_shared_dataset(outcome: str, backend: str) -> None:
    # The oracle is /dev/shm itself: the dataset's file is unlinked once nothing refers
    # to its arrays. A failed or cancelled job's traceback frames used to hold it.
    data = at.data.synthetic("softmax", n=4000, seed=3)
    mapped = _shared.shared_map(data.X)
    assert mapped is not None
    path = Path(str(mapped.filename))
    del mapped
    async with at.TrainingService(backend=backend, workers=1) as service:
        model = _Broken(128, 10) if outcome == "failed" else _model()
        epochs = 1 if outcome == "done" else 100
        job = await service.start(outcome, model, data, epochs=epochs, **OPTIONS)
        del data
        if outcome == "cancelled":
            await _first_steps(job, 2)
            job.cancel()
        assert await job.wait() == outcome
        gc.collect()
        assert not _exists(path), f"a {outcome} job still holds its dataset"
        assert outcome in service  # remembered, with its error and parameters
        if outcome == "failed":
            assert "model bug" in "".join(traceback.format_exception(job.error))


class _Raises(at.Callback):
    """Raises ``error`` from the job's second step, on the loop, as user code may."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def on_step(self, event: at.StepEvent) -> None:
        if event.step == 1:
            raise self.error


class _Abort(BaseException):
    """A BaseException of the user's own: neither an Exception nor an interrupt."""


async def test_a_job_failing_with_a_base_exception_is_failed_and_the_service_serves_on(
    service: at.TrainingService, data: Dataset
) -> None:
    # It was settled as "cancelled", its error dropped. asyncio's own oracle: a task
    # ending in such an error keeps it as its exception and the loop runs on.
    task = asyncio.get_running_loop().create_task(_raise(_Abort("own")))
    await asyncio.wait([task])
    assert isinstance(task.exception(), _Abort)
    error = _Abort("stop here")
    bad = await service.start("bad", _model(), data, callbacks=[_Raises(error)], **OPTIONS)
    assert await bad.wait() == "failed"
    assert bad.error is error
    with pytest.raises(_Abort, match="stop here"):
        await bad.result()
    last = [e async for e in bad.events()][-1]
    assert last == at.StatusEvent("bad", "failed", bad.step, "_Abort: stop here")
    good = await service.start("good", _model(), data, **OPTIONS)
    assert await good.wait() == "done"


async def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize("new_loop", list(LOOPS.values()), ids=list(LOOPS))
@pytest.mark.parametrize("kind", [SystemExit, KeyboardInterrupt])
def test_a_job_raising_an_interrupt_fails_and_the_interrupt_stops_the_loop(
    new_loop: Any, kind: type[BaseException], data: Dataset
) -> None:
    # asyncio lets SystemExit and KeyboardInterrupt out of a task to stop the loop (the
    # oracle below); the service does too, and the job says why it ended, not "cancelled".
    with pytest.raises(kind), asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(_raise_in_a_task(kind("oracle")))
    error = kind("callback asked to stop")
    jobs: dict[str, at.Job] = {}

    async def serve() -> None:
        async with at.TrainingService(backend="inline", max_running=2) as service:
            jobs["other"] = await service.start("other", _model(), data, epochs=20, **OPTIONS)
            callbacks = [_Raises(error)]
            jobs["bad"] = await service.start("bad", _model(), data, callbacks=callbacks, **OPTIONS)
            await jobs["other"].wait()

    with pytest.raises(kind) as raised, asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(serve())
    assert raised.value is error
    bad, other = jobs["bad"], jobs["other"]
    assert (bad.status, bad.error, bad.step) == ("failed", error, 2)
    assert other.status == "cancelled"  # by the service's shutdown


async def _raise_in_a_task(error: BaseException) -> None:
    await asyncio.get_running_loop().create_task(_raise(error))


class _CancelAtFitEnd(at.Callback):
    """Cancels its job on the loop's next turn after the fit has returned its result."""

    def __init__(self) -> None:
        self.job: at.Job | None = None
        self.answers: list[bool] = []

    def on_fit_end(self, fit: Any) -> None:
        assert self.job is not None
        job = self.job
        asyncio.get_running_loop().call_soon(lambda: self.answers.append(job.cancel()))


async def test_a_job_cancelled_while_its_trainer_closes_ends_done(
    service: at.TrainingService, data: Dataset
) -> None:
    # As documented (Job.cancel, docs/service.md): the request is accepted, but the fit
    # had returned, so the job ends done with its result, not cancelled.
    canceller = _CancelAtFitEnd()
    job = await service.start("late", _model(), data, callbacks=[canceller], **OPTIONS)
    canceller.job = job
    assert await job.wait() == "done"
    assert canceller.answers == [True]
    result = await job.result()
    assert result.steps == job.step == 47
    assert _same(result.params, (await _replay(data)).params[47])


async def test_a_job_saves_checkpoints_and_a_later_job_resumes_them(
    service: at.TrainingService, data: Dataset, tmp_path: Path
) -> None:
    """``checkpoint_dir`` and its options are fit's, as in Trainer.fit: a job cancelled
    part-way leaves its checkpoints, and a job resuming them ends with the parameters of
    one uninterrupted run (bit-reproducible, so the inline replay is the oracle)."""
    run = tmp_path / "run"
    first = await service.start(
        "first", _model(), data, epochs=2, checkpoint_dir=run, checkpoint_every=5, **OPTIONS
    )
    await _first_steps(first, 12)
    assert first.cancel()
    assert await first.wait() == "cancelled"
    saved = sorted(int(p.name[5:-5]) for p in run.glob("step-*.ckpt"))
    # A write in flight when the job is cancelled is abandoned, as a cancelled fit's is.
    assert saved
    assert saved[-1] <= first.step
    assert all(step % 5 == 0 for step in saved)
    second = await service.start(
        "second", _model(), data, epochs=2, checkpoint_dir=run, resume=True, keep=None, **OPTIONS
    )
    result = await second.result()
    assert result.steps == 94 - saved[-1]
    assert _same(result.params, (await _replay(data, epochs=2)).params[94])
    assert 94 in [int(p.name[5:-5]) for p in run.glob("step-*.ckpt")]


async def test_two_unfinished_jobs_never_share_a_checkpoint_dir(
    service: at.TrainingService, data: Dataset, tmp_path: Path
) -> None:
    """Refused when the second job is started, whether it would run at once (where the
    directory's lock would fail it) or wait in the queue; by another spelling too."""
    running = await service.start(
        "a", _model(), data, epochs=20, checkpoint_dir=tmp_path, **OPTIONS
    )
    same = tmp_path / "sub" / ".."
    (tmp_path / "sub").mkdir()
    with pytest.raises(at.CheckpointError, match="job 'a'"):
        await service.start("b", _model(), data, checkpoint_dir=same, **OPTIONS)
    with pytest.raises(at.ConfigError, match="checkpoint_dir"):
        await service.start("c", _model(), data, checkpoint_every=5, **OPTIONS)
    assert list(service.jobs) == ["a"]
    running.cancel()
    await running.wait()
    other = await service.start("b", _model(), data, checkpoint_dir=same, resume=True, **OPTIONS)
    assert await other.wait() == "done"


class _InitThread(SoftmaxRegression):
    """Records the thread its parameters are drawn in."""

    threads: ClassVar[list[threading.Thread]] = []

    def init(self, rng: np.random.Generator) -> Any:
        _InitThread.threads.append(threading.current_thread())
        return super().init(rng)


async def test_a_jobs_initial_parameters_are_drawn_off_the_loop(data: Dataset) -> None:
    # Trainer's open drew them (model.init, optimizer.init) on the loop: a 64 MB upload
    # of wide rows with an MLP of 512 hidden units stopped the service's loop for 5 s.
    _InitThread.threads.clear()
    async with at.TrainingService(workers=1) as service:
        job = await service.start("wide", _InitThread(128, 10), data, **OPTIONS)
        assert await job.wait() == "done"
    assert _InitThread.threads
    assert threading.main_thread() not in _InitThread.threads


async def test_a_running_job_predicts_while_its_trainer_opens(
    service: at.TrainingService, data: Dataset
) -> None:
    # A job is "running" from the moment it takes a slot, but had parameters only once
    # its trainer had opened: a predict just after start() raised "job 'a' is running
    # and has no parameters yet" (a 409 from the example services, documented for
    # queued jobs only).
    job = await service.start("a", _model(), data, **OPTIONS)
    assert job.status == "running"
    prediction = await job.predict(np.asarray(data.X[:2]))
    assert prediction.values.shape == (2,)
    await job.wait()


async def test_asking_a_failed_job_for_its_result_again_and_again_keeps_nothing(
    service: at.TrainingService, data: Dataset
) -> None:
    # Each result() raised the same error object, and a raise appends the raising frames
    # to its traceback: it grew by a caller's frames per call, keeping their locals (a
    # handler polling a failed job: 200 calls held 160 MB of its requests' arrays).
    _Flaky.calls = itertools.count()
    job = await service.start("bad", _Flaky(128, 10), data, **OPTIONS)
    assert await job.wait() == "failed"

    def depth() -> int:
        return len(traceback.extract_tb(job.error.__traceback__))  # type: ignore[union-attr]

    async def handler() -> None:
        with pytest.raises(ZeroDivisionError, match="model bug"):
            await job.result()

    await handler()
    once = depth()
    for _ in range(50):
        await handler()
    assert depth() == once
