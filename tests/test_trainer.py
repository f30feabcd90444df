"""The sync trainer: determinism across backends, accuracy against scikit-learn, events."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest

import asynctrain as at
from asynctrain._finite import CHUNK_VALUES
from asynctrain.data import Dataset, synthetic
from asynctrain.models import LogisticRegression, SoftmaxRegression


@pytest.fixture(scope="module")
def softmax_data() -> tuple[Dataset, Dataset]:
    return synthetic("softmax", n=6000, seed=1).split(0.25, seed=0)


def _bits(params: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in params.items()}


async def _train(
    backend: str, workers: int | None, data: Dataset, **options: object
) -> at.FitResult:
    model = SoftmaxRegression(128, 10)
    trainer = at.Trainer(
        model,
        at.optim.adam(1e-2),
        backend=backend,
        workers=workers,
        batch_size=128,
        shards=4,
        seed=3,
        **options,
    )  # type: ignore[arg-type]
    async with trainer:
        return await trainer.fit(data, epochs=2)


async def test_bit_identical_across_backends_and_workers(
    softmax_data: tuple[Dataset, Dataset],
) -> None:
    train, _ = softmax_data
    reference = _bits((await _train("inline", None, train)).params)
    for workers in (1, 2, 4):
        result = await _train("thread", workers, train)
        assert _bits(result.params) == reference, f"thread backend, workers={workers}"


async def test_bit_identical_on_a_user_backend_object(
    softmax_data: tuple[Dataset, Dataset],
) -> None:
    train, _ = softmax_data
    reference = _bits((await _train("inline", None, train)).params)
    async with at.backends.ThreadBackend(workers=3) as backend:
        model = SoftmaxRegression(128, 10)
        trainer = at.Trainer(
            model, at.optim.adam(1e-2), backend=backend, batch_size=128, shards=4, seed=3
        )
        result = await trainer.fit(train, epochs=2)
        assert backend.state == "open"  # the trainer never closes what it did not create
    assert _bits(result.params) == reference


async def test_fit_reports_history_and_steps(softmax_data: tuple[Dataset, Dataset]) -> None:
    train, val = softmax_data
    model = SoftmaxRegression(128, 10)
    async with at.Trainer(model, at.optim.adam(1e-2), backend="inline", batch_size=500) as tr:
        result = await tr.fit(train, epochs=3, validation=val)
    assert result.epochs == 3
    assert result.steps == 3 * 9  # 4500 samples in batches of 500
    assert [e.epoch for e in result.history] == [0, 1, 2]
    assert result.history[-1].loss < result.history[0].loss
    assert 0.5 < result.val_accuracy <= 1.0
    assert result.samples_per_s > 0
    assert not result.stopped_early


async def test_steps_yield_step_and_epoch_events(softmax_data: tuple[Dataset, Dataset]) -> None:
    train, val = softmax_data
    model = SoftmaxRegression(128, 10)
    trainer = at.Trainer(model, backend="thread", workers=2, batch_size=1000)
    events = trainer.steps(train, epochs=2, validation=val)
    async with contextlib.aclosing(events):
        kinds = [(e.kind, e.epoch) async for e in events]
    steps_per_epoch = 5  # 4500 samples / 1000, last batch short
    assert kinds.count(("step", 0)) == steps_per_epoch
    assert kinds[steps_per_epoch] == ("epoch", 0)
    assert kinds[-1] == ("epoch", 1)


async def test_accuracy_matches_scikit_learn_softmax() -> None:
    from sklearn.linear_model import LogisticRegression as SkLogistic

    train, test = synthetic("softmax", n=20000, seed=5).split(0.25, seed=1)
    model = SoftmaxRegression(128, 10)
    result = await at.fit(
        model,
        train,
        optimizer=at.optim.adam(1e-2),
        epochs=6,
        backend="thread",
        validation=test,
        batch_size=256,
    )
    oracle = SkLogistic(max_iter=500).fit(train.X, train.y).score(test.X, test.y)
    assert abs(result.val_accuracy - oracle) <= 0.005, (result.val_accuracy, oracle)


async def test_accuracy_matches_scikit_learn_binary() -> None:
    from sklearn.linear_model import LogisticRegression as SkLogistic

    train, test = synthetic("logreg", n=20000, seed=2).split(0.25, seed=1)
    model = LogisticRegression(64)
    result = await at.fit(
        model,
        train,
        optimizer=at.optim.adam(1e-2),
        epochs=4,
        backend="thread",
        validation=test,
        batch_size=256,
    )
    oracle = SkLogistic(max_iter=500).fit(train.X, train.y).score(test.X, test.y)
    assert abs(result.val_accuracy - oracle) <= 0.005, (result.val_accuracy, oracle)


async def test_early_stopping_stops(softmax_data: tuple[Dataset, Dataset]) -> None:
    train, val = softmax_data
    model = SoftmaxRegression(128, 10)
    stopper = at.EarlyStopping(patience=1, min_delta=10.0)  # nothing improves by 10
    result = await at.fit(
        model, train, epochs=10, validation=val, callbacks=[stopper], backend="inline"
    )
    assert result.stopped_early
    assert result.epochs == 2


async def test_async_callbacks_are_awaited(softmax_data: tuple[Dataset, Dataset]) -> None:
    seen: list[int] = []

    class Record(at.Callback):
        async def on_step(self, event: at.StepEvent) -> None:  # type: ignore[override]
            await asyncio.sleep(0)
            seen.append(event.step)

    train, _ = softmax_data
    await at.fit(SoftmaxRegression(128, 10), train, callbacks=[Record()], backend="inline")
    assert seen == list(range(9))


async def test_second_fit_continues(softmax_data: tuple[Dataset, Dataset]) -> None:
    train, _ = softmax_data
    async with at.Trainer(SoftmaxRegression(128, 10), backend="inline", batch_size=500) as tr:
        first = await tr.fit(train, epochs=1)
        second = await tr.fit(train, epochs=1)
        assert tr.state.step == first.steps + second.steps
        assert tr.state.epoch == 2
    # Without a context manager each fit opens and closes its own backend.
    tr2 = at.Trainer(SoftmaxRegression(128, 10), backend="thread", workers=2, batch_size=500)
    await tr2.fit(train, epochs=1)
    await tr2.fit(train, epochs=1)
    assert _bits(tr2.params) == _bits(tr.params)


@pytest.mark.parametrize("mode", ["sync", "local", "ssp", "async"])
async def test_an_epoch_interrupted_on_other_data_starts_over_on_this_data(mode: str) -> None:
    first, other = synthetic("softmax", n=1000, seed=1), synthetic("softmax", n=300, seed=2)

    class StopAt(at.Callback):
        def on_step(self, event: at.StepEvent) -> bool:
            return event.step >= 7  # mid-epoch: batch 8 of 16 (local: its round's end)

    trainer = at.Trainer(SoftmaxRegression(128, 10), backend="inline", batch_size=64, mode=mode)
    async with trainer:
        await trainer.fit(first, callbacks=[StopAt()])
        assert trainer.state.batch == 8
        # The 300 rows make 5 batches: batch 8 of the first data's order is no place in
        # theirs. Before the fix the fit trained nothing (0 steps) and closed the epoch.
        result = await trainer.fit(other, epochs=1)
        assert result.steps == 5
        assert (trainer.state.epoch, trainer.state.batch) == (1, 0)
        # The data it was interrupted on continues the epoch where it stopped.
        await trainer.fit(first, callbacks=[StopAt()])  # stops after its first step (round)
        stopped = trainer.state.batch
        assert stopped == (4 if mode == "local" else 1)
        assert (await trainer.fit(first, epochs=1)).steps == 16 - stopped


async def test_concurrent_fit_is_refused(softmax_data: tuple[Dataset, Dataset]) -> None:
    started, gate = asyncio.Event(), asyncio.Event()

    class Hold(at.Callback):
        async def on_step(self, event: at.StepEvent) -> None:  # type: ignore[override]
            started.set()
            await gate.wait()

    train, _ = softmax_data
    async with at.Trainer(SoftmaxRegression(128, 10), backend="thread", workers=1) as tr:
        first = asyncio.create_task(tr.fit(train, epochs=1, callbacks=[Hold()]))
        await started.wait()
        assert "running" in repr(tr)
        with pytest.raises(at.StateError, match="already running"):
            await tr.fit(train, epochs=1)
        gate.set()
        await first


async def test_closed_trainer_is_refused(softmax_data: tuple[Dataset, Dataset]) -> None:
    trainer = at.Trainer(SoftmaxRegression(128, 10), backend="inline")
    async with trainer:
        pass
    with pytest.raises(at.StateError, match="closed"):
        await trainer.fit(softmax_data[0])


async def test_nested_async_with_is_refused_and_leaves_the_outer_block_open(
    softmax_data: tuple[Dataset, Dataset],
) -> None:
    train, _ = softmax_data
    trainer = at.Trainer(SoftmaxRegression(128, 10), backend="thread", workers=1)
    async with trainer:
        backend = trainer.backend
        # Before the fix the inner block's exit closed the trainer, and the outer
        # block's next fit raised "is closed; create a new Trainer".
        with pytest.raises(at.StateError, match="already open in an `async with` block"):
            async with trainer:
                pass
        await trainer.fit(train, epochs=1)
        assert trainer.backend is backend
        assert backend.state == "open"
    assert backend.state == "closed"
    with pytest.raises(at.StateError, match="closed"):
        async with trainer:
            pass


@pytest.mark.parametrize("backend", ["inline", "thread"])
async def test_np_seterr_in_a_model_never_reaches_the_caller(
    backend: str, softmax_data: tuple[Dataset, Dataset]
) -> None:
    """Thread workers run a task in a copy of the caller's context; the inline backend and
    a thread backend's small step computed on the loop now do too."""

    class Strict(SoftmaxRegression):
        def loss_and_grad(self, params, X, y):  # type: ignore[no-untyped-def]
            np.seterr(over="raise")
            return super().loss_and_grad(params, X, y)

    before = np.geterr()
    try:
        # shards=1 and small batches: the thread backend computes the steps on the loop.
        trainer = at.Trainer(Strict(128, 10), backend=backend, batch_size=64, shards=1)
        await trainer.fit(softmax_data[0].subset(np.arange(640)), epochs=1)
        assert np.geterr() == before
    finally:
        np.seterr(**before)


@pytest.mark.parametrize("value", [1, 0, 0.01, "no", None])
async def test_monitor_lag_that_is_not_a_bool_is_refused_before_any_work(
    value: object, softmax_data: tuple[Dataset, Dataset]
) -> None:
    """``monitor_lag=1`` (or an interval, ``0.01``) switched the monitor on, and ``"no"``
    did too: any truthy value was taken for True."""
    trainer = at.Trainer(SoftmaxRegression(128, 10), backend="thread", workers=1)
    backend = trainer.backend
    with pytest.raises(at.ConfigTypeError, match=r"monitor_lag must be True or False, got "):
        await trainer.fit(softmax_data[0], monitor_lag=value)  # type: ignore[arg-type]
    with pytest.raises(at.ConfigTypeError, match=r"monitor_lag must be True or False"):
        await at.fit(SoftmaxRegression(128, 10), softmax_data[0], monitor_lag=value)  # type: ignore[arg-type]
    assert trainer.state.step == 0
    assert trainer.backend is backend
    assert backend.state == "unopened"


async def test_user_model_errors_keep_their_type(softmax_data: tuple[Dataset, Dataset]) -> None:
    class Broken(SoftmaxRegression):
        def loss_and_grad(self, params, X, y):  # type: ignore[no-untyped-def]
            raise ZeroDivisionError("broken model")

    for backend in ("inline", "thread"):
        with pytest.raises(ZeroDivisionError, match="broken model"):
            await at.fit(Broken(128, 10), softmax_data[0], backend=backend)


class _LossAs(LogisticRegression):
    """A logistic regression returning its loss sum converted by ``convert``."""

    convert: Any = float

    def loss_and_grad(self, params, X, y, **options):  # type: ignore[no-untyped-def]
        loss, grads = super().loss_and_grad(params, X, y, **options)
        return type(self).convert(loss), grads


class _LossAsNumpyScalar(_LossAs):
    convert = np.float64


class _LossAs0d(_LossAs):
    convert = np.asarray


class _LossAsOneValue(_LossAs):
    convert = staticmethod(lambda loss: np.array([loss]))


async def test_a_loss_as_a_numpy_scalar_is_a_float_and_one_of_shape_1_is_named() -> None:
    # a (1,) array failed in a worker with numpy's raw TypeError; a 0-d array or numpy
    # scalar is the same number as the float, and so gives the same bits
    train, val = synthetic("logreg", n=96, seed=0).split(0.25, seed=0)
    fits = {}
    for kind in (_LossAs, _LossAsNumpyScalar, _LossAs0d):
        result = await at.fit(kind(64), train, validation=val, epochs=2, batch_size=16)
        fits[kind] = (_bits(result.params), [(e.loss, e.val_loss) for e in result.history])
    assert fits[_LossAsNumpyScalar] == fits[_LossAs0d] == fits[_LossAs]
    expected = r"_LossAsOneValue.loss_and_grad returned a loss of shape \(1,\).*loss.item\(\)"
    for backend in ("inline", "thread"):
        with pytest.raises(at.ConfigError, match=expected):
            await at.fit(_LossAsOneValue(64), train, backend=backend, batch_size=16)


async def test_predict_and_repr(softmax_data: tuple[Dataset, Dataset]) -> None:
    train, val = softmax_data
    trainer = at.Trainer(SoftmaxRegression(128, 10), backend="inline")
    assert repr(trainer) == "<Trainer step=0 mode=sync backend=inline(1) unopened>"
    await trainer.fit(train, epochs=1)
    predictions = trainer.predict(val.X)
    assert predictions.shape == (len(val),)
    assert not trainer.params["W"].flags.writeable


def test_params_are_seeded() -> None:
    a = at.Trainer(LogisticRegression(8), seed=1).params
    b = at.Trainer(LogisticRegression(8), seed=1).params
    assert _bits(a) == _bits(b)


class _CountingBackend(at.backends.InlineBackend):
    """An inline backend that records what is shared and released."""

    def __init__(self) -> None:
        super().__init__()
        self.live: list[object] = []

    async def share(self, arrays, *, slots=1):  # type: ignore[no-untyped-def]
        handle = await super().share(arrays, slots=slots)
        self.live.append(handle)
        return handle

    async def release(self, shared: object) -> None:
        self.live.remove(shared)


@pytest.mark.parametrize("fails", [False, True])
async def test_every_shared_array_is_released(
    softmax_data: tuple[Dataset, Dataset], fails: bool
) -> None:
    train, val = softmax_data
    backend = _CountingBackend()

    class Stop(at.Callback):
        def on_step(self, event: at.StepEvent) -> None:
            if fails:
                raise RuntimeError("callback failed")

    trainer = at.Trainer(SoftmaxRegression(128, 10), backend=backend)
    async with backend:  # the trainer opens a backend it is given, but closes only its own
        try:
            await trainer.fit(train, epochs=1, validation=val, callbacks=[Stop()])
        except RuntimeError:
            assert fails
        assert backend.live == []


class MeanModel:
    """One 0-d parameter ``c`` fitted to the targets by squared error: its optimum is mean(y)."""

    n_features, n_classes, dtype = 1, None, np.dtype(np.float64)

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"c": np.array(0.0)}

    def loss_and_grad(
        self, params: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray
    ) -> tuple[float, dict[str, np.ndarray]]:
        residual = y - params["c"]
        return float(residual @ residual), {"c": np.array(-2.0 * residual.sum())}

    def predict(self, params: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
        return np.full(len(X), float(params["c"]))


async def test_a_zero_dimensional_parameter_trains_and_is_published_read_only() -> None:
    y = np.random.default_rng(0).normal(3.0, 1.0, 256)
    data = Dataset(np.zeros((256, 1)), y)
    async with at.Trainer(MeanModel(), at.optim.sgd(0.2), backend="inline", batch_size=256) as tr:
        await tr.fit(data, epochs=30)
        c = tr.params["c"]
    assert c.shape == ()
    assert not c.flags.writeable
    assert float(c) == pytest.approx(y.mean(), rel=1e-6)  # the oracle: the least-squares optimum


@pytest.mark.parametrize("backend", ["thread", "process"])
async def test_leaving_async_with_cancels_a_fit_running_in_another_task(backend: str) -> None:
    data = synthetic("softmax", n=4000, seed=0)
    model = SoftmaxRegression(128, 10)
    stepped = asyncio.Event()

    class Started(at.Callback):
        def on_step(self, event: at.StepEvent) -> None:
            stepped.set()

    trainer = at.Trainer(model, backend=backend, workers=2, batch_size=64)
    async with trainer:
        used = trainer.backend
        fit = asyncio.ensure_future(trainer.fit(data, epochs=1000, callbacks=[Started()]))
        await stepped.wait()
    # Closing waited for the fit: it is over, cancelled, and nothing it started runs on.
    assert fit.done()
    with pytest.raises(asyncio.CancelledError):
        await fit
    assert trainer.state.step > 0
    assert used.state == "closed"
    assert trainer.backend is not used
    assert trainer.backend.state == "unopened"  # the next fit's


async def test_closing_from_inside_the_fit_is_refused() -> None:
    data = synthetic("softmax", n=512, seed=0)
    trainer = at.Trainer(SoftmaxRegression(128, 10), backend="inline", batch_size=64)
    errors: list[BaseException] = []

    class CloseMe(at.Callback):
        async def on_step(self, event: at.StepEvent) -> bool:
            try:
                await trainer.aclose()
            except at.StateError as exc:
                errors.append(exc)
            return True

    async with trainer:
        await trainer.fit(data, callbacks=[CloseMe()])
    assert len(errors) == 1
    assert "inside its own fit" in str(errors[0])


BAD_ROWS = {
    "1-D row": lambda X: X[0],
    "wrong columns": lambda X: X[:2, :5],
    "NaN": lambda X: np.full((1, 128), np.nan),
    "too large": lambda X: [[10**400] + [0] * 127],
    "float64 overflow": lambda X: np.full((1, 128), 1e300),
    "ragged": lambda X: [[1.0, 2.0], [1.0]],
}


@pytest.mark.parametrize("bad", list(BAD_ROWS))
async def test_predict_refuses_bad_rows_and_an_untrained_trainer(bad: str) -> None:
    data = synthetic("softmax", n=512, seed=0)
    trainer = at.Trainer(SoftmaxRegression(128, 10), backend="inline", batch_size=64)
    with pytest.raises(at.StateError, match="has not trained"):
        trainer.predict(data.X[:2])
    await trainer.fit(data)
    assert trainer.predict(data.X[:3]).shape == (3,)
    with pytest.raises(at.DataError):
        trainer.predict(BAD_ROWS[bad](data.X))


def _peak(fn: Any, *args: Any) -> int:
    """Bytes ``fn(*args)`` allocated at its peak beyond what was held before (tracemalloc
    sees numpy's buffers)."""
    tracemalloc.start()
    try:
        held = tracemalloc.get_traced_memory()[0]
        fn(*args)
        return tracemalloc.get_traced_memory()[1] - held
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def wide_rows() -> np.ndarray:
    # 200,000 x 128 float32 (98 MiB): a mask of it is 24 MiB; of a half, 12 MiB.
    return np.random.default_rng(0).normal(size=(200_000, 128)).astype(np.float32)


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
async def test_predict_checks_its_rows_without_a_mask_of_them(
    layout: str, wide_rows: np.ndarray
) -> None:
    # np.isfinite(X).all() made a byte per value: a quarter of a float32 X, on every call.
    X = {
        "C": wide_rows[:, :64],
        "F": np.asfortranarray(wide_rows[:100_000, :64]),
        "strided": wide_rows[:, ::2],  # a view: every other column
    }[layout]
    if layout == "C":
        X = np.ascontiguousarray(X)
    model = LogisticRegression(64)
    trainer = at.Trainer(model, backend="inline", batch_size=64)
    await trainer.fit(synthetic("logreg", n=256, seed=0))
    checked = _peak(at.models.check_inputs, model, X)
    predicted = _peak(trainer.predict, X) - _peak(model.predict, trainer.params, X)
    # Contiguous rows are read by a reduction; a strided view is masked a chunk at a time.
    bound = 64 * 1024 if layout != "strided" else CHUNK_VALUES + 64 * 1024
    assert checked < bound < X.size, (checked, X.size)  # a mask: X.size bytes
    assert predicted < bound, predicted


async def test_predict_refuses_non_finite_values_naming_the_first() -> None:
    trainer = at.Trainer(LogisticRegression(64), backend="inline", batch_size=64)
    await trainer.fit(synthetic("logreg", n=256, seed=0))
    X = np.zeros((150_000, 64), np.float32)  # more rows than one chunk
    X[140_001, 5], X[149_999, 0] = np.nan, np.inf
    for rows in (X, np.asfortranarray(X), np.repeat(X, 2, axis=1)[:, ::2]):
        with pytest.raises(at.DataError, match=r"\(nan\) at row 140001, column 5"):
            trainer.predict(rows)
    large = np.zeros((4, 64))
    large[3, 2] = 1e300  # Inf in the model's float32
    with pytest.raises(at.DataError, match=r"\(inf\) at row 3, column 2 \(after conversion"):
        trainer.predict(large)
    # Finite values whose squares overflow the reduction: settled by the exact check.
    huge = np.full((100_000, 64), 1e20, np.float32)
    assert trainer.predict(huge).shape == (100_000,)


class _DrawnWhere(SoftmaxRegression):
    """Records the threads its parameters are drawn in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "drawn_in", [])

    def init(self, rng: np.random.Generator) -> Any:
        self.drawn_in.append(threading.current_thread())  # type: ignore[attr-defined]
        return super().init(rng)


@pytest.mark.parametrize(("backend", "on_loop"), [("thread", False), ("inline", True)])
async def test_the_first_open_draws_the_initial_state_off_the_loop(
    backend: str, on_loop: bool
) -> None:
    # Opening read `state`, which draws the parameters and the optimizer state, on the
    # loop: seconds of array math for a wide model, in which a service did not answer.
    model = _DrawnWhere(8, 3)
    async with at.Trainer(model, at.optim.adam(1e-2), backend=backend, workers=1) as trainer:
        if on_loop:  # the inline backend does all its work on the loop
            assert model.drawn_in == [threading.current_thread()]
        else:
            assert len(model.drawn_in) == 1
            assert model.drawn_in[0] is not threading.current_thread()
        drawn = trainer.state.params
    reference = SoftmaxRegression(8, 3).init(np.random.default_rng(trainer.config.seed))
    assert {k: v.tobytes() for k, v in drawn.items()} == {
        k: v.tobytes() for k, v in reference.items()
    }
