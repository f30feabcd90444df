"""Models: gradients against finite differences, summed-loss algebra, dtypes, validation."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from asynctrain._exceptions import ConfigError, ConfigTypeError, DataError, DataTypeError
from asynctrain._types import Grads, Params
from asynctrain.models import (
    MLP,
    Classifier,
    GradientCheck,
    LinearRegression,
    LogisticRegression,
    Model,
    SoftmaxRegression,
    check_data,
    check_gradients,
)

Array = npt.NDArray[Any]


def build_models(dtype: type = np.float64, l2: float = 0.0) -> list[Model]:
    """One of every model shape: each task, both activations, one and many outputs."""
    return [
        LinearRegression(5, l2=l2, dtype=dtype),
        LogisticRegression(5, l2=l2, dtype=dtype),
        SoftmaxRegression(5, 4, l2=l2, dtype=dtype),
        MLP((5, 7, 4), l2=l2, dtype=dtype),
        MLP((5, 6, 3, 4), activation="tanh", l2=l2, dtype=dtype),
        MLP((5, 6, 1), task="regression", l2=l2, dtype=dtype),
        MLP((5, 6, 3), activation="tanh", task="regression", l2=l2, dtype=dtype),
    ]


def model_id(model: Model) -> str:
    return repr(model).split(", dtype")[0]


def make_data(model: Model, n: int, seed: int = 0) -> tuple[Array, Array]:
    """Random inputs in the model's dtype and targets of the right kind and shape."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, model.n_features)).astype(model.dtype)
    if model.n_classes is not None:
        return X, np.arange(n, dtype=np.int64) % model.n_classes
    outputs = getattr(model, "n_outputs", 1)
    shape = (n,) if outputs == 1 else (n, outputs)
    return X, rng.standard_normal(shape).astype(model.dtype)


def random_params(model: Model, seed: int = 1) -> Params:
    """Non-trivial parameters (the convex models start at zero)."""
    rng = np.random.default_rng(seed)
    params = model.init(rng)
    return {k: (v + 0.5 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in params.items()}


MODELS_L2 = [*build_models(), *build_models(l2=0.3)]


@pytest.mark.parametrize("model", MODELS_L2, ids=model_id)
def test_gradients_match_finite_differences(model: Model) -> None:
    X, y = make_data(model, 12)
    result = check_gradients(model, random_params(model), X, y)
    assert result.ok, result
    assert result.max_abs_error < 1e-6


def test_gradient_check_samples_large_parameters() -> None:
    model = SoftmaxRegression(30, 10, dtype=np.float64)
    X, y = make_data(model, 20)
    params = random_params(model)
    saved = {k: v.copy() for k, v in params.items()}
    result = check_gradients(model, params, X, y, max_checks=15, seed=3)
    assert result.ok, result
    assert set(result.errors) == {"W", "b"}
    for name, value in params.items():
        np.testing.assert_array_equal(value, saved[name])


@pytest.mark.parametrize("model", [SoftmaxRegression(5, 4), MLP((5, 3, 4))], ids=model_id)
def test_whole_number_float_labels_give_the_same_result(model: Model) -> None:
    X, y = make_data(model, 8)
    params = random_params(model)
    loss, grads = model.loss_and_grad(params, X, y)
    loss_f, grads_f = model.loss_and_grad(params, X, y.astype(np.float32))
    assert loss == loss_f
    for name in params:
        np.testing.assert_array_equal(grads[name], grads_f[name])


class WrongGradient:
    """A model whose gradient of ``w`` is 10% too large: the oracle must catch it."""

    def __init__(self) -> None:
        self.inner = LinearRegression(3, dtype=np.float64)
        self.n_features, self.n_classes, self.dtype = 3, None, np.dtype(np.float64)

    def init(self, rng: np.random.Generator) -> Params:
        return self.inner.init(rng)

    def loss_and_grad(self, params: Params, X: Array, y: Array) -> tuple[float, Grads]:
        loss, grads = self.inner.loss_and_grad(params, X, y)
        return loss, {"w": grads["w"] * 1.1, "b": grads["b"]}

    def predict(self, params: Params, X: Array) -> Array:
        return self.inner.predict(params, X)


class MissingGradient(WrongGradient):
    def loss_and_grad(self, params: Params, X: Array, y: Array) -> tuple[float, Grads]:
        loss, grads = self.inner.loss_and_grad(params, X, y)
        return loss, {"w": grads["w"]}


@pytest.mark.parametrize("broken", [WrongGradient(), MissingGradient()])
def test_gradient_check_fails_on_a_wrong_gradient(broken: WrongGradient) -> None:
    X, y = make_data(broken.inner, 8)
    result = check_gradients(broken, random_params(broken.inner), X, y)
    assert not result.ok
    assert result.errors["w"] > 1e-3 or result.errors["b"] == float("inf")
    assert repr(result).startswith("GradientCheck(ok=False, max_abs_error=")


def test_gradient_check_repr_and_options() -> None:
    check = GradientCheck(True, 1.5e-9, 2e-7, {"w": 1.5e-9})
    assert repr(check) == (
        "GradientCheck(ok=True, max_abs_error=1.5e-09, max_rel_error=2e-07, errors={'w': 1.5e-09})"
    )
    model = LinearRegression(2)
    X, y = make_data(model, 4)
    with pytest.raises(ConfigError, match="eps"):
        check_gradients(model, model.init(np.random.default_rng(0)), X, y, eps=0.0)


@pytest.mark.parametrize("model", MODELS_L2, ids=model_id)
def test_loss_sums_add_up_over_shards(model: Model) -> None:
    X, y = make_data(model, 10)
    params = random_params(model)
    loss, grads = model.loss_and_grad(params, X, y)
    loss_a, grads_a = model.loss_and_grad(params, X[:4], y[:4])
    loss_b, grads_b = model.loss_and_grad(params, X[4:], y[4:])
    assert loss == pytest.approx(loss_a + loss_b, rel=1e-12)
    for name in params:
        np.testing.assert_allclose(grads[name], grads_a[name] + grads_b[name], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index", range(len(build_models())))
def test_dtype_is_kept_everywhere(dtype: type, index: int) -> None:
    model = build_models(dtype, l2=0.1)[index]
    assert model.dtype == np.dtype(dtype)
    params = model.init(np.random.default_rng(0))
    X, y = make_data(model, 6)
    targets = y if model.n_classes is not None else y.astype(np.float64)
    for inputs in (X, X.astype(np.float64), X.astype(np.float32)):
        loss, grads = model.loss_and_grad(params, inputs, targets)
        assert type(loss) is float
        assert {k: g.dtype for k, g in grads.items()} == {k: np.dtype(dtype) for k in params}
        assert [g.shape for g in grads.values()] == [p.shape for p in params.values()]
        if model.n_classes is None:
            assert model.predict(params, inputs).dtype == np.dtype(dtype)
        else:
            assert isinstance(model, Classifier)
            assert model.predict_proba(params, inputs).dtype == np.dtype(dtype)


@pytest.mark.parametrize("model", build_models(np.float32, l2=0.2), ids=model_id)
def test_inputs_are_never_modified(model: Model) -> None:
    X, y = make_data(model, 6)
    params = random_params(model)
    before = (X.copy(), y.copy(), {k: v.copy() for k, v in params.items()})
    model.loss_and_grad(params, X, y)
    model.predict(params, X)
    if isinstance(model, Classifier) and model.n_classes is not None:
        model.predict_proba(params, X)
    np.testing.assert_array_equal(X, before[0])
    np.testing.assert_array_equal(y, before[1])
    for name, value in params.items():
        np.testing.assert_array_equal(value, before[2][name])


def test_losses_match_their_formulas() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 3))
    w, b = rng.standard_normal(3), rng.standard_normal(1)
    z = X @ w + b
    labels, values = np.array([0, 1, 1, 0, 1, 0, 0]), rng.standard_normal(7)
    linear = LinearRegression(3, l2=0.5, dtype=np.float64)
    expected = np.sum((z - values) ** 2) + 7 * 0.5 * 0.5 * w @ w
    assert linear.loss_and_grad({"w": w, "b": b}, X, values)[0] == pytest.approx(expected)
    p = 1 / (1 + np.exp(-z))
    expected = -np.sum(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    logistic = LogisticRegression(3, dtype=np.float64)
    assert logistic.loss_and_grad({"w": w, "b": b}, X, labels)[0] == pytest.approx(expected)
    W, c = rng.standard_normal((3, 2)), rng.standard_normal(2)
    logits = X @ W + c
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.sum(np.log(proba[np.arange(7), labels]))
    softmax = SoftmaxRegression(3, 2, dtype=np.float64)
    assert softmax.loss_and_grad({"W": W, "b": c}, X, labels)[0] == pytest.approx(expected)


CLASSIFIERS: dict[str, Callable[[type], Classifier]] = {
    "logistic": lambda dtype: LogisticRegression(5, dtype=dtype),
    "softmax": lambda dtype: SoftmaxRegression(5, 4, dtype=dtype),
    "mlp": lambda dtype: MLP((5, 7, 4), dtype=dtype),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_huge_logits_stay_finite(name: str, dtype: type) -> None:
    model = CLASSIFIERS[name](dtype)
    X, y = make_data(model, 40)
    params = random_params(model)
    loss, grads = model.loss_and_grad(params, X * 1e4, y)
    assert np.isfinite(loss)
    assert loss > 1e3
    assert all(np.isfinite(g).all() for g in grads.values())
    proba = model.predict_proba(params, X * 1e4)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logistic_probabilities_of_infinite_logits(dtype: type) -> None:
    # The sigmoid of +inf is 1: computed as exp(z - log(1 + e^z)) it was inf - inf, NaN,
    # where the scikit-learn estimator's exp(-log(1 + e^-z)) gave 1 (the two disagreed).
    from scipy.special import expit  # the independent oracle

    model = LogisticRegression(2, dtype=dtype)
    big = np.finfo(dtype).max
    params = {"w": np.array([big, 0.0], dtype), "b": np.zeros(1, dtype)}
    X = np.array([[10, 0], [-10, 0], [0, 30], [1e-30, 0], [0, 0]], dtype)
    with np.errstate(over="ignore"):  # the products overflow, as they are meant to
        logits = X @ params["w"] + params["b"]
        proba = model.predict_proba(params, X)
    assert np.isposinf(logits[0])
    assert np.isneginf(logits[1])
    assert np.isfinite(proba).all()
    np.testing.assert_array_equal(proba[:2], [[0, 1], [1, 0]])
    np.testing.assert_allclose(proba[:, 1], expit(logits.astype(np.float64)), rtol=1e-6, atol=0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_predictions_have_the_right_shapes(name: str) -> None:
    model = CLASSIFIERS[name](np.float32)
    X, _ = make_data(model, 9)
    params = random_params(model)
    proba = model.predict_proba(params, X)
    labels = model.predict(params, X)
    assert isinstance(model, Classifier)
    assert proba.shape == (9, model.n_classes)
    assert labels.shape == (9,)
    assert labels.dtype == np.int64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, proba.argmax(axis=1))


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (LinearRegression(5), (9,)),
        (MLP((5, 4, 1), task="regression"), (9,)),
        (MLP((5, 4, 3), task="regression"), (9, 3)),
    ],
    ids=model_id,
)
def test_regression_predictions_match_target_shape(model: Model, shape: tuple[int, ...]) -> None:
    X, y = make_data(model, 9)
    assert model.predict(random_params(model), X).shape == shape == y.shape
    assert model.n_classes is None
    with pytest.raises(ConfigError, match="task='classification'"):
        MLP((5, 4, 3), task="regression").predict_proba(random_params(model), X)


def blobs(n_classes: int, seed: int = 0) -> tuple[Array, Array]:
    """Well-separated Gaussian blobs in 4 dimensions, 100 rows per class."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_classes, 4)) * 3
    y = np.repeat(np.arange(n_classes), 100)
    X = centers[y] + rng.standard_normal((len(y), 4))
    return X.astype(np.float32), y.astype(np.int64)


def gradient_descent(model: Model, X: Array, y: Array, steps: int = 300) -> Params:
    """Plain full-batch gradient descent on the mean loss."""
    params = model.init(np.random.default_rng(0))
    for _ in range(steps):
        grads = model.loss_and_grad(params, X, y)[1]
        params = {k: v - (0.5 / len(X)) * grads[k] for k, v in params.items()}
    return params


@pytest.mark.parametrize(
    ("model", "n_classes"),
    [(LogisticRegression(4, l2=1e-3), 2), (SoftmaxRegression(4, 3, l2=1e-3), 3)],
    ids=model_id,
)
def test_training_reaches_sklearn_accuracy(model: Model, n_classes: int) -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    X, y = blobs(n_classes)
    params = gradient_descent(model, X, y)
    ours = np.mean(model.predict(params, X) == y)
    reference = sklearn.LogisticRegression().fit(X, y).score(X, y)
    assert ours >= reference - 0.01
    assert params["b"].dtype == np.float32


@pytest.mark.parametrize("model", [*build_models(np.float32), *build_models(l2=0.5)], ids=model_id)
def test_models_pickle_round_trip(model: Model) -> None:
    copy = pickle.loads(pickle.dumps(model))
    assert copy == model
    assert hash(copy) == hash(model)
    assert copy.dtype == model.dtype
    X, y = make_data(model, 5)
    params = random_params(model)
    assert copy.loss_and_grad(params, X, y)[0] == model.loss_and_grad(params, X, y)[0]


@pytest.mark.parametrize("model", build_models(), ids=model_id)
def test_models_follow_the_protocol(model: Model) -> None:
    assert isinstance(model, Model)
    assert isinstance(model, Classifier) == hasattr(model, "predict_proba")
    assert isinstance(model.n_features, int)


def test_init_is_seeded_and_scaled() -> None:
    relu = MLP((200, 300, 10), dtype=np.float32)
    first = relu.init(np.random.default_rng(7))
    second = relu.init(np.random.default_rng(7))
    assert list(first) == ["W0", "b0", "W1", "b1"]
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
        assert first[name].dtype == np.float32
    assert np.std(first["W0"]) == pytest.approx(np.sqrt(2 / 200), rel=0.05)
    assert not first["b0"].any()
    tanh = MLP((200, 300, 10), activation="tanh", dtype=np.float64).init(np.random.default_rng(7))
    limit = np.sqrt(6 / 500)
    assert tanh["W0"].dtype == np.float64
    assert -limit <= tanh["W0"].min() < -0.9 * limit < 0.9 * limit < tanh["W0"].max() <= limit
    assert LinearRegression(3).init(np.random.default_rng(0))["b"].shape == (1,)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_uniform_init_draws_every_parameter_within_one_over_sqrt_fan_in(activation: str) -> None:
    # The oracle is the distribution PyTorch's nn.Linear documents: U(-1/sqrt(fan_in),
    # 1/sqrt(fan_in)) for weights and biases alike; its mean is 0 and its std limit/sqrt(3).
    model = MLP((400, 300, 10), activation=activation, initializer="uniform")
    params = model.init(np.random.default_rng(3))
    again = model.init(np.random.default_rng(3))
    for name, fan_in in (("W0", 400), ("b0", 400), ("W1", 300), ("b1", 300)):
        limit, value = 1 / np.sqrt(fan_in), params[name]
        np.testing.assert_array_equal(value, again[name])
        assert value.dtype == np.float32
        assert -limit <= value.min()
        assert value.max() <= limit
        if value.size >= 1000:
            assert np.std(value) == pytest.approx(limit / np.sqrt(3), rel=0.05)
            assert abs(np.mean(value)) < 0.05 * limit
    assert params["b0"].any()
    assert MLP((4, 3)).initializer == "auto"


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: LinearRegression(0), ConfigError, "n_features"),
        (lambda: MLP((4, 3), initializer="xavier"), ConfigError, "initializer"),
        (lambda: LinearRegression(True), ConfigTypeError, "n_features"),
        (lambda: LinearRegression(3.0), ConfigTypeError, "n_features"),  # type: ignore[arg-type]
        (lambda: LogisticRegression(3, l2=-0.1), ConfigError, "l2"),
        (lambda: LogisticRegression(3, l2=float("nan")), ConfigError, "l2"),
        (lambda: LogisticRegression(3, l2=True), ConfigTypeError, "l2"),
        (lambda: LinearRegression(3, dtype=np.int64), ConfigError, "int64"),
        (lambda: LinearRegression(3, dtype=np.float16), ConfigError, "float16"),
        (lambda: LinearRegression(3, dtype="nonsense"), ConfigTypeError, "nonsense"),
        (lambda: LinearRegression(3, dtype=None), ConfigTypeError, "None"),  # type: ignore[arg-type]
        (lambda: SoftmaxRegression(3, 1), ConfigError, "n_classes"),
        (lambda: SoftmaxRegression(3, False), ConfigTypeError, "n_classes"),
        (lambda: MLP((4, 8, 3), activation="sigmoid"), ConfigError, "sigmoid"),
        (lambda: MLP((4, 8, 3), task="ranking"), ConfigError, "ranking"),
        (lambda: MLP((4,)), ConfigError, "sizes"),
        (lambda: MLP(()), ConfigError, "sizes"),
        (lambda: MLP(4), ConfigTypeError, "sizes"),  # type: ignore[arg-type]
        (lambda: MLP("48"), ConfigTypeError, "sizes"),  # type: ignore[arg-type]
        (lambda: MLP((4, 0, 3)), ConfigError, r"sizes\[1\]"),
        (lambda: MLP((4, True, 3)), ConfigTypeError, r"sizes\[1\]"),
        (lambda: MLP((4, 8, 1)), ConfigError, "regression"),
        (lambda: MLP((4, 8, 3), l2=-1.0), ConfigError, "l2"),
    ],
)
def test_bad_configuration_is_refused(build: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_accepted_configuration_is_normalised() -> None:
    model = MLP([4, 8, 3], l2=1, dtype="float64")
    assert model.sizes == (4, 8, 3)
    assert model.l2 == 1.0
    assert isinstance(model.l2, float)
    assert model.dtype == np.dtype(np.float64)
    assert model == MLP((4, 8, 3), l2=1.0, dtype=np.float64)
    with pytest.raises(AttributeError):
        model.l2 = 2.0  # type: ignore[misc]


def test_check_data_accepts_good_data() -> None:
    X = np.zeros((6, 3), dtype=np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    check_data(SoftmaxRegression(3, 3), X, labels)
    check_data(SoftmaxRegression(3, 4), X, labels.astype(np.float64))
    check_data(LogisticRegression(3), X, labels % 2)
    check_data(LinearRegression(3), X, np.arange(6.0))
    check_data(MLP((3, 4, 2), task="regression"), X, np.zeros((6, 2)))
    check_data(WrongGradient(), X, np.arange(6))


X6 = np.zeros((6, 3))
CLS = SoftmaxRegression(3, 3)
REG = LinearRegression(3)


@pytest.mark.parametrize(
    ("model", "X", "y", "error", "match"),
    [
        (CLS, np.zeros(6), np.zeros(6, int), DataError, "2-D"),
        (CLS, np.zeros((6, 3, 1)), np.zeros(6, int), DataError, "2-D"),
        (
            CLS,
            np.zeros((6, 12)),
            np.zeros(6, int),
            DataError,
            "12 features but the model expects 3",
        ),
        (CLS, np.zeros((0, 3)), np.zeros(0, int), DataError, "no rows"),
        (CLS, X6.astype(str), np.zeros(6, int), DataTypeError, "real numbers"),
        (CLS, X6, np.zeros(5, int), DataError, "6 rows"),
        (CLS, X6, np.array([0, 1, 2, 0, 1, 0.5]), DataError, "whole numbers.*0.5"),
        (CLS, X6, np.array([0, 1, 2, 0, 1, np.nan]), DataError, "whole numbers"),
        (CLS, X6, np.array([0, 1, 3, 0, 1, 2]), DataError, "0..2.*min 0 and max 3"),
        (CLS, X6, np.array([0, 1, -1, 0, 1, 2]), DataError, "min -1"),
        (CLS, X6, np.full(6, 2), DataError, "only class 2"),
        (CLS, X6, np.eye(3)[[0, 1, 2, 0, 1, 2]], DataError, "argmax"),
        # A column of labels: argmax(axis=1) would make them all 0.
        (CLS, X6, np.c_[[0, 1, 2, 0, 1, 2]], DataError, r"\(6, 1\); pass y\.ravel\(\)$"),
        (CLS, X6, np.array(list("abcabc")), DataTypeError, "real numbers"),
        (CLS, X6, np.arange(6) % 2 == 0, DataTypeError, "booleans"),
        (LogisticRegression(3), X6, np.arange(6), DataError, "0..1"),
        (REG, X6, np.zeros((6, 1)), DataError, r"ravel"),
        (REG, X6, np.zeros((6, 2)), DataError, r"\(6,\)"),
        (REG, X6, np.array([0, 1, np.inf, 0, 1, 2]), DataError, "finite"),
        (MLP((3, 4, 2), task="regression"), X6, np.zeros(6), DataError, r"\(6, 2\)"),
        (object(), X6, np.zeros(6), ConfigTypeError, "n_features"),
    ],
)
def test_check_data_refuses_bad_data(
    model: Model, X: Array, y: Array, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        check_data(model, X, y)
