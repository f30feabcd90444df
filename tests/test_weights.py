"""Sample and class weights (issue 18): the input path, the models, the reducer, every
mode and backend, streams, evaluation, and the oracles (repeated rows, finite
differences, scikit-learn's balanced logistic regression)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import asynctrain as at
from asynctrain._inputs import prepare
from asynctrain.data import Dataset, synthetic
from asynctrain.models import (
    MLP,
    LinearRegression,
    LogisticRegression,
    SoftmaxRegression,
    check_gradients,
)

N, D = 12, 4


def _bits(params: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in params.items()}


def _problem(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, targets and integer weights (zeros included: those rows are dropped)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    if kind == "binary":
        y: np.ndarray = np.arange(N) % 2
    elif kind == "classes":
        y = np.arange(N) % 3
    else:
        y = rng.standard_normal(N)
    w = rng.integers(0, 4, N)
    w[:3] = (0, 1, 2)  # every class keeps weight, some row is dropped
    w[3:6] = (3, 1, 2)
    return X, y, w


def _linear_fn(params: Any, X: Any) -> Any:
    return X @ params["w"] + params["b"]


def _models() -> dict[str, tuple[Callable[[], Any], str]]:
    f64 = np.float64
    return {
        "linear": (lambda: LinearRegression(D, l2=0.1, dtype=f64), "values"),
        "logistic": (lambda: LogisticRegression(D, l2=0.1, dtype=f64), "binary"),
        "softmax": (lambda: SoftmaxRegression(D, 3, l2=0.1, dtype=f64), "classes"),
        "mlp": (lambda: MLP((D, 5, 3), l2=0.1, dtype=f64), "classes"),
        "mlp-regression": (
            lambda: MLP((D, 5, 1), task="regression", activation="tanh", l2=0.1, dtype=f64),
            "values",
        ),
    }


def _torch_model(loss: str) -> Any:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    width = 3 if loss == "cross_entropy" else 1
    module = torch.nn.Sequential(torch.nn.Linear(D, 5), torch.nn.Tanh(), torch.nn.Linear(5, width))
    return at.models.TorchModel(module, loss, dtype=np.float64)


def _jax_model() -> Any:
    pytest.importorskip("jax")
    rng = np.random.default_rng(1)
    params = {"w": rng.standard_normal((D, 3)) * 0.1, "b": np.zeros(3)}
    return at.models.JaxModel(_linear_fn, params, input_shape=(D,))


def _bridges() -> dict[str, tuple[Callable[[], Any], str]]:
    return {
        "torch-xent": (lambda: _torch_model("cross_entropy"), "classes"),
        "torch-mse": (lambda: _torch_model("mse"), "values"),
        "torch-huber": (lambda: _torch_model("huber"), "values"),
        "jax-xent": (_jax_model, "classes"),
    }


ALL_MODELS = {**_models(), **_bridges()}


async def _one_step(model: Any, data: Any, *, shards: int = 1) -> dict[str, np.ndarray]:
    """The parameters after one full-batch plain-SGD step."""
    rows = len(data) if isinstance(data, Dataset) else len(data[0])
    trainer = at.Trainer(
        model, at.optim.sgd(0.5), backend="inline", batch_size=rows, shards=shards, seed=0
    )
    async with trainer:
        result = await trainer.fit(data, epochs=1)
    assert result.steps == 1
    return dict(result.params)


# -- the oracles -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL_MODELS))
@pytest.mark.parametrize("shards", [1, 3])
async def test_integer_weights_equal_repeated_rows(name: str, shards: int) -> None:
    """A weight of k counts like k copies: one full-batch SGD step on weighted rows equals
    the step on the rows repeated k times (weight 0: the row dropped), L2 included."""
    build, kind = ALL_MODELS[name]
    X, y, w = _problem(kind)
    weighted = await _one_step(build(), (X, y, w), shards=shards)
    repeated = await _one_step(build(), (X.repeat(w, axis=0), y.repeat(w)), shards=shards)
    start = build().init(np.random.default_rng(0))
    for key, value in repeated.items():
        assert not np.array_equal(value, start[key]), key  # the step moved it
        np.testing.assert_allclose(weighted[key], value, rtol=1e-5, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if not n.startswith("jax")])
def test_weighted_gradients_match_finite_differences(name: str) -> None:
    build, kind = ALL_MODELS[name]
    model = build()
    X, y, _ = _problem(kind)
    weights = np.random.default_rng(2).uniform(0, 3, N)
    params = model.init(np.random.default_rng(0))
    if name.startswith("mlp") or name.startswith("torch"):
        params = {k: v + 0.1 for k, v in params.items()}
    result = check_gradients(model, params, X, y, sample_weight=weights)
    assert result.ok, result


def test_the_gradient_check_refuses_weights_for_a_model_without_them() -> None:
    model = _Unweighted()
    with pytest.raises(at.ConfigError, match="supports_sample_weight"):
        check_gradients(
            model,
            model.init(np.random.default_rng(0)),
            *_problem("binary")[:2],
            sample_weight=np.ones(N),
        )


def test_a_weighted_loss_is_the_weighted_sum_of_row_losses() -> None:
    model = SoftmaxRegression(D, 3, l2=0.0, dtype=np.float64)
    X, y, w = _problem("classes")
    params = {k: v + 0.3 for k, v in model.init(np.random.default_rng(0)).items()}
    per_row = [model.loss_and_grad(params, X[i : i + 1], y[i : i + 1])[0] for i in range(N)]
    loss, _ = model.loss_and_grad(params, X, y, sample_weight=w)
    assert loss == pytest.approx(float(np.dot(w, per_row)), rel=1e-12)


async def test_balanced_class_weights_match_scikit_learn_on_digits() -> None:
    """Is it a 9? About 10% of the digits are: ``class_weight="balanced"`` reaches
    scikit-learn's balanced logistic regression's balanced accuracy within 2 points, and
    beats the unweighted fit's."""
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.linear_model import LogisticRegression as Reference
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, digit = datasets.load_digits(return_X_y=True)
    y = (digit == 9).astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_tr)
    X_tr, X_te = scaler.transform(X_tr), scaler.transform(X_te).astype(np.float32)
    reference = Reference(class_weight="balanced", max_iter=5000).fit(X_tr, y_tr)
    expected = balanced_accuracy_score(y_te, reference.predict(X_te))
    scores = {}
    for class_weight in ("balanced", None):
        model = LogisticRegression(64, l2=1.0 / len(X_tr))  # scikit-learn's C=1
        result = await at.fit(
            model,
            (X_tr, y_tr),
            optimizer=at.optim.adam(1e-2),
            epochs=40,
            backend="inline",
            batch_size=64,
            class_weight=class_weight,
        )
        scores[class_weight] = balanced_accuracy_score(y_te, model.predict(result.params, X_te))
    assert abs(scores["balanced"] - expected) <= 0.02, (scores, expected)
    assert scores["balanced"] > scores[None]


# -- the same bits everywhere ------------------------------------------------------------


@pytest.fixture(scope="module")
def weighted() -> Dataset:
    data = synthetic("softmax", n=3000, seed=4)
    weights = np.random.default_rng(5).uniform(0.0, 3.0, len(data))
    weights[::7] = 0.0
    return data.with_weights(weights)


@contextlib.asynccontextmanager
async def _backend(name: str, workers: int) -> AsyncIterator[Any]:
    backend, _ = at.backends.get_backend(name, workers=workers)
    async with backend:
        yield backend


async def _fit_weighted(backend: Any, data: Dataset, mode: str, **options: Any) -> at.FitResult:
    trainer = at.Trainer(
        SoftmaxRegression(128, 10, l2=1e-3),
        at.optim.adam(1e-2),
        backend=backend,
        batch_size=200,
        shards=4,
        seed=3,
        mode=mode,
        **options,
    )
    async with trainer:
        return await trainer.fit(data, epochs=1, class_weight="balanced", validation=data)


MODES = [("sync", {}), ("local", {"local_steps": 3}), ("ssp", {"staleness": 2})]


@pytest.mark.parametrize(("mode", "options"), MODES, ids=[m for m, _ in MODES])
async def test_weighted_fits_are_bit_identical_across_backends_and_workers(
    weighted: Dataset, mode: str, options: dict[str, int]
) -> None:
    reference = await _fit_weighted("inline", weighted, mode, **options)
    for name in ("thread", "process"):
        for workers in (1, 2):
            async with _backend(name, workers) as backend:
                result = await _fit_weighted(backend, weighted, mode, **options)
            where = f"{name}, workers={workers}"
            assert _bits(result.params) == _bits(reference.params), where
            assert result.history[0].val_loss == reference.history[0].val_loss, where


async def test_weights_of_one_give_the_unweighted_parameters_bit_for_bit(
    weighted: Dataset,
) -> None:
    """Gradients times 1.0 are exact; losses are summed another way (a dot product with
    the weights), so they agree to rounding."""
    plain = Dataset(weighted.X, weighted.y)
    ones = plain.with_weights(np.ones(len(plain)))
    results = []
    for data in (plain, ones):
        trainer = at.Trainer(SoftmaxRegression(128, 10, l2=1e-3), backend="inline", shards=3)
        async with trainer:
            results.append(await trainer.fit(data, epochs=1, validation=data))
    assert _bits(results[0].params) == _bits(results[1].params)
    plain_epoch, ones_epoch = results[0].history[0], results[1].history[0]
    for name in ("loss", "val_loss", "val_accuracy"):
        assert getattr(plain_epoch, name) == pytest.approx(getattr(ones_epoch, name), rel=1e-6)


async def test_async_mode_trains_weighted_data(weighted: Dataset) -> None:
    result = await _fit_weighted("inline", weighted, "async")
    again = await _fit_weighted("inline", weighted, "async")
    assert _bits(result.params) == _bits(again.params)  # inline: one fixed order
    assert result.history[0].val_loss < np.log(10)


# -- losses reported ---------------------------------------------------------------------


async def test_step_epoch_and_validation_losses_are_weighted_means() -> None:
    X, y, w = _problem("classes")
    model = SoftmaxRegression(D, 3, dtype=np.float64)
    val_w = np.random.default_rng(3).uniform(0, 2, N)
    events = []
    trainer = at.Trainer(model, at.optim.sgd(0.1), backend="inline", batch_size=N, shards=2)
    async with trainer:
        async for event in trainer.steps((X, y, w), validation=(X, y, val_w)):
            events.append(event)
    step, epoch = events
    start = model.init(np.random.default_rng(0))
    loss_sum, _ = model.loss_and_grad(start, X, y, sample_weight=w)
    assert step.loss == pytest.approx(loss_sum / w.sum(), rel=1e-12)
    assert (step.samples, step.weight) == (N, float(w.sum()))
    assert epoch.loss == pytest.approx(step.loss, rel=1e-12)
    params = trainer.params
    val_sum, _ = model.loss_and_grad(params, X, y, sample_weight=val_w)
    assert epoch.val_loss == pytest.approx(val_sum / val_w.sum(), rel=1e-12)
    hits = model.predict(params, X) == y
    assert epoch.val_accuracy == pytest.approx(val_w[hits].sum() / val_w.sum(), rel=1e-12)


# -- streams and partial_fit -------------------------------------------------------------


async def test_a_weighted_stream_step_equals_the_repeated_rows() -> None:
    X, y, w = _problem("classes")
    model = SoftmaxRegression(D, 3, l2=0.1, dtype=np.float64)
    async with at.Trainer(model, at.optim.sgd(0.5), backend="inline", batch_size=N) as trainer:
        await trainer.fit_stream([(X[:5], y[:5], w[:5]), (X[5:], y[5:], w[5:])])
        streamed = trainer.params
    repeated = await _one_step(model, (X.repeat(w, axis=0), y.repeat(w)))
    for key, value in repeated.items():
        np.testing.assert_allclose(streamed[key], value, rtol=1e-5, atol=1e-9)


async def test_a_dict_class_weight_on_a_stream_weighs_each_batch() -> None:
    X, y, _ = _problem("classes")
    rows = np.array([2.0, 1.0, 0.5])[y]
    results = []
    for source, class_weight in (([(X, y)], {0: 2.0, 2: 0.5}), ([(X, y, rows)], None)):
        async with at.Trainer(SoftmaxRegression(D, 3), backend="inline", batch_size=5) as tr:
            await tr.fit_stream(source, class_weight=class_weight)
            results.append(tr.params)
    assert _bits(results[0]) == _bits(results[1])


async def test_a_weighted_stream_is_bit_identical_on_threads_and_processes(
    weighted: Dataset,
) -> None:
    """A weighted stream's ring carries the weights to the workers with the rows."""
    batches = [
        (weighted.X[a : a + 700], weighted.y[a : a + 700], weighted.sample_weight[a : a + 700])  # type: ignore[index]
        for a in range(0, len(weighted), 700)
    ]
    results = []
    for name, workers in (("inline", 1), ("thread", 2), ("process", 2)):
        async with _backend(name, workers) as backend:
            trainer = at.Trainer(SoftmaxRegression(128, 10), backend=backend, batch_size=256)
            async with trainer:
                await trainer.fit_stream(batches, class_weight={3: 2.0})
                results.append(_bits(trainer.params))
    assert results[0] == results[1] == results[2]


async def test_a_stream_mixing_weighted_and_unweighted_batches_is_refused() -> None:
    X, y, w = _problem("classes")
    async with at.Trainer(SoftmaxRegression(D, 3), backend="inline", batch_size=4) as trainer:
        with pytest.raises(at.DataError, match=r"stream batch 1: .*first batch had them"):
            await trainer.fit_stream([(X, y, w), (X, y)])


async def test_balanced_class_weights_are_refused_where_the_counts_are_unknown() -> None:
    X, y, _ = _problem("classes")
    async with at.Trainer(SoftmaxRegression(D, 3), backend="inline") as trainer:
        with pytest.raises(at.ConfigError, match="'balanced' needs the label counts"):
            await trainer.fit_stream([(X, y)], class_weight="balanced")
        with pytest.raises(at.ConfigError, match="partial_fit does not know"):
            await trainer.partial_fit(X, y, class_weight="balanced")
        assert trainer.state.step == 0


async def test_partial_fit_takes_sample_weights() -> None:
    X, y, w = _problem("classes")
    model = SoftmaxRegression(D, 3, l2=0.1, dtype=np.float64)
    async with at.Trainer(model, at.optim.sgd(0.5), backend="inline", batch_size=N) as trainer:
        await trainer.partial_fit(X, y, w)
        partial = trainer.params
    repeated = await _one_step(model, (X.repeat(w, axis=0), y.repeat(w)))
    for key, value in repeated.items():
        np.testing.assert_allclose(partial[key], value, rtol=1e-5, atol=1e-9)


# -- the data, and what is refused -------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        ([1.0, -1.0, 1.0], at.DataError, r"sample_weight\[1\] = -1.0 is negative"),
        ([1.0, np.nan, 1.0], at.DataError, r"sample_weight\[1\] = nan is not a finite"),
        ([np.inf, 1.0, 1.0], at.DataError, r"sample_weight\[0\] = inf is not a finite"),
        ([1e300, 1.0, 1.0], at.DataError, r"sample_weight\[0\] = 1e\+300 is not a finite"),
        ([0, 0, 0], at.DataError, "zero for every row"),
        # out of scale for float32: the total overflows (a NonFiniteError at step 0 once),
        # or every weight is subnormal or rounds to 0 (nothing was trained, silently)
        ([3e38, 3e38, 1.0], at.DataError, r"sums to 6e\+38, beyond the largest float32.*w / w.max"),
        ([1e-45, 0.0, 1e-45], at.DataError, r"1.401e-45, is below the smallest normal float32"),
        ([1e-50, 0.0, 0.0], at.DataError, r"1e-50, rounds to 0 in float32.*rescale"),
        ([1.0, 1.0], at.DataError, r"shape \(2,\) but the data has 3 rows"),
        ([[1.0], [1.0], [1.0]], at.DataError, r"shape \(3, 1\)"),
        (["a", "b", "c"], at.DataTypeError, "sample_weight has dtype <U1"),
    ],
)
def test_bad_weights_are_refused_by_name(weights: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        Dataset(np.zeros((3, 2), np.float32), [0, 1, 0], sample_weight=weights)


def test_weights_in_scale_pass_and_the_check_is_in_the_models_dtype() -> None:
    X, y = np.zeros((3, 2)), [0, 1, 0]
    Dataset(X, y, sample_weight=[1e38, 1e38, 1e38], dtype=np.float32)  # 3e38: finite
    Dataset(X, y, sample_weight=[2e-38, 0.0, 0.0], dtype=np.float32)  # normal
    Dataset(X, y, sample_weight=[1e-45, 0.0, 3e38], dtype=np.float64)
    with pytest.raises(at.DataError, match="overflow"):  # class weights multiply them
        prepare(LogisticRegression(2), (X, y, [2e38, 2e38, 2e38]), class_weight={1: 0.5})


def test_weights_are_copied_read_only_and_travel_with_the_rows() -> None:
    X, y, w = _problem("classes")
    w = w.astype(np.float64)
    before = w.copy()
    data = Dataset(X, y, sample_weight=w, dtype=np.float32)
    assert data.sample_weight is not None
    assert data.sample_weight.dtype == np.float32
    assert not data.sample_weight.flags.writeable
    assert not np.shares_memory(data.sample_weight, w)
    np.testing.assert_array_equal(w, before)
    assert "weighted" in repr(data)
    picked = data.subset([5, 0, 5])
    np.testing.assert_array_equal(picked.sample_weight, w[[5, 0, 5]])
    first, second = data.split(0.25, seed=1)
    total = np.concatenate([first.sample_weight, second.sample_weight])  # type: ignore[list-item]
    assert sorted(total.tolist()) == sorted(w.tolist())
    import pickle

    again = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(again.sample_weight, data.sample_weight)
    assert not again.sample_weight.flags.writeable
    assert data.with_weights(None).sample_weight is None


def test_prepare_keeps_the_inputs_and_combines_class_and_sample_weights() -> None:
    X, y, w = _problem("classes")
    inputs = (X.copy(), y.copy(), w.copy())
    data = prepare(SoftmaxRegression(D, 3), (X, y, w), class_weight={1: 2.0})
    for given, kept in zip((X, y, w), inputs, strict=True):
        np.testing.assert_array_equal(given, kept)
    np.testing.assert_allclose(data.sample_weight, w * np.where(y == 1, 2.0, 1.0))
    balanced = prepare(SoftmaxRegression(D, 3), (X, y), class_weight="balanced")
    assert balanced.sample_weight is not None
    for label in range(3):  # every class weighs the same in total
        assert balanced.sample_weight[y == label].sum() == pytest.approx(N / 3)


@pytest.mark.parametrize("class_weight", ["balanced", {1: 2.0}])
def test_class_weights_take_float_labels_as_the_classes_they_name(class_weight: Any) -> None:
    # a classifier trains on labels 0.0, 1.0, 2.0; class weights indexed by them failed
    # with TypeError (bincount) or IndexError (a float index) deep inside
    X, y, w = _problem("classes")
    model = SoftmaxRegression(D, 3)
    as_ints = prepare(model, (X, y, w), class_weight=class_weight)
    as_floats = prepare(model, (X, y.astype(np.float64), w), class_weight=class_weight)
    np.testing.assert_array_equal(as_floats.sample_weight, as_ints.sample_weight)


def test_balanced_uses_weighted_class_totals_like_scikit_learn() -> None:
    pytest.importorskip("sklearn", minversion="1.7")  # compute_class_weight's sample_weight
    class_weight = pytest.importorskip("sklearn.utils.class_weight")
    X, y, w = _problem("classes")
    data = prepare(SoftmaxRegression(D, 3), (X, y, w), class_weight="balanced")
    expected = class_weight.compute_class_weight(
        "balanced", classes=np.arange(3), y=y, sample_weight=w
    )
    np.testing.assert_allclose(data.sample_weight, w * expected[y], rtol=1e-6)


@pytest.mark.parametrize(
    ("model", "class_weight", "error", "message"),
    [
        (LinearRegression(D), "balanced", at.ConfigError, "is a regression model"),
        (SoftmaxRegression(D, 3), {5: 1.0}, at.ConfigError, "label 5, which is not a class"),
        (SoftmaxRegression(D, 3), {"a": 1.0}, at.ConfigError, "label 'a'"),
        (SoftmaxRegression(D, 3), {0: -1.0}, at.ConfigError, r"class_weight\[0\] must be"),
        (SoftmaxRegression(D, 3), {0: "x"}, at.ConfigTypeError, "must be a number"),
        (SoftmaxRegression(D, 3), "even", at.ConfigError, "got 'even'"),
        (SoftmaxRegression(D, 3), [1, 2], at.ConfigTypeError, "got list"),
        (SoftmaxRegression(D, 3), {0: 0, 1: 0, 2: 0}, at.DataError, "zero for every row"),
    ],
)
async def test_bad_class_weights_fail_before_any_work(
    model: Any, class_weight: Any, error: type, message: str
) -> None:
    X, y, _ = _problem("values" if model.n_classes is None else "classes")
    async with at.Trainer(model, backend="inline") as trainer:
        with pytest.raises(error, match=message):
            await trainer.fit((X, y), class_weight=class_weight)
        assert trainer.state.step == 0


class _Unweighted:
    """A user model without ``supports_sample_weight``; counts its calls."""

    n_features, n_classes, dtype = D, 2, np.dtype(np.float64)
    calls = 0

    def init(self, rng: np.random.Generator) -> dict[str, npt.NDArray[Any]]:
        return LogisticRegression(D, dtype=np.float64).init(rng)

    def loss_and_grad(self, params: Any, X: Any, y: Any) -> tuple[float, Any]:
        type(self).calls += 1
        return LogisticRegression(D, dtype=np.float64).loss_and_grad(params, X, y)

    def predict(self, params: Any, X: Any) -> Any:
        return LogisticRegression(D, dtype=np.float64).predict(params, X)


@pytest.mark.parametrize("how", ["triple", "dataset", "class_weight", "validation", "stream"])
async def test_a_model_without_weights_is_refused_before_any_work(how: str) -> None:
    X, y, w = _problem("binary")
    model = _Unweighted()
    _Unweighted.calls = 0
    async with at.Trainer(model, backend="inline", batch_size=4) as trainer:
        attempts = {
            "triple": lambda: trainer.fit((X, y, w)),
            "dataset": lambda: trainer.fit(Dataset(X, y, sample_weight=w)),
            "class_weight": lambda: trainer.fit((X, y), class_weight={1: 2.0}),
            "validation": lambda: trainer.fit((X, y), validation=(X, y, w)),
            "stream": lambda: trainer.fit_stream([(X, y, w)]),
        }
        with pytest.raises(at.ConfigError, match=r"_Unweighted.*supports_sample_weight = True"):
            await attempts[how]()
    assert _Unweighted.calls == 0
    async with at.Trainer(model, backend="inline", batch_size=4) as trainer:
        await trainer.fit((X, y))  # without weights it trains as before
    assert _Unweighted.calls > 0


def test_rows_of_positive_weight_must_hold_two_classes() -> None:
    X, y, _ = _problem("binary")
    with pytest.raises(at.DataError, match="hold only class 1"):
        prepare(LogisticRegression(D), (X, y, y))


async def test_the_service_and_fit_take_weights() -> None:
    X, y, w = _problem("classes")
    model = SoftmaxRegression(D, 3, dtype=np.float64)
    options = {"batch_size": 4, "shards": 2, "seed": 1}
    direct = await at.fit(model, (X, y, w), backend="inline", class_weight={0: 3.0}, **options)
    async with at.TrainingService(backend="inline") as service:
        job = await service.start("w", model, (X, y, w), class_weight={0: 3.0}, **options)
        served = await job.result()
        with pytest.raises(at.ConfigError, match="regression model"):
            await service.start("r", LinearRegression(D), (X, y * 1.0), class_weight="balanced")
    assert _bits(served.params) == _bits(direct.params)


# -- the scikit-learn estimators ---------------------------------------------------------


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    "name",
    ["AsyncLogisticRegression", "AsyncMLPClassifier", "AsyncLinearRegression", "AsyncMLPRegressor"],
)
def test_estimator_integer_weights_equal_repeated_rows(name: str) -> None:
    """One full-batch epoch of plain SGD: fit(X, y, sample_weight=w) equals fit on the
    rows repeated by their weights (what check_sample_weight_equivalence cannot see
    through minibatches); regressors standardise their targets with weighted moments."""
    estimators = pytest.importorskip("asynctrain.sklearn")
    regression = name in ("AsyncLinearRegression", "AsyncMLPRegressor")
    X, y, w = _problem("values" if regression else "classes")
    labels = y if regression else np.array(["a", "b", "c"])[y]
    options: dict[str, Any] = {
        "optimizer": "sgd",
        "batch_size": 1000,
        "max_iter": 1,
        "random_state": 0,
    }
    if name.startswith("AsyncMLP"):
        options.update(hidden_layer_sizes=(5,), alpha=0.0)
    build = getattr(estimators, name)
    weighted = build(**options).fit(X, labels, sample_weight=w)
    repeated = build(**options).fit(X.repeat(w, axis=0), labels.repeat(w))
    for key, value in repeated.params_.items():
        np.testing.assert_allclose(weighted.params_[key], value, rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_estimator_class_weights_by_original_label() -> None:
    estimators = pytest.importorskip("asynctrain.sklearn")
    X, y, w = _problem("classes")
    labels = np.array(["a", "b", "c"])[y]
    options = {"optimizer": "sgd", "batch_size": 1000, "max_iter": 1, "random_state": 0}
    by_class = estimators.AsyncLogisticRegression(class_weight={"b": 3.0}, **options)
    by_class.fit(X, labels, sample_weight=w)
    by_row = estimators.AsyncLogisticRegression(**options)
    by_row.fit(X, labels, sample_weight=w * np.where(y == 1, 3.0, 1.0))
    assert _bits(by_class.params_) == _bits(by_row.params_)
    unknown = estimators.AsyncLogisticRegression(class_weight={"z": 3.0}, **options)
    with pytest.raises(ValueError, match="label 'z', which is not among the classes"):
        unknown.fit(X, labels)
    balanced = estimators.AsyncLogisticRegression(class_weight="balanced", **options)
    with pytest.raises(ValueError, match="'balanced' is not supported by partial_fit"):
        balanced.partial_fit(X, labels, classes=["a", "b", "c"])
    held_out = estimators.AsyncLogisticRegression(early_stopping=True, max_iter=3, random_state=0)
    held_out.fit(X.repeat(3, axis=0), labels.repeat(3), sample_weight=w.repeat(3) + 1)
    assert len(held_out.validation_scores_) == 3


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_estimator_balanced_weights_match_scikit_learn_on_digits() -> None:
    estimators = pytest.importorskip("asynctrain.sklearn")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression as Reference
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, digit = load_digits(return_X_y=True)
    y = digit == 9
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    scores = []
    for clf in (
        Reference(class_weight="balanced", max_iter=5000),
        estimators.AsyncLogisticRegression(
            class_weight="balanced", alpha=1.0 / len(X_tr), random_state=0
        ),
    ):
        pipe = make_pipeline(StandardScaler(), clf).fit(X_tr, y_tr)
        scores.append(balanced_accuracy_score(y_te, pipe.predict(X_te)))
    assert abs(scores[1] - scores[0]) <= 0.02, scores
