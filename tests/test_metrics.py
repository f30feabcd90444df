"""Validation metrics by name (f1, auc, r2, mae) against scikit-learn on the same predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, mean_absolute_error, r2_score, roc_auc_score

import asynctrain as at
from asynctrain._engine._evaluate import EVAL_CHUNK
from asynctrain._engine._metrics import chunk_parts, class_counts, combine, macro_f1, roc_auc
from asynctrain._types import Grads, Params
from asynctrain.data import Dataset


def _split(data: Dataset, n_train: int) -> tuple[Dataset, Dataset]:
    return data.subset(np.arange(n_train)), data.subset(np.arange(n_train, len(data)))


@pytest.mark.parametrize("backend", ["inline", "process"])
async def test_classifier_metrics_match_scikit_learn(backend: str) -> None:
    # More validation rows than one chunk: the chunks' parts are combined.
    data = at.data.synthetic("softmax", n=4000 + 2 * EVAL_CHUNK + 123, seed=3)
    train, val = _split(data, 4000)
    model = at.models.SoftmaxRegression(128, 10)
    async with at.Trainer(model, at.optim.adam(1e-2), backend=backend, workers=2) as trainer:
        result = await trainer.fit(train, epochs=2, validation=val, metrics=["f1", "auc"])
        labels, scores = trainer.predict(val.X), model.predict_proba(trainer.params, val.X)
    metrics = result.history[-1].metrics
    assert metrics.keys() == {"val_f1", "val_auc"}
    assert result.metrics == metrics
    assert metrics["val_f1"] == pytest.approx(f1_score(val.y, labels, average="macro"), abs=1e-12)
    oracle = roc_auc_score(val.y, scores, multi_class="ovr", average="macro")
    assert metrics["val_auc"] == pytest.approx(oracle, abs=1e-12)
    assert all(len(event.metrics) == 2 for event in result.history)


async def test_binary_auc_and_f1_match_scikit_learn() -> None:
    data = at.data.synthetic("logreg", n=3000 + EVAL_CHUNK, seed=5)
    train, val = _split(data, 3000)
    model = at.models.LogisticRegression(64, dtype=np.float64)
    async with at.Trainer(model, at.optim.sgd(0.1), backend="thread", workers=2) as trainer:
        result = await trainer.fit(train, validation=val, metrics=["auc", "f1"])
        labels, scores = trainer.predict(val.X), model.predict_proba(trainer.params, val.X)
    assert result.metrics["val_auc"] == pytest.approx(roc_auc_score(val.y, scores[:, 1]), abs=1e-12)
    oracle = f1_score(val.y, labels, average="macro")
    assert result.metrics["val_f1"] == pytest.approx(oracle, abs=1e-12)


@pytest.mark.parametrize("outputs", [1, 3])
async def test_regression_metrics_match_scikit_learn(outputs: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000 + EVAL_CHUNK + 7, 8))
    y = X @ rng.normal(size=(8, outputs)) + 0.3 * rng.normal(size=(len(X), outputs)) + 5.0
    target = y[:, 0] if outputs == 1 else y
    train, val = _split(Dataset(X, target, dtype=np.float64), 4000)
    if outputs == 1:
        model: at.models.Model = at.models.LinearRegression(8, dtype=np.float64)
    else:
        model = at.models.MLP([8, 16, outputs], task="regression", dtype=np.float64)
    async with at.Trainer(model, at.optim.adam(1e-2), backend="inline") as trainer:
        result = await trainer.fit(train, epochs=2, validation=val, metrics=["r2", "mae"])
        predicted = trainer.predict(val.X)
    assert result.metrics["val_r2"] == pytest.approx(r2_score(val.y, predicted), rel=1e-12)
    oracle = mean_absolute_error(val.y, predicted)
    assert result.metrics["val_mae"] == pytest.approx(oracle, rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
async def test_validation_of_one_class_gives_nan_auc_not_an_error(weighted: bool) -> None:
    # docs/callbacks.md: "a binary validation set of one class gives NaN". Validation
    # data is evaluated, not trained on, so it was wrong to refuse it for holding a
    # single class (the DataError even spoke of "training data").
    data = at.data.synthetic("logreg", n=600, seed=2)
    ones = np.flatnonzero(data.y == 1)[:40]
    val = data.subset(ones)
    if weighted:
        val = val.with_weights(np.arange(1.0, 41.0))
    model = at.models.LogisticRegression(64, dtype=np.float64)
    async with at.Trainer(model, at.optim.sgd(0.1), backend="inline") as trainer:
        result = await trainer.fit(data, validation=val, metrics=["auc", "f1"])
        labels = trainer.predict(val.X)
    assert math.isnan(result.metrics["val_auc"])
    oracle = f1_score(val.y, labels, average="macro")
    assert result.metrics["val_f1"] == pytest.approx(oracle, abs=1e-12)
    accuracy = np.average(labels == 1, weights=val.sample_weight)
    assert result.history[-1].val_accuracy == pytest.approx(accuracy, abs=1e-12)


def test_auc_with_ties_and_absent_classes_matches_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=500)
    scores = np.round(rng.random(500), 1)  # many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert math.isnan(roc_auc(np.zeros(5, dtype=np.int64), rng.random(5)))
    y3 = rng.integers(0, 3, size=300)
    proba = rng.dirichlet(np.ones(3), size=300)
    oracle = roc_auc_score(y3, proba, multi_class="ovr", average="macro")
    assert roc_auc(y3, proba) == pytest.approx(oracle, abs=1e-12)


def test_macro_f1_averages_over_classes_present_like_scikit_learn() -> None:
    rng = np.random.default_rng(2)
    y, predicted = rng.integers(0, 4, size=200), rng.integers(0, 3, size=200)  # 3 never predicted
    counts = class_counts(y, predicted, 6)  # classes 4 and 5 occur nowhere
    oracle = f1_score(y, predicted, average="macro", zero_division=0)
    assert macro_f1(counts) == pytest.approx(oracle, abs=1e-12)


def test_f1_parts_grow_with_the_classes_not_their_square() -> None:
    # Each chunk returned a classes x classes confusion matrix: 3 GiB for 20,000 classes,
    # per chunk of 8,192 rows, all held until combined. Per-class counts suffice.
    rng = np.random.default_rng(3)
    n_classes = 3000
    y, predicted = rng.integers(0, 40, size=900), rng.integers(0, 40, size=900)
    predicted[::3] = y[::3]
    parts = [
        chunk_parts(("f1",), y[start:stop], predicted[start:stop], None, n_classes)["f1"]
        for start, stop in ((0, 400), (400, 401), (401, 900))
    ]
    assert all(part.nbytes <= 3 * n_classes * 8 for part in parts)
    oracle = f1_score(y, predicted, average="macro")
    assert combine("f1", parts) == pytest.approx(oracle, abs=1e-12)


async def test_unknown_metric_names_the_known_ones() -> None:
    data = at.data.synthetic("softmax", n=600)
    model = at.models.SoftmaxRegression(128, 10)
    with pytest.raises(at.ConfigError, match=r"'rmse'; known metrics: auc, f1, mae, r2"):
        await at.fit(model, data, validation=data, metrics=["rmse"], backend="inline")
    with pytest.raises(at.ConfigError, match="'r2' is for regression models"):
        await at.fit(model, data, validation=data, metrics=["r2"], backend="inline")
    with pytest.raises(at.ConfigError, match="pass validation="):
        await at.fit(model, data, metrics=["f1"], backend="inline")
    with pytest.raises(at.ConfigTypeError, match="list of names"):
        await at.fit(model, data, validation=data, metrics="f1", backend="inline")  # type: ignore[arg-type]


class _NoProba:
    """A classifier that follows Model but not Classifier: no predict_proba."""

    n_features, n_classes, dtype = 128, 10, np.dtype(np.float32)

    def __init__(self) -> None:
        self._inner = at.models.SoftmaxRegression(128, 10)

    def init(self, rng: np.random.Generator) -> Params:
        return self._inner.init(rng)

    def loss_and_grad(self, params: Params, X: np.ndarray, y: np.ndarray) -> tuple[float, Grads]:
        return self._inner.loss_and_grad(params, X, y)

    def predict(self, params: Params, X: np.ndarray) -> np.ndarray:
        return self._inner.predict(params, X)


async def test_auc_without_predict_proba_is_refused_before_training() -> None:
    # It used to train a whole epoch and then fail in a worker with an AttributeError.
    data = at.data.synthetic("softmax", n=600)
    trainer = at.Trainer(_NoProba(), backend="inline")
    with pytest.raises(at.ConfigError, match=r"'auc' .*_NoProba.* predict_proba.*drop 'auc'"):
        await trainer.fit(data, validation=data, metrics=["f1", "auc"])
    assert trainer.state.step == 0
    result = await trainer.fit(data, validation=data, metrics=["f1"])  # f1 needs labels only
    assert "val_f1" in result.metrics


async def test_epoch_value_names_what_is_missing() -> None:
    data = at.data.synthetic("softmax", n=600)
    model = at.models.SoftmaxRegression(128, 10)
    result = await at.fit(model, data, validation=data, metrics=["f1"], backend="inline")
    event = result.history[0]
    assert event.value("val_f1") == event.metrics["val_f1"]
    assert event.value("val_loss") == event.val_loss
    with pytest.raises(at.ConfigError, match=r"fit\(metrics=\['auc'\]\)"):
        event.value("val_auc")
