"""Cancelling a fit anywhere: the promises of docs/reliability.md, checked at every point.

A *tripwire* backend wraps a real one and fires a trigger at its k-th ``run`` call, just
before the work starts or just after its result came back, for every k of a fit
(training shards and validation chunks). The trigger cancels the fit directly, expires an
``asyncio.timeout`` around it, or fails a sibling task in the caller's TaskGroup. Each
time the test checks that the right error reaches the caller, that ``Task.cancelling()``
is as asyncio expects, that the parameters and optimizer state are bit-identical to those
of the last fully applied step of an uninterrupted run, that no result arriving after
a direct cancellation was applied, that no work of a later step started and none is still
running, and that the latest checkpoint loads. Fsync is stubbed out here (durability is
tested in test_checkpoint_kill.py) so that hundreds of fits with checkpoints stay fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _reliability import Recorder, Tripwire, skip_missing_backend, state_bits

import asynctrain as at
from asynctrain._checkpoint import Checkpoint, list_checkpoints, temporaries
from asynctrain._checkpoint import _format as checkpoint_format
from asynctrain._engine._update import Updater
from asynctrain._types import State
from asynctrain.data import Dataset, synthetic
from asynctrain.models import SoftmaxRegression

BATCH, SHARDS, EPOCHS, STEPS_PER_EPOCH = 60, 3, 2, 4  # 240 training samples, 3 shards a step
CALLS = EPOCHS * (4 * SHARDS + 1)  # shard runs plus one validation chunk per epoch


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(scope="module")
def problem() -> tuple[Dataset, Dataset]:
    return synthetic("softmax", n=300, seed=8).split(0.2, seed=0)


def _trainer(backend: at.backends.Backend) -> at.Trainer:
    model = SoftmaxRegression(128, 10)
    return at.Trainer(model, at.optim.adam(1e-2), backend=backend, batch_size=BATCH, shards=SHARDS)


@pytest.fixture(scope="module")
def reference(problem: tuple[Dataset, Dataset]) -> dict[int, dict[str, Any]]:
    """State bits after every step of the uninterrupted fit (the oracle)."""

    async def record() -> dict[int, dict[str, Any]]:
        async with at.backends.InlineBackend() as backend:
            trainer = _trainer(backend)
            recorder = Recorder(trainer)
            await trainer.fit(
                problem[0], epochs=EPOCHS, validation=problem[1], callbacks=[recorder]
            )
            return recorder.states

    return at.run(record())


def _same_state(state: at.TrainState, reference: dict[str, Any]) -> bool:
    """Bit-identical, with the end of an epoch before its bookkeeping (epoch e, batch 4)
    taken as the same position as after it (epoch e + 1, batch 0)."""

    def normal(bits: dict[str, Any]) -> dict[str, Any]:
        step, version, skipped, epoch, batch = bits["counters"]
        if batch == STEPS_PER_EPOCH:
            epoch, batch = epoch + 1, 0
        return {**bits, "counters": (step, version, skipped, epoch, batch)}

    return normal(state_bits(state)) == normal(reference)


def _open(backend_name: str) -> at.backends.Backend:
    backend, _ = at.backends.get_backend(
        backend_name, workers=None if backend_name == "inline" else 2
    )
    return backend


async def _cancel_at(
    inner: at.backends.Backend,
    how: str,
    k: int,
    when: str,
    problem: tuple[Dataset, Dataset],
    tmp_path: Path,
) -> dict[str, Any]:
    """Run a fit that the tripwire interrupts at call ``k``; return what was observed."""
    seen: dict[str, Any] = {}
    holder: dict[str, Any] = {}
    tripwire = Tripwire(inner, k, when, lambda: holder["trigger"]())
    trainer = _trainer(tripwire)  # type: ignore[arg-type]

    def record_trigger(action: Callable[[], None]) -> Callable[[], None]:
        def fire() -> None:
            seen["step_at_trigger"] = trainer.state.step
            action()

        return fire

    fit = trainer.fit(
        problem[0],
        epochs=EPOCHS,
        validation=problem[1],
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
        keep=2,
    )
    seen["outcome"] = await _drive(how, fit, holder, record_trigger, tripwire, seen)
    seen["state"] = trainer.state
    seen["activity"] = tripwire.activity
    seen["running_flag"] = trainer._running
    return seen


async def _drive(
    how: str,
    fit: Any,
    holder: dict[str, Any],
    record_trigger: Callable[[Callable[[], None]], Callable[[], None]],
    tripwire: Tripwire,
    seen: dict[str, Any],
) -> str:
    async def guarded() -> None:
        try:
            await fit
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            seen["cancelling"] = task.cancelling()
            seen["running_at_exit"] = tripwire.running()
            raise

    if how == "cancel":
        task = asyncio.create_task(guarded())
        holder["trigger"] = record_trigger(task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return "cancelled" if task.cancelled() else "finished"
    if how == "timeout":
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as deadline:
                holder["trigger"] = record_trigger(lambda: deadline.reschedule(loop.time()))
                await guarded()
        except TimeoutError:
            current = asyncio.current_task()
            assert current is not None
            seen["caller_cancelling"] = current.cancelling()
            return "timed out"
        return "finished"
    tripped = asyncio.Event()
    holder["trigger"] = record_trigger(tripped.set)

    async def sibling() -> None:
        await tripped.wait()
        raise LookupError("a sibling task failed")

    try:
        async with asyncio.TaskGroup() as group:
            fit_task = group.create_task(guarded())
            group.create_task(sibling())
    except ExceptionGroup as failed:
        seen["fit_task_cancelled"] = fit_task.cancelled()
        return "group failed" if failed.subgroup(LookupError) else "other failure"
    return "finished"


EXPECTED = {"cancel": "cancelled", "timeout": "timed out", "taskgroup": "group failed"}


@pytest.mark.parametrize("how", ["cancel", "timeout", "taskgroup"])
async def test_cancelling_at_every_point_of_a_fit(
    backend_name: str,
    how: str,
    problem: tuple[Dataset, Dataset],
    reference: dict[int, dict[str, Any]],
    tmp_path: Path,
) -> None:
    skip_missing_backend(backend_name)
    # Every point in-process; every fifth on processes, where a cancelled task costs a
    # worker (killed and restarted). One backend serves every fit: it must stay usable.
    points = range(1, CALLS + 1, 1 if backend_name in ("inline", "thread") else 5)
    async with _open(backend_name) as inner:
        for k, when in itertools.product(points, ("before", "after")):
            where = f"call {k} {when}"
            directory = tmp_path / f"{k}-{when}"
            seen = await _cancel_at(inner, how, k, when, problem, directory)
            assert seen["outcome"] == EXPECTED[how], where
            state, fired = seen["state"], seen["step_at_trigger"]
            if how == "cancel":  # cancelled at once: nothing that arrives later is applied
                assert state.step == fired, where
                assert seen["cancelling"] == 1, where
            else:  # cancelled a moment later: a step whose results were all in may finish
                assert state.step in (fired, fired + 1), where
            if how == "timeout":
                assert (seen["cancelling"], seen["caller_cancelling"]) == (1, 0), where
            if how == "taskgroup":
                assert seen["fit_task_cancelled"], where
            assert _same_state(state, reference[state.step]), where
            assert seen["running_at_exit"] == 0, where
            assert all(step in (None, fired) for step in seen["activity"].started_after), where
            assert not seen["running_flag"], where
            _check_last_checkpoint(directory, state.step, reference, where)


def _check_last_checkpoint(
    directory: Path, step: int, reference: dict[int, dict[str, Any]], where: str
) -> None:
    """The latest checkpoint loads and holds the exact state of its step (a save still in
    flight when the fit was cancelled is abandoned, so it may be an older one)."""
    assert temporaries(directory) == [], where
    if not any(directory.glob("*.ckpt")):
        return
    checkpoint = Checkpoint.read(directory)
    saved = checkpoint.counter("step")
    assert saved <= step, where
    restored = _trainer(at.backends.InlineBackend())
    restored._set_state(checkpoint.train_state(restored._checkpoint_subject()))
    assert _same_state(restored.state, reference[saved]), where


@pytest.mark.parametrize("backend_name", ["inline", "thread"])
async def test_cancel_during_an_update_finishes_that_update(
    backend_name: str,
    problem: tuple[Dataset, Dataset],
    reference: dict[int, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop, real_apply = asyncio.get_running_loop(), Updater._apply
    calls: list[int] = []
    task: asyncio.Task[Any] | None = None

    def apply_while_cancelled(self: Updater, *args: Any) -> Any:
        calls.append(self.state.step)
        if len(calls) == 3:
            assert task is not None
            if threading.current_thread() is threading.main_thread():
                task.cancel()
            else:  # wait until the cancel has really been requested, then update
                requested = threading.Event()
                loop.call_soon_threadsafe(lambda: (task.cancel(), requested.set()))
                requested.wait(10)
        return real_apply(self, *args)

    monkeypatch.setattr(Updater, "_apply", apply_while_cancelled)
    async with _open(backend_name) as backend:
        trainer = _trainer(backend)
        task = asyncio.create_task(trainer.fit(problem[0], epochs=EPOCHS))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert trainer.state.step == 3  # the update in progress was applied whole
        assert _same_state(trainer.state, reference[3])
        result = await trainer.fit(problem[0], epochs=1)  # still usable: it ends epoch 0
        assert (result.steps, trainer.state.step, trainer.state.epoch) == (1, 4, 1)


async def test_cancellation_waits_only_for_shards_in_flight(
    problem: tuple[Dataset, Dataset],
) -> None:
    loop, release, both_busy = asyncio.get_running_loop(), threading.Event(), asyncio.Event()
    busy = []

    class Slow(SoftmaxRegression):
        def loss_and_grad(self, params: Any, X: Any, y: Any) -> Any:
            busy.append(1)
            if len(busy) == 2:
                loop.call_soon_threadsafe(both_busy.set)
            release.wait(10)
            return super().loss_and_grad(params, X, y)

    async with at.backends.ThreadBackend(workers=2) as inner:
        tripwire = Tripwire(inner, 0, "before", lambda: None)  # counts, never fires
        trainer = at.Trainer(Slow(128, 10), backend=tripwire, batch_size=BATCH, shards=4)  # type: ignore[arg-type]
        task = asyncio.create_task(trainer.fit(problem[0]))
        await both_busy.wait()  # both workers busy, two shards queued behind them
        tripwire.activity.tripped = True
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # it waits for the two computations in flight ...
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert tripwire.activity.started_after == []  # ... and the queued two never ran
        assert tripwire.activity.running == 0
        assert trainer.state.step == 0


class _CancelInsideWrite:
    """Patch the checkpoint writer so that the ``n``-th save cancels ``task`` mid-file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, n: int) -> None:
        self.n, self.saves, self.fired = n, 0, False
        self.task: asyncio.Task[Any] | None = None
        self.loop = asyncio.get_running_loop()
        real_write_zip, real_sink_write = (
            checkpoint_format._write_zip,
            checkpoint_format._HashingSink.write,
        )

        def write_zip(*args: Any) -> None:
            self.saves += 1
            real_write_zip(*args)

        def sink_write(sink: Any, data: Any) -> int:
            if self.saves == self.n and not self.fired:
                self.fired = True
                assert self.task is not None
                self.loop.call_soon_threadsafe(self.task.cancel)
                assert sink.cancel.wait(10), "the cancellation never reached the writer"
            return int(real_sink_write(sink, data))

        monkeypatch.setattr(checkpoint_format, "_write_zip", write_zip)
        monkeypatch.setattr(checkpoint_format._HashingSink, "write", sink_write)


@pytest.mark.parametrize("backend_name", ["inline", "thread"])
async def test_cancel_during_a_checkpoint_write(
    backend_name: str,
    problem: tuple[Dataset, Dataset],
    reference: dict[int, dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    patch = _CancelInsideWrite(monkeypatch, n=3)  # steps 2 and 4 are saved, 6 is cancelled
    async with _open(backend_name) as backend:
        trainer = _trainer(backend)
        patch.task = asyncio.create_task(
            trainer.fit(
                problem[0], epochs=EPOCHS, checkpoint_dir=tmp_path, checkpoint_every=2, keep=None
            )
        )
        with pytest.raises(asyncio.CancelledError):
            await patch.task
    assert patch.fired
    assert temporaries(tmp_path) == []
    assert sorted(p.name for p in list_checkpoints(tmp_path)) == [
        "step-000000000002.ckpt",
        "step-000000000004.ckpt",
    ]
    assert _same_state(trainer.state, reference[trainer.state.step])
    _check_last_checkpoint(tmp_path, trainer.state.step, reference, "during a write")


async def test_cancel_during_trainer_save(
    problem: tuple[Dataset, Dataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _trainer(at.backends.InlineBackend())
    await trainer.fit(problem[0], epochs=1)
    first = await trainer.save(tmp_path / "model.ckpt")
    before = first.read_bytes()
    await trainer.fit(problem[0], epochs=1)
    patch = _CancelInsideWrite(monkeypatch, n=1)
    patch.task = asyncio.create_task(trainer.save(tmp_path / "model.ckpt"))
    with pytest.raises(asyncio.CancelledError):
        await patch.task
    assert first.read_bytes() == before  # the previous file is untouched
    assert temporaries(tmp_path) == []


async def test_a_cancel_during_the_release_of_a_fit_lets_the_release_finish(
    problem: tuple[Dataset, Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A trainer that made its backend closes it as each fit ends. A cancel that lands
    # then (a second cancel of a cancelled fit, a timeout expiring as the fit ends) used to
    # cut the release short: the trainer stayed marked open without its updater, so its
    # next fit failed with "AssertionError: open the trainer first", and the backend was
    # left half-closed (a process pool's stopped worker never killed).
    closing, resume = asyncio.Event(), asyncio.Event()
    real_close = at.backends.ThreadBackend._close

    async def slow_close(self: at.backends.ThreadBackend) -> None:
        closing.set()
        await resume.wait()
        await real_close(self)

    monkeypatch.setattr(at.backends.ThreadBackend, "_close", slow_close)
    trainer = at.Trainer(
        SoftmaxRegression(128, 10), at.optim.adam(1e-2), backend="thread", workers=2,
        batch_size=BATCH, shards=SHARDS,
    )  # fmt: skip
    fit = asyncio.create_task(trainer.fit(problem[0], epochs=1))
    await closing.wait()  # the fit's steps are done: it is closing its backend
    closed = trainer.backend
    fit.cancel()
    await asyncio.sleep(0)
    resume.set()
    with pytest.raises(asyncio.CancelledError):
        await fit
    assert trainer.state.step == STEPS_PER_EPOCH
    assert closed.state is State.CLOSED  # closed to the end ...
    assert trainer.backend is not closed
    assert trainer.backend.state is State.UNOPENED
    result = await trainer.fit(problem[0], epochs=1)  # ... and the trainer still usable
    assert (result.steps, trainer.state.epoch) == (STEPS_PER_EPOCH, 2)
    await trainer.aclose()
