"""JaxModel: gradients against the numpy models and finite differences, flattened
parameters, bit-identity on every backend, worker count and deterministic mode, one model
crossing per fit, resume, and bad input refused before any work."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import asynctrain as at
from asynctrain._engine import _work as _shipping
from asynctrain.backends import ProcessBackend
from asynctrain.data import Dataset
from asynctrain.models import (
    MLP,
    JaxModel,
    LogisticRegression,
    SoftmaxRegression,
    check_gradients,
)

jax = pytest.importorskip("jax")
jnp = jax.numpy

MODES = [("sync", {}), ("local", {"local_steps": 2}), ("ssp", {"staleness": 2})]


# -- apply functions (module level, so worker processes can unpickle them) ---------------


def mlp_apply(params: Any, X: Any) -> Any:
    hidden = jnp.maximum(X @ params["hidden"]["w"] + params["hidden"]["b"], 0.0)
    return hidden @ params["out"]["w"] + params["out"]["b"]


def linear_apply(params: Any, X: Any) -> Any:
    return X @ params["w"] + params["b"]


SCALE = np.float64(1.5)  # not a weak type: under 64-bit mode it makes the outputs float64


def scaled_apply(params: Any, X: Any) -> Any:
    return (
        jnp.tanh(X @ params["hidden"]["w"] + params["hidden"]["b"]) * SCALE @ params["out"]["w"]
        + params["out"]["b"]
    )


@jax.jit
def jitted_apply(params: Any, X: Any) -> Any:
    """A module-level function under @jax.jit: pickle takes the function it wraps, whose
    name gives the wrapper, and refused it."""
    return mlp_apply(params, X)


TRACES: list[tuple[int, ...]] = []  # the input shapes counted_apply was traced on


def counted_apply(params: Any, X: Any) -> Any:
    TRACES.append(tuple(X.shape))  # runs when JAX traces, not when compiled code runs
    return X @ params["w"] + params["b"]


class UnhashableApply:
    """An apply function that is an object equal to its copies, so not hashable."""

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnhashableApply)

    def __call__(self, params: Any, X: Any) -> Any:
        return X @ params["w"] + params["b"]


def compile_misses() -> int:
    """Jitted functions this process has built for JaxModels so far."""
    from asynctrain.models import _jax

    return _jax._compiled.cache_info().misses


def image_apply(params: Any, X: Any) -> Any:
    return jnp.tanh(X.reshape(X.shape[0], -1) @ params["w"]) @ params["v"]


def branching_apply(params: Any, X: Any) -> Any:
    if X.sum() > 0:  # a Python branch on a traced value: not traceable
        return X @ params["w"]
    return -X @ params["w"]


def per_row_l1(outputs: Any, y: Any) -> Any:
    return jnp.abs(outputs.reshape(outputs.shape[0]) - y)


def summed_l1(outputs: Any, y: Any) -> Any:
    return jnp.abs(outputs.reshape(outputs.shape[0]) - y).sum()


def per_row_xent(outputs: Any, y: Any) -> Any:
    picked = jnp.take_along_axis(outputs, y[:, None], axis=1)[:, 0]
    return jax.nn.logsumexp(outputs, axis=1) - picked


def mlp_params(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "hidden": {"w": 0.5 * rng.standard_normal((6, 8)), "b": np.zeros(8)},
        "out": {"w": 0.5 * rng.standard_normal((8, 3)), "b": np.zeros(3)},
    }


@pytest.fixture(scope="module")
def table() -> Dataset:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((192, 6)).astype(np.float32)
    return Dataset(X, (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0))


def _bits(params: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in params.items()}


async def _fit(backend: Any, data: Dataset, mode: str = "sync", **options: Any) -> Any:
    model = JaxModel(mlp_apply, mlp_params(), input_shape=(6,))
    settings = {"batch_size": 48, "shards": 4, "seed": 5, "mode": mode}
    async with at.Trainer(model, at.optim.adam(1e-2), backend=backend, **settings, **options) as tr:
        await tr.fit(data, epochs=2)
        return tr.params


# -- gradients ----------------------------------------------------------------------------


def test_parameters_are_flattened_with_slashes_in_float32() -> None:
    model = JaxModel(mlp_apply, mlp_params(), input_shape=(6,))
    params = model.init(np.random.default_rng(0))
    assert list(params) == ["hidden/w", "hidden/b", "out/w", "out/b"]
    assert {value.dtype for value in params.values()} == {np.dtype(np.float32)}
    assert (model.n_features, model.n_classes) == (6, 3)


def test_bfloat16_parameters_are_taken_as_floats() -> None:
    """bfloat16 (numpy kind "V", from ml_dtypes) was refused as "not floating point"."""
    params = {"w": jnp.ones((4, 3), jnp.bfloat16), "b": jnp.zeros(3, jnp.float16)}
    model = JaxModel(linear_apply, params, input_shape=(4,))
    flat = model.init(np.random.default_rng(0))
    assert {k: v.dtype for k, v in flat.items()} == {"w": np.float32, "b": np.float32}
    np.testing.assert_array_equal(flat["w"], np.ones((4, 3), np.float32))


def test_gradients_equal_the_numpy_mlp_softmax_and_logistic_models() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((12, 6)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    model = JaxModel(mlp_apply, mlp_params(), input_shape=(6,))
    params = model.init(rng)
    loss, grads = model.loss_and_grad(params, X, y)
    names = {"W0": "hidden/w", "b0": "hidden/b", "W1": "out/w", "b1": "out/b"}
    expected_loss, expected = MLP((6, 8, 3)).loss_and_grad(
        {ours: params[theirs] for ours, theirs in names.items()}, X, y
    )
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for ours, theirs in names.items():
        np.testing.assert_allclose(grads[theirs], expected[ours], rtol=1e-4, atol=1e-5)

    softmax = JaxModel(
        linear_apply, {"w": rng.standard_normal((6, 3)), "b": np.ones(3)}, input_shape=(6,)
    )
    params = softmax.init(rng)
    loss, grads = softmax.loss_and_grad(params, X, y)
    expected_loss, expected = SoftmaxRegression(6, 3).loss_and_grad(
        {"W": params["w"], "b": params["b"]}, X, y
    )
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(grads["w"], expected["W"], rtol=1e-4, atol=1e-5)

    binary = JaxModel(
        linear_apply,
        {"w": rng.standard_normal(6), "b": np.ones(1)},
        "binary_cross_entropy",
        input_shape=(6,),
    )
    params, labels = binary.init(rng), y % 2
    loss, grads = binary.loss_and_grad(params, X, labels)
    expected_loss, expected = LogisticRegression(6).loss_and_grad(params, X, labels)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(grads["w"], expected["w"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["b"], expected["b"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("loss", "outputs"), [("mse", 2), ("huber", 2), (per_row_l1, 1)])
def test_check_gradients_passes_in_float64(loss: Any, outputs: int) -> None:
    rng = np.random.default_rng(2)
    params = {"w": rng.standard_normal((16, 5)), "v": rng.standard_normal((5, outputs))}
    X = rng.standard_normal((6, 1, 4, 4))
    y = 3 * rng.standard_normal((6, outputs) if outputs > 1 else 6)
    with jax.enable_x64(True):
        model = JaxModel(image_apply, params, loss, input_shape=(1, 4, 4))
        check = check_gradients(model, params, X, y)
    assert check.ok, check


# -- bit-identity -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def references(table: Dataset) -> dict[str, dict[str, bytes]]:
    return {mode: _bits(at.run(_fit("inline", table, mode, **kw))) for mode, kw in MODES}


@pytest.mark.parametrize(("name", "workers"), [("thread", 1), ("thread", 2), ("process", 2)])
async def test_bits_equal_on_every_backend_and_worker_count(
    name: str, workers: int, table: Dataset, references: dict[str, dict[str, bytes]]
) -> None:
    backend, _ = at.backends.get_backend(name, workers=workers)
    async with backend:
        for mode, options in MODES:
            assert _bits(await _fit(backend, table, mode, **options)) == references[mode], mode


async def test_a_model_built_in_64_bit_mode_computes_in_it_on_every_backend(
    table: Dataset,
) -> None:
    """jax.enable_x64 is the building thread's setting (jax.config.update the building
    process's): the model records it, so thread and process workers compute as the
    building thread does, with the same bits."""

    async def fit(name: str, workers: int) -> dict[str, bytes]:
        model = JaxModel(scaled_apply, mlp_params(), input_shape=(6,))
        settings = {"batch_size": 48, "shards": 4, "seed": 5, "workers": workers}
        async with at.Trainer(model, at.optim.adam(1e-2), backend=name, **settings) as tr:
            await tr.fit(table, epochs=1)
            return _bits(tr.params)

    with jax.enable_x64(True):
        inline = await fit("inline", 1)
        assert await fit("thread", 2) == inline
        assert await fit("process", 1) == inline
    assert await fit("inline", 1) != inline  # float32 throughout: other bits


async def test_a_jitted_apply_fn_crosses_to_process_workers(table: Dataset) -> None:
    async def fit(name: str) -> dict[str, bytes]:
        model = JaxModel(jitted_apply, mlp_params(), input_shape=(6,))
        settings = {"batch_size": 48, "shards": 4, "seed": 5, "workers": 2}
        async with at.Trainer(model, at.optim.adam(1e-2), backend=name, **settings) as tr:
            await tr.fit(table, epochs=1)
            return _bits(tr.params)

    assert await fit("process") == await fit("inline")


@pytest.mark.dask
async def test_bits_equal_on_dask(
    dask_cluster: Any, table: Dataset, references: dict[str, dict[str, bytes]]
) -> None:
    async with at.backends.DaskBackend(dask_cluster.scheduler_address) as backend:
        for mode, options in MODES:
            assert _bits(await _fit(backend, table, mode, **options)) == references[mode], mode


async def test_models_of_one_apply_fn_share_its_compiled_gradient(table: Dataset) -> None:
    """A new JaxModel of the same function and loss (a model per job, per fit, per search
    trial) reuses the gradient compiled for the first: it is traced once per row shape,
    whatever the number of models and fits, with the same bits as a model of its own."""
    from asynctrain.models import _bridge, _jax

    _jax._compiled.cache_clear()  # what earlier tests compiled in this process
    TRACES.clear()
    params = {"w": np.zeros((6, 3)), "b": np.zeros(3)}

    def traced() -> collections.Counter[tuple[int, ...]]:
        # Besides the abstract probe of a model when it is built (eval_shape, PROBE_ROWS
        # rows): the gradient's traces, per shard shape.
        return collections.Counter(shape for shape in TRACES if shape[0] != _bridge.PROBE_ROWS)

    results, first = [], collections.Counter[tuple[int, ...]]()
    for _ in range(3):
        model = JaxModel(counted_apply, params, input_shape=(6,))
        async with at.Trainer(model, backend="thread", workers=2, batch_size=48, seed=5) as trainer:
            results.append(_bits((await trainer.fit(table, epochs=2)).params))
        first = first or traced()
    assert results[0] == results[1] == results[2]
    # Traced in the first fit, once per shard shape (twice when both worker threads make
    # the first call at once: jit does not hold the second back; seen under load), and
    # never again for the other models and fits.
    assert first
    assert set(first.values()) <= {1, 2}, first
    assert traced() == first


async def test_a_worker_gets_the_model_once_per_fit_and_compiles_its_gradient_once(
    table: Dataset,
) -> None:
    """A process worker receives the model anew at every fit (unpickled once per fit, not
    per step); the gradient it compiled for the first fit serves the next ones. One test,
    one worker: each worker start imports JAX and compiles anew (seconds)."""
    async with ProcessBackend(workers=1) as backend:
        before = await backend.run(_shipping.loads)
        await _fit(backend, table)
        assert await backend.run(_shipping.loads) - before == 1
        after_one = await backend.run(compile_misses)
        await _fit(backend, table)
        await _fit(backend, table)
        assert await backend.run(_shipping.loads) - before == 3
        assert await backend.run(compile_misses) == after_one


async def test_an_unhashable_apply_fn_keeps_its_compiled_functions_with_the_model(
    table: Dataset,
) -> None:
    """A callable object that cannot be a cache key trains all the same, to the bits of
    a plain function's, its jitted functions kept with the model."""
    params = {"w": np.zeros((6, 3)), "b": np.zeros(3)}
    bits = []
    for apply_fn in (linear_apply, UnhashableApply()):
        model = JaxModel(apply_fn, params, input_shape=(6,))
        async with at.Trainer(model, backend="inline", batch_size=48, seed=5) as trainer:
            bits.append(_bits((await trainer.fit(table, epochs=2)).params))
        assert model.predict(model.init(np.random.default_rng(0)), table.X[:4]).shape == (4,)
    assert bits[0] == bits[1]


async def test_checkpoint_and_resume_end_bit_identical(
    tmp_path: Path, table: Dataset, references: dict[str, dict[str, bytes]]
) -> None:
    model = JaxModel(mlp_apply, mlp_params(), input_shape=(6,))
    settings = {"batch_size": 48, "shards": 4, "seed": 5, "backend": "inline"}
    first = at.Trainer(model, at.optim.adam(1e-2), **settings)
    await first.fit(table, epochs=1, checkpoint_dir=tmp_path)
    resumed = at.Trainer(model, at.optim.adam(1e-2), **settings)
    result = await resumed.fit(table, epochs=2, checkpoint_dir=tmp_path, resume=True)
    assert result.steps == 4
    assert _bits(resumed.params) == references["sync"]
    other = JaxModel(linear_apply, {"w": np.zeros((6, 3)), "b": np.zeros(3)}, input_shape=(6,))
    with pytest.raises(at.CheckpointError, match=r"model\.architecture"):
        await at.Trainer(other, **settings).fit(table, checkpoint_dir=tmp_path, resume=True)


def test_predict_and_predict_proba() -> None:
    model = JaxModel(mlp_apply, mlp_params(), input_shape=(6,))
    params = model.init(np.random.default_rng(0))
    X = np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32)
    labels, proba = model.predict(params, X), model.predict_proba(params, X)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, proba.argmax(axis=1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: JaxModel(linear_apply, {}, input_shape=(6,)), "holds no arrays"),
        (
            lambda: JaxModel(
                linear_apply, {"w": np.zeros((6, 3), np.int32), "b": np.zeros(3)}, input_shape=(6,)
            ),
            "parameter 'w' has dtype int32",
        ),
        (lambda: JaxModel(mlp_apply, mlp_params(), "hinge", input_shape=(6,)), "unknown loss"),
        (
            lambda: JaxModel(
                linear_apply, {"w": np.zeros((6, 1)), "b": np.zeros(1)}, summed_l1, input_shape=(6,)
            ),
            r"shape \(2,\) for 2 rows",
        ),
        (
            lambda: JaxModel(branching_apply, {"w": np.zeros((6, 3))}, input_shape=(6,)),
            "cannot be traced by JAX",
        ),
        (lambda: JaxModel(mlp_apply, mlp_params(), input_shape=(5,)), "cannot be traced"),
        (
            lambda: JaxModel(
                linear_apply, {"w": np.zeros((6, 3)), "b": [{"x": np.zeros(3)}]}, input_shape=(6,)
            ),
            r"parameter 'b' is a list of arrays or dicts.*\{'b': \{'0': \.\.\., '1'",
        ),
        (
            lambda: JaxModel(
                linear_apply,
                {"w": np.zeros((6, 3)), "b": (np.zeros(3), np.zeros(2))},
                input_shape=(6,),
            ),
            "parameter 'b' is a tuple of arrays or dicts",
        ),
        (
            lambda: JaxModel(mlp_apply, mlp_params(), per_row_xent, n_classes=4, input_shape=(6,)),
            r"n_classes=4 with a callable loss needs outputs of shape \(n, 4\)",
        ),
    ],
)
def test_bad_models_are_refused_at_construction(build: Any, message: str) -> None:
    with pytest.raises(at.ConfigError, match=message):
        build()


async def test_rows_of_the_wrong_shape_fail_before_any_step(table: Dataset) -> None:
    model = JaxModel(mlp_apply, mlp_params(), input_shape=(6,))
    async with at.Trainer(model, backend="inline", batch_size=48) as trainer:
        with pytest.raises(at.DataError, match=r"rows of shape \(5,\)"):
            await trainer.fit((table.X[:, :5], table.y))
        assert trainer.state.step == 0
