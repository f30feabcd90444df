"""Trainer.evaluate: scikit-learn's metrics on the same predictions as the oracle, the
validation numbers of a fit, bad input, and concurrency."""

from __future__ import annotations

import asyncio
import math
import threading

import numpy as np
import pytest
import scipy.sparse
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

import asynctrain as at
from asynctrain._engine import _evaluate
from asynctrain._engine._evaluate import EVAL_CHUNK
from asynctrain._engine._work import evaluate_chunk
from asynctrain.backends import LocalShared
from asynctrain.data import Dataset


def _split(data: Dataset, n_train: int) -> tuple[Dataset, Dataset]:
    return data.subset(np.arange(n_train)), data.subset(np.arange(n_train, len(data)))


def _as_evaluated(event: at.EpochEvent, classifier: bool = True) -> dict[str, float]:
    """What evaluate returns, read off a fit's last epoch event."""
    values = {"loss": event.val_loss}
    if classifier:
        values["accuracy"] = event.val_accuracy
    return values | {name.removeprefix("val_"): v for name, v in event.metrics.items()}


@pytest.mark.parametrize("backend", ["inline", "thread"])
async def test_classifier_values_equal_scikit_learn_on_the_same_predictions(backend: str) -> None:
    # More rows than two chunks: the chunks' sums and metric parts are combined.
    data = at.data.synthetic("softmax", n=3000 + 2 * EVAL_CHUNK + 123, seed=3)
    train, test = _split(data, 3000)
    model = at.models.SoftmaxRegression(128, 10)
    async with at.Trainer(model, at.optim.adam(1e-2), backend=backend, workers=2) as trainer:
        await trainer.fit(train, epochs=2)
        values = await trainer.evaluate(test, metrics=["auc", "f1"])
        labels = trainer.predict(test.X)
        proba = model.predict_proba(trainer.params, test.X).astype(np.float64)
    assert list(values) == ["loss", "accuracy", "auc", "f1"]
    proba /= proba.sum(axis=1, keepdims=True)  # float32 rows sum to 1 within 1e-7
    assert values["loss"] == pytest.approx(log_loss(test.y, proba, labels=range(10)), rel=1e-5)
    assert values["accuracy"] == pytest.approx(accuracy_score(test.y, labels), abs=1e-12)
    assert values["f1"] == pytest.approx(f1_score(test.y, labels, average="macro"), abs=1e-12)
    oracle = roc_auc_score(test.y, proba, multi_class="ovr", average="macro")
    assert values["auc"] == pytest.approx(oracle, abs=1e-6)


async def test_weighted_loss_and_accuracy_equal_scikit_learn_and_metrics_are_unweighted() -> None:
    data = at.data.synthetic("logreg", n=3000 + EVAL_CHUNK + 11, seed=5)
    train, test = _split(data, 3000)
    w = np.random.default_rng(0).integers(0, 4, size=len(test)).astype(np.float64)
    model = at.models.LogisticRegression(64, dtype=np.float64)
    async with at.Trainer(model, at.optim.sgd(0.1), backend="thread", workers=2) as trainer:
        await trainer.fit(train)
        values = await trainer.evaluate((test.X, test.y, w), metrics=["f1", "auc"])
        labels = trainer.predict(test.X)
        scores = model.predict_proba(trainer.params, test.X)[:, 1]
    assert values["loss"] == pytest.approx(log_loss(test.y, scores, sample_weight=w), rel=1e-10)
    oracle = accuracy_score(test.y, labels, sample_weight=w)
    assert values["accuracy"] == pytest.approx(oracle, abs=1e-12)
    assert values["f1"] == pytest.approx(f1_score(test.y, labels, average="macro"), abs=1e-12)
    assert values["auc"] == pytest.approx(roc_auc_score(test.y, scores), abs=1e-12)


async def test_regression_values_equal_scikit_learn_and_have_no_accuracy() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000 + EVAL_CHUNK + 7, 8))
    y = X @ rng.normal(size=8) + 0.3 * rng.normal(size=len(X)) + 5.0
    train, test = _split(Dataset(X, y, dtype=np.float64), 3000)
    model = at.models.LinearRegression(8, dtype=np.float64)
    async with at.Trainer(model, at.optim.adam(1e-1), backend="inline") as trainer:
        await trainer.fit(train, epochs=3)
        values = await trainer.evaluate(test, metrics=["mae", "r2"])
        predicted = trainer.predict(test.X)
    assert list(values) == ["loss", "mae", "r2"]
    assert values["loss"] == pytest.approx(mean_squared_error(test.y, predicted), rel=1e-10)
    assert values["mae"] == pytest.approx(mean_absolute_error(test.y, predicted), rel=1e-10)
    assert values["r2"] == pytest.approx(r2_score(test.y, predicted), rel=1e-10)


@pytest.mark.parametrize("backend", ["inline", "thread", "process"])
@pytest.mark.parametrize("weighted", [False, True])
async def test_values_are_the_validation_numbers_of_a_fit(backend: str, weighted: bool) -> None:
    data = at.data.synthetic("softmax", n=2000 + EVAL_CHUNK + 5, seed=1)
    train, val = _split(data, 2000)
    if weighted:
        val = val.with_weights(np.random.default_rng(1).random(len(val)))
    model = at.models.SoftmaxRegression(128, 10)
    async with at.Trainer(model, at.optim.adam(1e-2), backend=backend, workers=2) as trainer:
        result = await trainer.fit(train, validation=val, metrics=["f1", "auc"])
        values = await trainer.evaluate(val, metrics=["f1", "auc"])
    assert values == _as_evaluated(result.history[-1])  # bit for bit: the same chunks


async def test_sparse_data_and_frames_are_evaluated_as_validation_is() -> None:
    pd = pytest.importorskip("pandas")
    data = at.data.synthetic("logreg", n=3000, seed=2)
    train, val = _split(data, 2000)
    X = np.where(np.abs(val.X) > 1.0, val.X, 0.0).astype(np.float32)
    sparse = Dataset(scipy.sparse.csr_matrix(X), val.y)
    columns = [f"f{i}" for i in range(64)]
    model = at.models.LogisticRegression(64)
    async with at.Trainer(model, "adam", backend="thread", workers=2) as trainer:
        result = await trainer.fit((pd.DataFrame(train.X, columns=columns), train.y))
        fitted = await trainer.fit(train, validation=sparse, metrics=["auc"], epochs=1)
        values = await trainer.evaluate(sparse, metrics=["auc"])
        assert values == _as_evaluated(fitted.history[-1])
        frame = pd.DataFrame(val.X, columns=columns)
        assert await trainer.evaluate((frame, val.y)) == await trainer.evaluate(val)
        with pytest.raises(at.DataError, match=r"evaluation.*'f0'"):
            await trainer.evaluate((frame.drop(columns="f0"), val.y))
    assert result.steps > 0


async def test_a_batch_size_changes_only_the_order_of_the_sums() -> None:
    data = at.data.synthetic("softmax", n=3000, seed=4)
    train, test = _split(data, 1000)
    async with at.Trainer(at.models.SoftmaxRegression(128, 10), backend="inline") as trainer:
        await trainer.fit(train)
        whole = await trainer.evaluate(test, metrics=["f1", "auc"])
        small = await trainer.evaluate(test, metrics=["f1", "auc"], batch_size=97)
    assert small == pytest.approx(whole, rel=1e-6)
    assert (small["f1"], small["auc"]) == (whole["f1"], whole["auc"])  # counts; one sort


async def test_an_untrained_closed_or_busy_trainer_is_refused() -> None:
    data = at.data.synthetic("logreg", n=600, seed=0)
    trainer = at.Trainer(at.models.LogisticRegression(64), backend="inline", batch_size=64)
    with pytest.raises(at.StateError, match=r"has not trained yet.*before evaluate"):
        await trainer.evaluate(data)
    started, release = asyncio.Event(), asyncio.Event()

    class Hold(at.Callback):
        async def on_step(self, event: at.StepEvent) -> None:
            started.set()
            await release.wait()

    fit = asyncio.ensure_future(trainer.fit(data, callbacks=[Hold()]))
    await started.wait()
    with pytest.raises(at.StateError, match=r"while it runs a fit.*fit\(validation=data"):
        await trainer.evaluate(data)
    release.set()
    await fit
    evaluation = asyncio.ensure_future(trainer.evaluate(data))
    await asyncio.sleep(0)  # the evaluation runs (preparing its data on the loop: inline)
    with pytest.raises(at.StateError, match="already running an evaluation"):
        await trainer.fit(data)
    await evaluation
    await trainer.aclose()
    with pytest.raises(at.StateError, match="closed"):
        await trainer.evaluate(data)


@pytest.mark.parametrize(
    ("metrics", "batch_size", "error", "match"),
    [
        (["accuracy"], None, at.ConfigError, "unknown metric 'accuracy'; known metrics"),
        (["r2"], None, at.ConfigError, "metric 'r2' is for regression models"),
        ("f1", None, at.ConfigTypeError, "metrics must be a list of names"),
        ([], 0, at.ConfigError, "batch_size must be >= 1"),
        ([], True, at.ConfigTypeError, "batch_size must be an integer"),
    ],
)
async def test_bad_settings_are_refused(
    metrics: object, batch_size: object, error: type[Exception], match: str
) -> None:
    data = at.data.synthetic("logreg", n=600, seed=0)
    async with at.Trainer(at.models.LogisticRegression(64), backend="inline") as trainer:
        await trainer.fit(data)
        with pytest.raises(error, match=match):
            await trainer.evaluate(data, metrics=metrics, batch_size=batch_size)  # type: ignore[arg-type]


async def test_bad_data_is_refused_naming_the_evaluation_data() -> None:
    data = at.data.synthetic("logreg", n=600, seed=0)
    X, y = np.asarray(data.X), np.asarray(data.y)
    nan = X.copy()
    nan[7, 3] = np.nan
    bad = {
        "features": ((X[:, :10], y), at.DataError, "evaluation data: dataset has 10 features"),
        "labels": ((X, y + 1), at.DataError, "evaluation data: labels must be in 0..1"),
        "rows": ((X, y[:-1]), at.DataError, "evaluation data: X has 600 rows but y has 599"),
        "nan": ((nan, y), at.DataError, "evaluation data: X has a non-finite value.*row 7"),
        "text": ((X, y.astype(str)), at.DataTypeError, "evaluation data: y has dtype <U"),
        "kind": (X, at.ConfigTypeError, "evaluation must be a Dataset"),
    }
    async with at.Trainer(at.models.LogisticRegression(64), backend="thread") as trainer:
        await trainer.fit(data)
        for value, error, match in bad.values():
            with pytest.raises(error, match=match):
                await trainer.evaluate(value)  # type: ignore[arg-type]
        # One class is enough to evaluate, as for validation data.
        ones = data.subset(np.flatnonzero(data.y == 1))
        assert math.isnan((await trainer.evaluate(ones, metrics=["auc"]))["auc"])


async def test_weights_for_a_model_that_cannot_weigh_rows_are_refused() -> None:
    data = at.data.synthetic("logreg", n=600, seed=0)

    class Unweighted(at.models.LogisticRegression):
        supports_sample_weight = False

    async with at.Trainer(Unweighted(64), backend="inline") as trainer:
        await trainer.fit(data)
        with pytest.raises(at.ConfigError, match="evaluation has sample weights"):
            await trainer.evaluate((data.X, data.y, np.ones(len(data))))


async def test_evaluate_runs_beside_a_fit_of_another_trainer() -> None:
    data = at.data.synthetic("softmax", n=4000, seed=6)
    train, test = _split(data, 2000)
    evaluated = at.Trainer(at.models.SoftmaxRegression(128, 10), backend="thread", workers=2)
    await evaluated.fit(train)
    alone = await evaluated.evaluate(test, metrics=["f1"])
    stepping, done = asyncio.Event(), asyncio.Event()

    class UntilEvaluated(at.Callback):
        def on_step(self, event: at.StepEvent) -> bool:
            stepping.set()
            return done.is_set()

    other = at.Trainer(at.models.SoftmaxRegression(128, 10), backend="thread", batch_size=32)
    fit = asyncio.ensure_future(other.fit(train, epochs=1000, callbacks=[UntilEvaluated()]))
    await stepping.wait()
    beside = await evaluated.evaluate(test, metrics=["f1"])
    assert not fit.done()  # it stops at its first step after the evaluation
    done.set()
    result = await fit
    assert beside == alone
    assert result.stopped_early
    assert result.steps > 1


async def test_a_cancelled_evaluation_leaves_nothing_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = at.data.synthetic("softmax", n=3 * EVAL_CHUNK, seed=7)
    loop = asyncio.get_running_loop()
    computing, gate = asyncio.Event(), threading.Event()

    def held(*args: object) -> object:
        loop.call_soon_threadsafe(computing.set)
        gate.wait(timeout=30)
        return evaluate_chunk(*args)

    async with at.Trainer(at.models.SoftmaxRegression(128, 10), backend="thread") as trainer:
        await trainer.fit(data.subset(np.arange(1000)))
        monkeypatch.setattr(_evaluate, "evaluate_chunk", held)
        evaluation = asyncio.ensure_future(trainer.evaluate(data, metrics=["auc"]))
        await computing.wait()  # its chunks are on the workers
        evaluation.cancel()
        loop.call_later(0.05, gate.set)  # the cancel waits for the chunks it started
        with pytest.raises(asyncio.CancelledError):
            await evaluation
        assert not trainer._running
        monkeypatch.undo()
        assert (await trainer.evaluate(data))["loss"] > 0


class _GradientPath(at.models.MLP):
    """The MLP with a loss_and_grad of its own (the same math): evaluation then takes the
    loss from loss_and_grad and the labels from predict, as for any model without a
    loss_and_predict that speaks for both."""

    def loss_and_grad(self, params, X, y, *, sample_weight=None):  # type: ignore[no-untyped-def]
        return super().loss_and_grad(params, X, y, sample_weight=sample_weight)


class _Penalised(at.models.MLP):
    def loss_and_grad(self, params, X, y, *, sample_weight=None):  # type: ignore[no-untyped-def]
        loss, grads = super().loss_and_grad(params, X, y, sample_weight=sample_weight)
        return loss + 1000.0, grads


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_mlps_forward_only_evaluation_gives_the_gradient_paths_bits(
    task: str, weighted: bool
) -> None:
    # One forward pass and no gradient (about a third of the time): the loss must be
    # loss_and_grad's to the bit and the labels predict's, in several blocks of rows
    # (4,096 hidden units: blocks of 512 rows), with an L2 penalty.
    sizes, n = (6, 4096, 3 if task == "classification" else 2), 1300
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    y = rng.integers(0, 3, n) if task == "classification" else rng.standard_normal((n, 2))
    w = rng.uniform(0.0, 2.0, n) if weighted else None
    data = Dataset(X, y, sample_weight=w)
    arrays = {"X": data.X, "y": data.y} | ({} if w is None else {"w": data.sample_weight})
    fast, reference = (kind(sizes, task=task, l2=1e-3) for kind in (at.models.MLP, _GradientPath))
    params = fast.init(rng)
    metrics = ("f1",) if task == "classification" else ("mae",)
    got, want = (
        evaluate_chunk(model, LocalShared(arrays, 1), LocalShared(params, 1), 0, 0, n, metrics)
        for model in (fast, reference)
    )
    assert got[:4] == want[:4]  # loss, correct, n, weight: the same bits
    assert got.parts is not None
    assert want.parts is not None
    for name, part in got.parts.items():
        np.testing.assert_array_equal(part, want.parts[name])
    loss, predicted = fast.loss_and_predict(params, X, data.y, sample_weight=data.sample_weight)
    assert loss == fast.loss_and_grad(params, X, data.y, sample_weight=data.sample_weight)[0]
    np.testing.assert_array_equal(predicted, fast.predict(params, X))
    # predict through blocks gives what the whole forward pass gives
    output = X
    for i in range(len(sizes) - 1):  # plain numpy, every row at once, relu between layers
        output = output @ params[f"W{i}"]
        output += params[f"b{i}"]
        if i < len(sizes) - 2:
            np.maximum(output, 0, out=output)
    expected = output.argmax(axis=1) if task == "classification" else output
    np.testing.assert_array_equal(fast.predict(params, X), expected)


def test_a_subclass_that_overrides_loss_and_grad_is_evaluated_by_it() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((300, 8)).astype(np.float32), rng.integers(0, 3, 300)
    model = _Penalised((8, 16, 3))
    params = model.init(rng)
    arrays = {"X": X, "y": y}
    result = evaluate_chunk(model, LocalShared(arrays, 1), LocalShared(params, 1), 0, 0, 300)
    plain = at.models.MLP((8, 16, 3)).loss_and_predict(params, X, y)[0]
    assert result.loss == plain + 1000.0
