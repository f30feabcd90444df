"""Loop latency: the lag monitor (against a deliberately blocked loop and numpy's percentiles),
its reports, and thread workers running below the loop's priority."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import asynctrain as at
from asynctrain._cli import main
from asynctrain._monitor import TRAINING_INTERVAL, _nearest_rank
from asynctrain._threads import ThreadPool
from asynctrain.backends._priority import NICENESS, batch_policy


async def test_a_free_loop_has_small_lag() -> None:
    async with at.LoopLagMonitor() as lag:
        await asyncio.sleep(0.1)
    stats = lag.stats()
    assert stats.samples == stats.beats >= 10  # ~90 on a free machine
    assert 0.0 <= stats.p50_ms <= stats.p99_ms <= stats.max_ms
    assert stats.p50_ms < 5.0  # generous: a shared CI machine; the bench reports the real figure


async def test_a_blocked_loop_shows_the_block_as_lag() -> None:
    async with at.LoopLagMonitor() as lag:
        # Deliberately block the loop in a callback: this is what the monitor must see.
        asyncio.get_running_loop().call_later(0.01, time.sleep, 0.05)
        await asyncio.sleep(0.1)
    assert lag.stats().max_ms >= 45.0


async def test_the_window_bounds_memory_and_reset_forgets() -> None:
    lag = at.LoopLagMonitor(window=8)
    lag.start()
    try:
        deadline = time.monotonic() + 30  # a loaded machine may beat slowly
        while lag.stats().beats <= 8 and time.monotonic() < deadline:  # noqa: ASYNC110 (a count, no event)
            await asyncio.sleep(0.01)
        assert lag.stats().samples == 8 < lag.stats().beats
        lag.reset()
        assert lag.stats().samples == 0
        assert math.isnan(lag.stats().p99_ms)
    finally:
        lag.stop()
    assert not lag.running
    lag.stop()  # idempotent


async def test_starting_twice_is_refused() -> None:
    async with at.LoopLagMonitor() as lag:
        with pytest.raises(at.StateError, match="already running"):
            lag.start()


def test_bad_settings_name_the_value() -> None:
    with pytest.raises(at.ConfigError, match="interval"):
        at.LoopLagMonitor(interval=0)
    with pytest.raises(at.ConfigTypeError, match="window"):
        at.LoopLagMonitor(window=2.5)  # type: ignore[arg-type]


def test_start_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        at.LoopLagMonitor().start()


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 1.0])
def test_nearest_rank_matches_numpy(q: float) -> None:
    values = sorted(np.random.default_rng(0).exponential(size=997).tolist())
    expected = np.percentile(values, q * 100, method="inverted_cdf")
    assert _nearest_rank(values, q) == expected


async def test_fit_reports_loop_lag_when_asked() -> None:
    intervals: set[float] = set()

    class Slow(at.Callback):  # every epoch lasts several of the monitor's 10 ms heartbeats
        async def on_step(self, event: at.StepEvent) -> None:
            assert trainer.lag is not None
            intervals.add(trainer.lag.interval)
            await asyncio.sleep(0.005)

    data = at.data.synthetic("softmax", n=2000)
    model = at.models.SoftmaxRegression(128, 10)
    async with at.Trainer(model, backend="thread", workers=2, batch_size=256) as trainer:
        plain = await trainer.fit(data, epochs=2)
        watched = await trainer.fit(data, epochs=2, monitor_lag=True, callbacks=[Slow()])
    assert intervals == {TRAINING_INTERVAL}  # not 1 ms: that cost a thread backend ~9 %
    assert watched.extra["loop_lag_p50_ms"] >= 0.0
    assert plain.extra == {}
    assert set(watched.extra) == {"loop_lag_p50_ms", "loop_lag_p99_ms", "loop_lag_max_ms"}
    assert watched.extra["loop_lag_p99_ms"] <= watched.extra["loop_lag_max_ms"]
    # Epoch events carry the p99 so far only while the fit measures it.
    assert all(math.isnan(e.loop_lag_p99_ms) for e in plain.history)
    assert all(
        0.0 <= e.loop_lag_p99_ms <= watched.extra["loop_lag_max_ms"] for e in watched.history
    )
    assert trainer.lag is None


def test_demo_summary_reports_loop_lag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--n", "4000", "--epochs", "1", "--json", "--workers", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["loop_lag_p99_ms"] <= summary["loop_lag_max_ms"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
async def test_thread_workers_run_below_the_loops_priority() -> None:
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async with at.backends.ThreadBackend(workers=2) as backend:
        worker, policy = await backend.run(lambda: (niceness(), os.sched_getscheduler(0)))
    assert worker == min(19, niceness() + NICENESS)
    # Waking a worker never preempts the loop that woke it (backends/_priority.py),
    # where the environment lets a thread take that policy.
    probe = ThreadPool(1, name="asynctrain-probe")
    try:
        allowed = await probe.run(batch_policy)
    finally:
        probe.shutdown()
    assert policy == (os.SCHED_BATCH if allowed else os.SCHED_OTHER)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the loop's thread keeps its own


def _recorded_orders(
    monkeypatch: pytest.MonkeyPatch, hold: dict[int, threading.Event] | None = None
) -> tuple[dict[int, str], list[asyncio.Event]]:
    """Record which thread draws each epoch's permutation, and when each starts (an
    asyncio.Event per epoch, of the first four); a draw for an epoch in ``hold`` waits
    until that threading.Event is set."""
    import asynctrain._engine._epochs as epochs_module

    threads: dict[int, str] = {}
    began = [asyncio.Event() for _ in range(4)]
    loop, original = asyncio.get_running_loop(), epochs_module.epoch_order

    def recording(n: int, *, seed: int, epoch: int) -> np.ndarray:
        threads[epoch] = threading.current_thread().name
        loop.call_soon_threadsafe(began[epoch].set)
        if hold is not None and epoch in hold:
            assert hold[epoch].wait(10), "the test never let the draw go on"
        return original(n, seed=seed, epoch=epoch)

    monkeypatch.setattr(epochs_module, "epoch_order", recording)
    return threads, began


async def _polled(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait until ``condition()`` holds (set by another thread, so polled)."""
    deadline = time.monotonic() + seconds
    while not condition():  # another thread makes it hold: nothing to await
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.005)


async def _until(event: asyncio.Event, seconds: float = 10.0) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


async def test_each_epoch_order_is_drawn_off_the_loop_while_the_epoch_before_trains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Epoch 1's permutation starts being drawn once half of epoch 0 is trained, not
    before (a fit stopped early draws none for nothing), and before epoch 0 ends (its last
    step waits for that), on a thread of its own: neither the loop nor the update thread
    waits for it."""
    threads, began = _recorded_orders(monkeypatch)

    class WaitsForTheNextOrder(at.Callback):
        steps = 0
        early: bool | None = None
        seen: bool | None = None

        async def on_step(self, event: at.StepEvent) -> None:
            self.steps += 1
            if self.steps == 1:  # a quarter of epoch 0
                self.early = began[1].is_set()
            if self.steps == 4:  # the last of epoch 0: epoch 1 waits for this callback
                self.seen = await _until(began[1])

    waits = WaitsForTheNextOrder()
    data = at.data.synthetic("softmax", n=1000)
    model = at.models.SoftmaxRegression(128, 10)
    result = await at.fit(
        model, data, backend="thread", workers=2, epochs=3, batch_size=250, callbacks=[waits]
    )
    assert waits.early is False
    assert waits.seen is True
    assert result.steps == 12
    assert sorted(threads) == [0, 1, 2]
    assert all(name.startswith("asynctrain-off-loop-epoch_rows") for name in threads.values())


async def test_a_fit_cancelled_while_the_next_order_is_drawn_waits_for_that_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelled with the next epoch's permutation half drawn, the fit ends only after the
    drawing thread has (the leak check sees no thread left)."""
    release = threading.Event()
    _, began = _recorded_orders(monkeypatch, hold={1: release})
    data = at.data.synthetic("softmax", n=1000)
    model = at.models.SoftmaxRegression(128, 10)
    fit = asyncio.create_task(
        at.fit(model, data, backend="thread", workers=2, epochs=3, batch_size=250)
    )
    try:
        assert await _until(began[1])
        fit.cancel()
        await asyncio.sleep(0.05)
        assert not fit.done()  # still waiting for the drawing thread
    finally:
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await fit


@pytest.mark.parametrize("backend", ["thread", "process"])
async def test_an_order_that_fails_to_draw_fails_the_fit_after_the_epoch_before(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """A draw that raises (out of memory, say) fails the fit with its own error once the
    epoch before it ends, not sooner and not silently; its thread is gone (leak check)."""
    import asynctrain._engine._epochs as epochs_module

    original = epochs_module.epoch_order

    def failing(n: int, *, seed: int, epoch: int) -> np.ndarray:
        if epoch == 1:
            raise MemoryError("no room for epoch 1's order")
        return original(n, seed=seed, epoch=epoch)

    monkeypatch.setattr(epochs_module, "epoch_order", failing)
    data = at.data.synthetic("softmax", n=1000)
    model = at.models.SoftmaxRegression(128, 10)
    async with at.Trainer(model, backend=backend, workers=2, batch_size=250) as trainer:
        with pytest.raises(MemoryError, match="epoch 1's order"):
            await trainer.fit(data, epochs=3)
        assert trainer.state.epoch == 1  # epoch 0 trained whole and committed
        assert trainer.state.step == 4


def _drawing_and_preparing(
    monkeypatch: pytest.MonkeyPatch, hold: threading.Event | None = None
) -> tuple[list[tuple[int, int]], list[bool]]:
    """Record each permutation drawn, as (rows, epoch), and whether a draw had begun when
    the training data's preparation started (waiting up to 5 s for one to begin); a
    preparation waits for ``hold`` when given."""
    import asynctrain._engine._epochs as epochs_module
    import asynctrain._trainer as trainer_module

    drawn: list[tuple[int, int]] = []
    seen: list[bool] = []
    began = threading.Event()
    original_order, original_prepare = epochs_module.epoch_order, trainer_module.prepare

    def order(n: int, *, seed: int, epoch: int) -> np.ndarray:
        drawn.append((n, epoch))
        began.set()
        return original_order(n, seed=seed, epoch=epoch)

    def prepare(*args: object, **kwargs: object) -> object:
        if not seen:  # the training data's (the validation data's comes after)
            seen.append(began.wait(5))
        if hold is not None:
            assert hold.wait(10), "the test never let the preparation go on"
        return original_prepare(*args, **kwargs)

    monkeypatch.setattr(epochs_module, "epoch_order", order)
    monkeypatch.setattr(trainer_module, "prepare", prepare)
    return drawn, seen


@pytest.mark.parametrize("backend", ["thread", "process"])
async def test_the_first_epoch_order_is_drawn_while_the_data_is_prepared(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """The first permutation is drawn beside the preparation of the data (both off the
    loop), not after it: the preparation waits for the draw to begin (the old order of
    things waits 5 s in vain), and the fit trains to the bits of the inline backend's."""
    data = at.data.synthetic("softmax", n=1000)
    model = at.models.SoftmaxRegression(128, 10)
    reference = await at.fit(model, data, backend="inline", epochs=2, batch_size=250)
    drawn, seen = _drawing_and_preparing(monkeypatch)
    result = await at.fit(
        model, data, backend=backend, workers=2, epochs=2, batch_size=250, validation=data
    )
    assert seen == [True]
    assert drawn == [(1000, 0), (1000, 1)]
    for key, value in reference.params.items():
        assert result.params[key].tobytes() == value.tobytes()


async def test_an_order_drawn_for_a_wrong_row_count_is_drawn_afresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The row count read before the data is prepared is a guess: one the prepared data
    does not bear out is dropped and the right order drawn, with the same bits."""
    import asynctrain._trainer as trainer_module

    data = at.data.synthetic("softmax", n=1000)
    model = at.models.SoftmaxRegression(128, 10)
    reference = await at.fit(model, data, backend="inline", epochs=2, batch_size=250)
    drawn, _ = _drawing_and_preparing(monkeypatch)
    monkeypatch.setattr(trainer_module, "rows_given", lambda data: 999)
    result = await at.fit(model, data, backend="thread", epochs=2, batch_size=250)
    assert (999, 0) in drawn
    assert [d for d in drawn if d[0] == 1000] == [(1000, 0), (1000, 1)]
    for key, value in reference.params.items():
        assert result.params[key].tobytes() == value.tobytes()


async def test_refused_data_leaves_no_order_being_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Data refused by its preparation (more rows of X than labels) fails the fit with a
    DataError once the first order's draw, begun beside it, has ended (the leak check
    sees no thread left); the trainer trains afterwards."""
    drawn, seen = _drawing_and_preparing(monkeypatch)
    X, y = np.zeros((101, 128), np.float32), np.arange(100) % 10
    async with at.Trainer(at.models.SoftmaxRegression(128, 10), backend="thread") as trainer:
        with pytest.raises(at.DataError, match="101"):
            await trainer.fit((X, y))
        assert seen == [True]
        assert drawn == [(100, 0)]
        result = await trainer.fit((X[:100], y))
    assert result.steps == 1


async def test_a_fit_cancelled_while_its_data_is_prepared_waits_for_the_first_draw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelled while the data is prepared and the first order drawn, the fit ends with
    CancelledError once both threads have (the leak check sees none left)."""
    release = threading.Event()
    drawn, seen = _drawing_and_preparing(monkeypatch, hold=release)
    data = at.data.synthetic("softmax", n=1000)
    model = at.models.SoftmaxRegression(128, 10)
    fit = asyncio.create_task(at.fit(model, data, backend="thread", epochs=2, batch_size=250))
    try:
        await _polled(lambda: bool(seen))
        fit.cancel()
        await asyncio.sleep(0.05)
        assert not fit.done()  # the preparation is still held
    finally:
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await fit
    assert seen == [True]
    assert drawn == [(1000, 0)]


async def test_the_inline_backend_draws_each_order_on_the_loop_when_its_epoch_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads, _ = _recorded_orders(monkeypatch)
    data = at.data.synthetic("softmax", n=1000)
    model = at.models.SoftmaxRegression(128, 10)
    await at.fit(model, data, backend="inline", epochs=2, batch_size=250)
    assert threads == {0: "MainThread", 1: "MainThread"}


@pytest.mark.parametrize("method", ["fit", "fit_stream"])
async def test_input_is_checked_and_converted_off_the_loop(
    monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """float64 data for a float32 model: the conversion (a copy of all of X) and the
    checks run on a thread, never on the loop, for the data and the validation data."""
    import asynctrain.data._validate as convert_module
    import asynctrain.models._validate as check_module

    calls: list[tuple[str, threading.Thread]] = []
    to_float, check_labels = convert_module.to_float, check_module._check_labels

    def converting(X: np.ndarray, dtype: np.dtype | None, **options: Any) -> np.ndarray:
        if X.dtype == np.float64 and dtype == np.float32:
            calls.append(("convert", threading.current_thread()))
        return to_float(X, dtype, **options)

    def checking(y: np.ndarray, n_classes: int, *, single_class: bool) -> None:
        calls.append(("check", threading.current_thread()))
        check_labels(y, n_classes, single_class=single_class)

    monkeypatch.setattr(convert_module, "to_float", converting)
    monkeypatch.setattr(check_module, "_check_labels", checking)
    data = at.data.synthetic("softmax", n=4000, dtype=np.float64)
    train, val = (data.X[:3000], data.y[:3000]), (data.X[3000:], data.y[3000:])
    model = at.models.SoftmaxRegression(128, 10)  # float32
    async with at.Trainer(model, backend="thread", workers=2, batch_size=500) as trainer:
        if method == "fit":
            await trainer.fit(train, validation=val)
        else:
            await trainer.fit_stream([train], validation=val)
    loop_thread = threading.current_thread()
    assert [kind for kind, thread in calls if thread is loop_thread] == []
    # the data and the validation data: each converted and its labels checked
    assert sorted(kind for kind, _ in calls).count("convert") >= 2
    assert sorted(kind for kind, _ in calls).count("check") >= 2
