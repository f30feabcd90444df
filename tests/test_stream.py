"""Streaming and online training: fit_stream, stream_steps and partial_fit on every backend."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import numpy as np
import pytest
from _sources import agen as _agen
from _sources import pieces as _pieces

import asynctrain as at
from asynctrain._streaming._feed import RING_SLOTS
from asynctrain.data import Dataset
from asynctrain.models import LinearRegression, SoftmaxRegression

BATCH = 64


@pytest.fixture
def backend_name(backend_name: str) -> str:
    """Every backend of conftest.BACKENDS that this checkout has (process lands separately)."""
    if backend_name == "process":
        pytest.importorskip("asynctrain.backends._process")
    return backend_name


def _data(n: int = 1000, d: int = 8, k: int = 3, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (X[:, :k] + 0.3 * rng.standard_normal((n, k))).argmax(axis=1)
    return Dataset(X, y)


def _trainer(backend: str, model: at.models.Model | None = None) -> at.Trainer:
    return at.Trainer(
        model or SoftmaxRegression(8, 3),
        at.optim.adam(1e-2),
        backend=backend,
        workers=None if backend == "inline" else 2,
        batch_size=BATCH,
        shards=4,
        seed=3,
    )


def _bits(params: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in params.items()}


async def _reference(backend: str, data: Dataset, epochs: int = 1) -> dict[str, np.ndarray]:
    async with _trainer(backend) as trainer:
        return (await trainer.fit(data, epochs=epochs)).params


# -- same bits as the in-memory dataset ------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_stream_of_a_datasets_batches_equals_fitting_it(backend_name: str, kind: str) -> None:
    data = _data()  # 1000 rows: 15 full batches of 64 and a short last one of 40
    reference = await _reference("inline", data)
    pieces = _pieces(data, 100)  # re-cut from 100-row pieces into 64-row batches
    source = _agen(pieces) if kind == "async" else list(pieces)
    async with _trainer(backend_name) as trainer:
        result = await trainer.fit_stream(source)
        assert trainer.state.step == result.steps == 16
        assert (trainer.state.epoch, trainer.state.batch) == (0, 0)  # no epoch position moved
    assert _bits(result.params) == _bits(reference)


@pytest.mark.parametrize("options", [{"mode": "async"}, {"mode": "local", "local_steps": 2}])
async def test_a_mode_that_trains_held_data_only_names_both_stream_entries(
    options: dict[str, object],
) -> None:
    """The refusal named streams only, which read wrongly for partial_fit; and it came
    after the trainer had opened its backend (starting a process backend's workers)."""
    data = _data()
    trainer = at.Trainer(SoftmaxRegression(8, 3), backend="thread", **options)
    backend = trainer.backend
    for call in (
        trainer.fit_stream(_pieces(data, 100)),
        trainer.partial_fit(data.X[:100], data.y[:100]),
    ):
        with pytest.raises(at.ConfigError, match="fit_stream and partial_fit need mode='sync'"):
            await call
    assert trainer.backend is backend  # never opened (a fit would close it and make anew)
    assert backend.state == "unopened"


class _AsyncBatches:
    """A custom async iterator (no generator) that records its ``aclose()``."""

    def __init__(self, data: Dataset) -> None:
        self._pieces, self.closed = iter(_pieces(data, 100)), False

    def __aiter__(self) -> _AsyncBatches:
        return self

    async def __anext__(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            return next(self._pieces)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self.closed = True


class _SyncBatches:
    """A custom sync iterator that records its ``close()``."""

    def __init__(self, data: Dataset) -> None:
        self._pieces, self.closed = iter(_pieces(data, 100)), False

    def __iter__(self) -> _SyncBatches:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return next(self._pieces)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("kind", [_AsyncBatches, _SyncBatches])
@pytest.mark.parametrize(
    ("refusal", "error"),
    [
        ("mode", at.ConfigError),
        ("shuffle", at.ConfigError),
        ("max_steps", at.ConfigError),
        ("callbacks", at.ConfigTypeError),
        ("validation", at.DataError),
        ("closed", at.StateError),
    ],
)
async def test_a_stream_fit_refused_before_it_starts_closes_its_source(
    kind: type[_AsyncBatches | _SyncBatches], refusal: str, error: type[Exception]
) -> None:
    """A fit that ran closes its source; a refused one left it open (a connection, a
    generator's ``finally``) before the fix."""
    data = _data()
    options: dict[str, object] = {"mode": "async"} if refusal == "mode" else {}
    if refusal == "shuffle":
        options["shuffle"] = "shard"
    trainer = at.Trainer(SoftmaxRegression(8, 3), backend="thread", **options)  # type: ignore[arg-type]
    fit: dict[str, object] = {
        "max_steps": {"max_steps": 0},
        "callbacks": {"callbacks": [object()]},
        "validation": {"validation": (data.X[:, :5], data.y)},
    }.get(refusal, {})
    if refusal == "closed":
        await trainer.aclose()
    source = kind(data)
    with pytest.raises(error):
        await trainer.fit_stream(source, **fit)  # type: ignore[arg-type]
    assert source.closed
    if refusal in fit:  # the trainer still trains, on a source it closes too
        ran = kind(data)
        assert (await trainer.fit_stream(ran)).steps == 2  # 1000 rows, batches of 512
        assert ran.closed


async def test_a_stream_fit_refused_while_another_runs_closes_its_own_source() -> None:
    data, started, gate = _data(), asyncio.Event(), asyncio.Event()

    class Hold(at.Callback):
        async def on_step(self, event: at.StepEvent) -> None:  # type: ignore[override]
            started.set()
            await gate.wait()

    async with _trainer("inline") as trainer:
        source = _agen(_pieces(data, 100))
        first = asyncio.create_task(trainer.fit_stream(source, callbacks=[Hold()]))
        await started.wait()
        second = _AsyncBatches(data)
        with pytest.raises(at.StateError, match="already running"):
            await trainer.fit_stream(second)
        assert second.closed
        gate.set()
        await first


class _StartFails(at.Callback):
    """A callback whose ``on_fit_start`` raises, or waits until the fit is cancelled."""

    def __init__(self, how: str) -> None:
        self.how, self.waiting = how, asyncio.Event()

    def on_fit_start(self, fit: at.FitControl) -> Awaitable[None] | None:
        if self.how == "raises":
            raise LookupError("on_fit_start broke")
        return self._wait()

    async def _wait(self) -> None:
        self.waiting.set()
        await asyncio.Event().wait()


@pytest.mark.parametrize("how", ["raises", "cancelled"])
@pytest.mark.parametrize("kind", ["async-iterator", "sync-iterator", "async-generator"])
async def test_a_fit_whose_on_fit_start_fails_closes_its_source(kind: str, how: str) -> None:
    """``on_fit_start`` runs before the stream's events are first asked for: a callback
    that raised there (or a cancel landing there) left the source open (its
    ``aclose``/``close`` never called, an async generator's ``finally`` never run)
    before the fix."""
    data, finished = _data(), []

    async def generator() -> AsyncIterator[object]:
        try:
            for item in _pieces(data, 100):
                yield item
        finally:
            finished.append(True)

    source: _AsyncBatches | _SyncBatches | AsyncIterator[object] = (
        _AsyncBatches(data)
        if kind == "async-iterator"
        else _SyncBatches(data)
        if kind == "sync-iterator"
        else generator()
    )
    if kind == "async-generator":
        await anext(source)  # started: else its finally has nothing to run
    callback = _StartFails(how)
    async with _trainer("thread") as trainer:
        fit = asyncio.ensure_future(trainer.fit_stream(source, callbacks=[callback]))  # type: ignore[arg-type]
        if how == "cancelled":
            await callback.waiting.wait()
            fit.cancel()
        with pytest.raises(LookupError if how == "raises" else asyncio.CancelledError):
            await fit
        assert finished if kind == "async-generator" else source.closed  # type: ignore[union-attr]
        assert "running" not in repr(trainer)
        assert (await trainer.fit_stream(list(_pieces(data, 100)))).steps == 16  # reusable


async def test_two_epochs_streamed_equal_two_epochs_fitted() -> None:
    data = _data(n=1024)  # batches never straddle an epoch boundary
    reference = await _reference("inline", data, epochs=2)
    async with _trainer("thread") as trainer:
        result = await trainer.fit_stream(_agen(_pieces(data, 37, epochs=2)))
    assert result.steps == 32
    assert _bits(result.params) == _bits(reference)


async def test_regression_targets_keep_their_dtype() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    y = X @ rng.standard_normal(8) + 0.1  # float64 targets on a float32 model
    data = Dataset(X, y)
    model = LinearRegression(8)
    async with _trainer("inline", model=model) as trainer:
        reference = (await trainer.fit(data, epochs=1)).params
    async with _trainer("inline", model=model) as trainer:
        result = await trainer.fit_stream(_agen(_pieces(data, 50)))
    assert _bits(result.params) == _bits(reference)


# -- backpressure ------------------------------------------------------------------------


async def test_a_fast_producer_is_held_back(backend_name: str) -> None:
    data, buffer, steps = _data(n=BATCH * 40), 2, 0
    ahead: list[int] = []

    async def producer() -> AsyncIterator[object]:
        for produced, item in enumerate(_pieces(data, BATCH)):
            ahead.append(produced - steps)  # batches handed over but not yet trained on
            yield item

    class Count(at.Callback):
        def on_step(self, event: at.StepEvent) -> None:
            nonlocal steps
            steps += 1

    async with _trainer(backend_name) as trainer:
        await trainer.fit_stream(producer(), buffer=buffer, callbacks=[Count()])
    # queue + one being validated + one being cut + the ring's slots (docs/streaming.md)
    bound = buffer + 2 + RING_SLOTS
    assert max(ahead) <= bound, ahead
    assert max(ahead) >= buffer, "the producer never got ahead: backpressure was not tested"


async def test_a_slow_producer_never_makes_the_trainer_spin() -> None:
    loop = asyncio.get_running_loop()
    if not hasattr(loop, "_run_once"):
        pytest.skip("counts iterations of asyncio's own event loop")
    iterations, batches = 0, 12
    original = loop._run_once

    def counting() -> None:
        nonlocal iterations
        iterations += 1
        original()

    async def slow() -> AsyncIterator[object]:
        for item in _pieces(_data(n=BATCH * batches), BATCH):
            await asyncio.sleep(0.02)  # long enough for a polling trainer to spin thousands
            yield item

    loop._run_once = counting  # type: ignore[method-assign]
    try:
        async with _trainer("thread") as trainer:
            result = await trainer.fit_stream(slow())
    finally:
        loop._run_once = original  # type: ignore[method-assign]
    assert result.steps == batches
    assert iterations < 40 * batches, iterations  # a few wake-ups per batch, not per ms


# -- stopping: max_steps, max_samples, the source's end, callbacks ------------------------


class _Endless:
    """An endless async generator that records how far it was pulled and whether it closed."""

    def __init__(self, size: int = BATCH) -> None:
        self.size, self.pulled, self.closed = size, 0, False
        self._data = _data(n=size * 4)

    async def __call__(self) -> AsyncIterator[object]:
        try:
            while True:
                start = (self.pulled % 4) * self.size
                self.pulled += 1
                yield (
                    self._data.X[start : start + self.size],
                    self._data.y[start : start + self.size],
                )
        finally:
            self.closed = True


async def test_max_steps_stops_an_endless_stream_and_closes_it(backend_name: str) -> None:
    source = _Endless()
    async with _trainer(backend_name) as trainer:
        result = await trainer.fit_stream(source(), max_steps=5)
    assert result.steps == 5
    assert source.pulled == 5  # nothing read beyond what the steps needed
    assert source.closed


async def test_max_samples_trains_on_exactly_that_many_rows() -> None:
    source, samples = _Endless(size=50), 0

    class Count(at.Callback):
        def on_step(self, event: at.StepEvent) -> None:
            nonlocal samples
            samples += event.samples

    async with _trainer("inline") as trainer:
        result = await trainer.fit_stream(source(), max_samples=300, callbacks=[Count()])
    assert (samples, result.steps, source.pulled) == (300, 5, 6)  # 64 * 4 + 44
    assert source.closed


async def test_periods_report_validation_every_n_steps() -> None:
    data, val = _data(n=BATCH * 10), _data(n=200, seed=1)
    async with _trainer("inline") as trainer:
        result = await trainer.fit_stream(
            _agen(_pieces(data, BATCH)), validate_every=4, validation=val
        )
    assert [(e.epoch, e.steps) for e in result.history] == [(0, 4), (1, 4), (2, 2)]
    assert all(0.0 <= e.val_accuracy <= 1.0 for e in result.history)
    assert result.history[-1].val_loss < result.history[0].val_loss


async def test_early_stopping_works_on_step_periods() -> None:
    source = _Endless()
    trainer = at.Trainer(
        SoftmaxRegression(8, 3), at.optim.sgd(0.0), backend="inline", batch_size=BATCH
    )
    stopper = at.EarlyStopping(patience=2, monitor="loss")  # a zero step size never improves
    result = await trainer.fit_stream(source(), validate_every=3, callbacks=[stopper])
    assert result.stopped_early
    assert (result.epochs, result.steps) == (3, 9)
    assert source.closed


async def test_stream_steps_yields_events_and_closing_it_closes_the_source() -> None:
    source = _Endless()
    async with _trainer("thread") as trainer:
        events = trainer.stream_steps(source(), validate_every=2)
        async with contextlib.aclosing(events):
            kinds = []
            async for event in events:
                kinds.append((event.kind, event.epoch))
                if len(kinds) == 5:
                    break
        assert kinds == [("step", 0), ("step", 0), ("epoch", 0), ("step", 1), ("step", 1)]
        assert source.closed
        assert "running" not in repr(trainer)


async def test_empty_sources_and_empty_batches() -> None:
    data = _data(n=BATCH * 2)
    empty = (data.X[:0], data.y[:0])
    async with _trainer("inline") as trainer:
        nothing = await trainer.fit_stream([])
        some = await trainer.fit_stream([empty, *list(_pieces(data, BATCH)), empty])
    assert (nothing.steps, nothing.history) == (0, [])
    assert some.steps == 2
    # An empty poll is skipped, yet counted: an error names the source's own index.
    bad = data.X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(at.DataError, match="stream batch 2: X has a non-finite"):
        await _trainer("inline").fit_stream([empty, (data.X, data.y), (bad, data.y)])


async def test_an_empty_batch_of_the_wrong_width_stops_the_stream(backend_name: str) -> None:
    """Skipped unchecked before the fix: a producer yielding 4 columns of nothing ran on."""
    data = _data(n=BATCH * 2)
    narrow = (data.X[:0, :4], data.y[:0])
    async with _trainer(backend_name) as trainer:
        with pytest.raises(at.DataError, match=r"stream batch 1: a batch of no rows.* 4 features"):
            await trainer.fit_stream(_agen(iter([(data.X[:BATCH], data.y[:BATCH]), narrow])))
        assert trainer.state.step == 1  # the batch before it


# -- bad batches, raising sources, cancellation --------------------------------------------


def _bad_batches() -> list[tuple[object, type[Exception], str]]:
    X, y = _data(n=BATCH).X, _data(n=BATCH).y
    X_nan = X.copy()
    X_nan[5, 2] = np.nan
    return [
        ((X_nan, y), at.DataError, r"stream batch 3: X has a non-finite value \(nan\) at row 5"),
        ((X[:, :4], y), at.DataError, "stream batch 3: dataset has 4 features"),
        ((np.zeros((BATCH, 8)), y + 3), at.DataError, r"stream batch 3: labels must be in 0\.\.2"),
        ((X, y[:10]), at.DataError, "stream batch 3: X has 64 rows but y has 10"),
        ({"X": X}, at.DataTypeError, "stream batch 3: got dict, not an"),
        # nested lists of unequal lengths: numpy's bare ValueError before the fix
        (([[1.0] * 8, [1.0] * 7], [0, 1]), at.DataError, "stream batch 3: X cannot be read"),
    ]


@pytest.mark.parametrize(("bad", "error", "message"), _bad_batches())
async def test_a_bad_batch_names_itself_and_is_not_applied(
    bad: object, error: type[Exception], message: str
) -> None:
    good = list(_pieces(_data(), BATCH))[:3]
    closed = []

    async def source() -> AsyncIterator[object]:
        try:
            for item in [*good, bad, *good]:
                yield item
        finally:
            closed.append(True)

    async with _trainer("inline") as trainer:
        expected = _bits((await trainer.fit_stream(good)).params)
    async with _trainer("inline") as trainer:
        with pytest.raises(error, match=message):
            await trainer.fit_stream(source())
        assert _bits(trainer.params) == expected  # the good batches before it, nothing after
        assert trainer.state.step == 3
        assert closed
        assert "running" not in repr(trainer)


async def test_a_bad_batch_drops_the_partly_assembled_batch(backend_name: str) -> None:
    X, y = _data(n=100).X, _data(n=100).y
    bad = (X[:10] * np.inf, y[:10])
    async with _trainer(backend_name) as trainer:
        with pytest.raises(at.DataError, match="stream batch 1: X has a non-finite value"):
            await trainer.fit_stream([(X, y), bad])  # 64 rows trained; 36 pending, dropped
        assert trainer.state.step == 1


async def test_a_raising_source_propagates_its_own_exception(backend_name: str) -> None:
    class SourceBroke(Exception):
        pass

    good, closed = list(_pieces(_data(), BATCH))[:2], []

    async def source() -> AsyncIterator[object]:
        try:
            for item in good:
                yield item
            raise SourceBroke("the message queue went away")
        finally:
            closed.append(True)

    async with _trainer(backend_name) as trainer:
        with pytest.raises(SourceBroke, match="message queue") as caught:
            await trainer.fit_stream(source())
        assert trainer.state.step == 2  # the batches it yielded before failing
    assert "source" in [frame.name for frame in caught.traceback]  # its own traceback
    assert closed


class _BreaksAndCannotClose:
    """An async iterator that yields ``good``, then raises; its ``aclose`` fails too."""

    def __init__(self, good: list[tuple[np.ndarray, np.ndarray]], error: Exception) -> None:
        self._good, self.error, self.close_tried = iter(good), error, False

    def __aiter__(self) -> _BreaksAndCannotClose:
        return self

    async def __anext__(self) -> tuple[np.ndarray, np.ndarray]:
        item = next(self._good, None)
        if item is None:
            raise self.error
        return item

    async def aclose(self) -> None:
        self.close_tried = True
        raise OSError("the connection was already gone")


async def test_a_source_that_raises_and_then_fails_to_close_raises_its_own_error(
    backend_name: str,
) -> None:
    """The close's error replaced the source's own (and, through the task group's
    unwrapping, lost it from the chain): two fits sharing one async generator reported
    "aclose(): asynchronous generator is already running", not the "anext()" that was
    the cause. The source's error is raised, the failed close noted on it."""
    error = LookupError("the message queue went away")
    source = _BreaksAndCannotClose(list(_pieces(_data(), BATCH))[:2], error)
    async with _trainer(backend_name) as trainer:
        with pytest.raises(LookupError) as caught:
            await asyncio.wait_for(trainer.fit_stream(source), 30)
        assert caught.value is error
        assert source.close_tried
        assert any("OSError: the connection was already gone" in n for n in error.__notes__)
        assert trainer.state.step == 2
        assert (await trainer.fit_stream(list(_pieces(_data(), BATCH))[:1])).steps == 1


class _Fragile(SoftmaxRegression):
    """Fails on any shard whose first feature holds the marker 42."""

    def loss_and_grad(self, params, X, y):  # type: ignore[no-untyped-def]
        if (X[:, 0] == 42).any():
            raise ZeroDivisionError("the model broke on this batch")
        return super().loss_and_grad(params, X, y)


async def test_a_failing_step_stops_the_stream_with_its_own_error() -> None:
    good, closed = list(_pieces(_data(), BATCH)), []
    marked = good[2][0].copy()
    marked[:, 0] = 42

    async def source() -> AsyncIterator[object]:
        try:
            for i, (X, y) in enumerate(good):
                yield (marked if i == 2 else X), y
        finally:
            closed.append(True)

    async with _trainer("thread", model=_Fragile(8, 3)) as trainer:
        with pytest.raises(ZeroDivisionError, match="broke"):
            await trainer.fit_stream(source())
        assert trainer.state.step == 2
    assert closed


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_cancelling_stops_consuming_and_closes_the_source(
    backend_name: str, kind: str
) -> None:
    data, pulled, closed = _data(n=BATCH * 4), [], []
    stepped = asyncio.Event()

    def rows(i: int) -> tuple[np.ndarray, np.ndarray]:
        start = (i % 4) * BATCH
        return data.X[start : start + BATCH], data.y[start : start + BATCH]

    async def agen() -> AsyncIterator[object]:
        try:
            while True:
                pulled.append(1)
                yield rows(len(pulled))
        finally:
            closed.append(True)

    def gen() -> Iterator[object]:
        try:
            while True:
                pulled.append(1)
                yield rows(len(pulled))
        finally:
            closed.append(True)

    class Signal(at.Callback):
        def on_step(self, event: at.StepEvent) -> None:
            if event.step == 3:
                stepped.set()

    async with _trainer(backend_name) as trainer:
        source = agen() if kind == "async" else gen()
        fit = asyncio.ensure_future(trainer.fit_stream(source, callbacks=[Signal()]))
        await stepped.wait()
        fit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fit
        assert closed == [True]
        so_far = len(pulled)
        await asyncio.sleep(0.01)
        assert len(pulled) == so_far  # nothing consumes the source any more
        assert "running" not in repr(trainer)
        step = trainer.state.step
        assert step >= 4
        assert trainer.state.version == step  # whole steps only
        await trainer.fit_stream(list(_pieces(data, BATCH)))  # and the trainer still works
        assert trainer.state.step == step + 4


# -- partial_fit -------------------------------------------------------------------------


async def test_concurrent_partial_fits_apply_once_each_in_call_order(backend_name: str) -> None:
    data = _data(n=600)
    sizes = [10, 64, 100, 1, 200, 33, 128, 64]  # some span several batches
    bounds = itertools.pairwise(np.cumsum([0, *sizes]))
    parts = [(data.X[a:b], data.y[a:b]) for a, b in bounds]
    async with _trainer(backend_name) as trainer:
        results = await asyncio.gather(*(trainer.partial_fit(X, y) for X, y in parts))
        assert trainer.state.step == sum(r.steps for r in results) == 13
    assert [r.steps for r in results] == [-(-n // BATCH) for n in sizes]
    async with _trainer("inline") as oracle:  # the same calls one after another
        for X, y in parts:
            await oracle.partial_fit(X, y)
    assert _bits(trainer.params) == _bits(oracle.params)
    assert _bits(results[-1].params) == _bits(oracle.params)


async def test_partial_fit_rejects_bad_data_whole() -> None:
    X, y = _data(n=100).X, _data(n=100).y
    async with _trainer("inline") as trainer:
        with pytest.raises(at.DataError, match=r"partial_fit data: labels must be in 0\.\.2"):
            await trainer.partial_fit(X, y + 1)
        assert trainer.state.step == 0
        one_class = await trainer.partial_fit(X[:5], np.zeros(5, dtype=np.int64))
        assert one_class.steps == 1  # one class is fine for an online update


async def test_partial_fit_and_fit_never_overlap() -> None:
    data, started, gate = _data(), asyncio.Event(), asyncio.Event()

    class Hold(at.Callback):
        async def on_step(self, event: at.StepEvent) -> None:  # type: ignore[override]
            started.set()
            await gate.wait()

    async with _trainer("thread") as trainer:
        fit = asyncio.ensure_future(trainer.fit(data, callbacks=[Hold()]))
        await started.wait()
        with pytest.raises(at.StateError, match="running a fit"):
            await trainer.partial_fit(data.X[:10], data.y[:10])
        gate.set()
        await fit
        started.clear()
        gate.clear()
        update = asyncio.ensure_future(trainer.partial_fit(data.X, data.y))
        await asyncio.sleep(0)
        with pytest.raises(at.StateError, match="already running"):
            await trainer.fit_stream([(data.X, data.y)])
        await update


# -- misuse --------------------------------------------------------------------------------


async def test_streams_and_datasets_are_not_confused() -> None:
    data = _data()
    async with _trainer("inline") as trainer:
        with pytest.raises(at.ConfigTypeError, match="with fit_stream"):
            await trainer.fit(_agen(_pieces(data, BATCH)))  # type: ignore[arg-type]
        with pytest.raises(at.ConfigTypeError, match="not a stream of batches"):
            await trainer.fit_stream(data)  # type: ignore[arg-type]
        with pytest.raises(at.ConfigTypeError, match="not a stream of batches"):
            await trainer.fit_stream((data.X, data.y))
        with pytest.raises(at.ConfigTypeError, match="iterable"):
            await trainer.fit_stream(42)  # type: ignore[arg-type]


async def test_a_path_or_a_parquet_stream_in_the_wrong_place_says_where_it_goes(
    tmp_path: Path,
) -> None:
    # A path iterated its characters ("stream batch 0: got str"), and a ParquetStream
    # given to fit() or as validation got the message of any other object.
    pytest.importorskip("pyarrow")
    stream = at.data.read_parquet(tmp_path / "train.parquet", label="y", batch_size=BATCH)
    data = _data()
    async with _trainer("inline") as trainer:
        for path in ("train.parquet", tmp_path / "train.parquet"):
            with pytest.raises(at.ConfigTypeError, match="read_parquet"):
                await trainer.fit_stream(path)  # type: ignore[arg-type]
        with pytest.raises(at.ConfigTypeError, match="fit_stream"):
            await trainer.fit(stream)  # type: ignore[arg-type]
        with pytest.raises(at.ConfigTypeError, match=r"validation is a ParquetStream.*to_dataset"):
            await trainer.fit_stream([(data.X, data.y)], validation=stream)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"max_samples": 1.5}, "max_samples must be an integer"),
        ({"validate_every": -1}, "validate_every must be >= 1"),
        ({"buffer": 0}, "buffer must be >= 1"),
    ],
)
async def test_bad_stream_settings(options: dict[str, object], message: str) -> None:
    async with _trainer("inline") as trainer:
        with pytest.raises((at.ConfigError, at.ConfigTypeError), match=message):
            await trainer.fit_stream([], **options)  # type: ignore[arg-type]


# -- batches are copied when validated: the producer may reuse or change its arrays --------


def _refilled(pieces: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[object]:
    """Yield every piece in the same two buffers, refilled in place (a ring of one)."""
    X, y = np.empty((100, 8), np.float32), np.empty(100, np.int64)
    for X_piece, y_piece in pieces:
        n = len(X_piece)
        X[:n], y[:n] = X_piece, y_piece
        yield X[:n], y[:n]


def _poisoned(pieces: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[object]:
    """Yield fresh arrays, and write a NaN into each after the trainer took it."""
    for X_piece, y in pieces:
        X = X_piece.copy()
        yield X, y
        X[0, 0] = np.nan


# Pieces of 100 rows are re-cut into buffers; pieces of BATCH rows become ring slots as
# they are (by reference on the inline and thread backends), so both paths are covered.
@pytest.mark.parametrize("size", [100, BATCH])
@pytest.mark.parametrize("producer", [_refilled, _poisoned])
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_batch_is_what_the_producer_yielded_not_what_it_wrote_later(
    backend_name: str, kind: str, producer: object, size: int
) -> None:
    data = _data()
    async with _trainer("inline") as trainer:  # the oracle: fresh, untouched arrays
        reference = (await trainer.fit_stream(list(_pieces(data, 100)))).params
    items = producer(_pieces(data, size))  # type: ignore[operator]
    source = _agen(items) if kind == "async" else items
    async with _trainer(backend_name) as trainer:
        result = await trainer.fit_stream(source)
    assert result.steps == 16
    assert _bits(result.params) == _bits(reference)


async def test_a_source_error_keeps_its_own_cause(backend_name: str) -> None:
    """The feed's task group raised the source's error ``from None``, erasing the
    ``raise ... from cause`` of the source (the connection error behind a decode
    error, say)."""

    async def source() -> AsyncIterator[object]:
        yield next(iter(_pieces(_data(), BATCH)))
        try:
            raise ConnectionResetError("the broker hung up")
        except ConnectionResetError as cause:
            raise LookupError("the message queue went away") from cause

    async with _trainer(backend_name) as trainer:
        with pytest.raises(LookupError) as caught:
            await asyncio.wait_for(trainer.fit_stream(source()), 30)
    assert isinstance(caught.value.__cause__, ConnectionResetError)


class _ShareAtFirstStep(at.Callback):
    """At the first step of a fit, hands that fit's source to a second fit (on another
    trainer) and keeps what that fit raised."""

    def __init__(self, other: at.Trainer, source: object) -> None:
        self.other, self.source = other, source
        self.raised: BaseException | None = None

    async def on_step(self, event: at.StepEvent) -> None:
        if event.step == 0:
            try:
                await self.other.fit_stream(self.source)  # type: ignore[arg-type]
            except Exception as exc:
                self.raised = exc


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_source_another_fit_is_reading_is_refused(backend_name: str, kind: str) -> None:
    """Two fits sharing one generator raced on it ("generator already executing", or, on
    the inline backend, silently split its batches). The second is refused before it
    reads a batch, and leaves the source open: the first trains on every batch."""
    data = _data()
    reference = await _reference("inline", data)
    source = _agen(_pieces(data, BATCH)) if kind == "async" else _pieces(data, BATCH)
    async with _trainer(backend_name) as first, _trainer("inline") as second:
        sharer = _ShareAtFirstStep(second, source)
        result = await first.fit_stream(source, callbacks=[sharer])
        assert isinstance(sharer.raised, at.StateError), sharer.raised
        assert "another running fit" in str(sharer.raised)
        assert second.state.step == 0
        assert result.steps == 16
        assert _bits(result.params) == _bits(reference)
        # Once that fit has ended, the source is free (and, read to its end, empty).
        assert (await second.fit_stream(source)).steps == 0
