"""Scratch workspaces (``asynctrain.models._scratch``) and the MLP that computes in them:
blocks of rows give the whole batch's gradient, concurrent callers never share scratch
memory, a call allocates no hidden-layer arrays, and the model pickles as before."""

from __future__ import annotations

import pickle
import threading
import tracemalloc
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse

from asynctrain.models import MLP, _mlp, check_gradients
from asynctrain.models._layers import activate_
from asynctrain.models._scratch import Workspace, borrowed

Array = npt.NDArray[Any]


def test_workspace_reuses_memory_by_name_and_dtype() -> None:
    work = Workspace()
    a = work.array("h", (4, 8), np.float32)
    smaller = work.array("h", (2, 8), np.float32)
    assert np.shares_memory(a, smaller)
    assert smaller.flags.c_contiguous
    assert not np.shares_memory(a, work.array("h", (4, 8), np.float64))
    assert not np.shares_memory(a, work.array("g", (4, 8), np.float32))
    bigger = work.array("h", (8, 8), np.float32)  # outgrows the old memory: new memory
    assert bigger.shape == (8, 8)
    assert not np.shares_memory(a, bigger)
    assert "arrays=3" in repr(work)


def test_filled_arrays_hold_their_value_and_are_read_only() -> None:
    work = Workspace()
    ones = work.filled(1.0, (5,), np.float32)
    assert ones.dtype == np.float32
    assert ones.tolist() == [1.0] * 5
    assert not ones.flags.writeable
    zeros = work.filled(0.0, (3, 4), np.float64)
    assert zeros.shape == (3, 4)
    assert not zeros.any()
    assert work.filled(1.0, (9,), np.float32).tolist() == [1.0] * 9  # grown, still ones


def test_relu_against_scratch_zeros_gives_the_bits_of_the_scalar_form() -> None:
    special = [np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, -1.0, 1.0, 1e-45, -1e-45]
    for dtype in (np.float32, np.float64):
        z = np.concatenate([special, np.random.default_rng(8).standard_normal(246)])
        z = z.astype(dtype).reshape(4, 64)
        expected = np.maximum(z, 0)  # the oracle: numpy's relu against the scalar 0
        activate_(z, "relu", Workspace())
        assert z.tobytes() == expected.tobytes()


def test_concurrent_borrowers_never_share_a_workspace() -> None:
    with borrowed() as first, borrowed() as second:
        assert first is not second
    with borrowed() as again:
        assert again is first or again is second  # given back, lent again
    holders = 4
    barrier, held = threading.Barrier(holders), []

    def hold() -> None:
        with borrowed() as work:
            held.append(work)
            barrier.wait(timeout=30)  # every thread holds its workspace at once

    threads = [threading.Thread(target=hold) for _ in range(holders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len({id(work) for work in held}) == holders


# -- the MLP in blocks of rows ---------------------------------------------------------

# 1,000 hidden units in float64, with blocks bounded to 512 KiB (:func:`small_blocks`):
# blocks of 64 rows, so 150 rows take three blocks, the last one short.
N_WIDE = 150
WIDE = [
    MLP((4, 1000, 3), dtype=np.float64, l2=0.01),
    MLP((4, 1000, 6, 3), activation="tanh", dtype=np.float64),
    MLP((4, 1000, 2), task="regression", dtype=np.float64, l2=0.01),
    MLP((4, 1000, 1), activation="tanh", task="regression", dtype=np.float64),
]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 64 rows for :data:`WIDE`: several blocks for a few rows."""
    monkeypatch.setattr(_mlp, "_BLOCK_BYTES", 2**19)


def _data(model: MLP, n: int, seed: int = 0) -> tuple[Array, Array, Array]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, model.n_features)).astype(model.dtype)
    weight = rng.uniform(0.5, 2.0, n)
    if model.task == "classification":
        return X, rng.integers(0, model.n_outputs, n), weight
    shape = (n,) if model.n_outputs == 1 else (n, model.n_outputs)
    return X, rng.standard_normal(shape), weight


def _ids(model: MLP) -> str:
    return f"{model.sizes}-{model.activation}-{model.task}"


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("model", WIDE, ids=_ids)
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_over_several_blocks_matches_finite_differences(
    model: MLP, weighted: bool
) -> None:
    X, y, weight = _data(model, N_WIDE)
    params = model.init(np.random.default_rng(1))
    result = check_gradients(model, params, X, y, sample_weight=weight if weighted else None)
    assert result.ok, result


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("model", WIDE, ids=_ids)
def test_blocks_add_up_to_the_batch(model: MLP) -> None:
    X, y, weight = _data(model, N_WIDE)
    params = model.init(np.random.default_rng(1))
    loss, grads = model.loss_and_grad(params, X, y, sample_weight=weight)
    parts = [
        model.loss_and_grad(params, X[rows], y[rows], sample_weight=weight[rows])
        for rows in (slice(0, 7), slice(7, 100), slice(100, N_WIDE))
    ]
    assert loss == pytest.approx(sum(part[0] for part in parts), rel=1e-12)
    for key in params:
        total = sum(part[1][key] for part in parts)
        np.testing.assert_allclose(grads[key], total, rtol=1e-10, atol=1e-12)


@pytest.mark.usefixtures("small_blocks")
def test_sparse_input_over_several_blocks_matches_dense() -> None:
    model = MLP((30, 1000, 3), dtype=np.float64)
    rng = np.random.default_rng(2)
    dense = rng.standard_normal((N_WIDE, 30)) * (rng.random((N_WIDE, 30)) < 0.2)
    y = rng.integers(0, 3, N_WIDE)
    params = model.init(rng)
    loss, grads = model.loss_and_grad(params, dense, y)
    sparse_loss, sparse_grads = model.loss_and_grad(params, scipy.sparse.csr_array(dense), y)
    assert sparse_loss == pytest.approx(loss, rel=1e-12)
    for key in params:
        np.testing.assert_allclose(sparse_grads[key], grads[key], rtol=1e-10, atol=1e-12)


def _reference_shard() -> tuple[MLP, dict[str, Array], Array, Array]:
    """The reference problem's model (128-256-10, float32) and one 2,048-row shard."""
    model = MLP((128, 256, 10), initializer="uniform")
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2048, 128), dtype=np.float32)
    return model, model.init(rng), X, rng.integers(0, 10, 2048)


def test_threads_computing_at_once_get_the_bits_of_one_thread() -> None:
    model, params, X, y = _reference_shard()
    shards = [(X[i::4], y[i::4]) for i in range(4)]
    alone = [model.loss_and_grad(params, Xs, ys) for Xs, ys in shards]
    results: dict[int, list[tuple[float, dict[str, Array]]]] = {}

    def compute(i: int) -> None:
        results[i] = [model.loss_and_grad(params, *shards[i]) for _ in range(10)]

    threads = [threading.Thread(target=compute, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for i, (loss, grads) in enumerate(alone):
        for other_loss, other_grads in results[i]:
            assert other_loss == loss
            assert all(other_grads[k].tobytes() == grads[k].tobytes() for k in grads)


def test_a_call_allocates_no_hidden_layer_arrays() -> None:
    model, params, X, y = _reference_shard()
    model.loss_and_grad(params, X, y)  # the first call fills this thread's workspace
    tracemalloc.start()
    try:
        model.loss_and_grad(params, X, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    hidden = X.shape[0] * 256 * 4  # one (rows, hidden) float32 array: 2 MB
    gradients = sum(value.nbytes for value in params.values())
    assert peak < 2 * gradients + hidden // 8, (peak, gradients)


def test_blocks_bound_memory_and_a_shard_is_one_block() -> None:
    model, _, X, _ = _reference_shard()
    assert model._block_rows(len(X)) == len(X)  # few, long numpy calls: see _mlp.py
    rows = model._block_rows(100_000)
    assert rows * 256 * 4 <= 2**23  # a hidden block within the scratch bound
    assert -(-100_000 // rows) * rows - 100_000 < 32 * 13  # as even as multiples of 32 allow
    assert WIDE[0]._block_rows(2500) == 864  # 1,024 at most: 864, 864, 772


def test_the_model_pickles_as_before_it_computed() -> None:
    model, params, X, y = _reference_shard()
    before = pickle.dumps(model)
    model.loss_and_grad(params, X, y)
    assert pickle.dumps(model) == before
    assert pickle.loads(before) == model


def _plain_numpy_gradient(
    params: dict[str, Array], X: Array, y: Array
) -> tuple[float, dict[str, Array]]:
    """The oracle: loss and gradient of a one-hidden-layer relu MLP with softmax
    cross-entropy, in float64 plain numpy over all rows at once."""
    W0, b0, W1, b1 = (params[k].astype(np.float64) for k in ("W0", "b0", "W1", "b1"))
    x = X.astype(np.float64)
    h = np.maximum(x @ W0 + b0, 0)
    z = h @ W1 + b1
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    rows = np.arange(len(y))
    delta = np.exp(log_p)
    delta[rows, y] -= 1
    below = (delta @ W1.T) * (h > 0)
    grads = {"W0": x.T @ below, "b0": below.sum(0), "W1": h.T @ delta, "b1": delta.sum(0)}
    return float(-log_p[rows, y].sum()), grads


def test_each_layer_product_of_a_shard_is_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two worker threads wait on each other's GIL at each numpy call of a shard, so a
    layer's product is one call, not row slices (see _mlp.py); the gradient stays the
    plain numpy one."""
    model, params, X, y = _reference_shard()
    calls: list[tuple[int, ...]] = []
    matmul = np.matmul

    def counted(a: Array, b: Array, **kwargs: Any) -> Array:
        calls.append((*a.shape, b.shape[-1]))
        return matmul(a, b, **kwargs)

    monkeypatch.setattr(_mlp.np, "matmul", counted)
    loss, grads = model.loss_and_grad(params, X, y)
    # forward: two products; backward: each layer's weight and bias gradients, one delta
    assert len(calls) == 7, calls
    assert all(2048 in shape for shape in calls)  # every product spans the whole shard
    expected_loss, expected = _plain_numpy_gradient(params, X, y)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for key, value in expected.items():
        np.testing.assert_allclose(grads[key], value, rtol=1e-4, atol=1e-3)


def test_a_weight_gradient_is_written_or_added_whole() -> None:
    rng = np.random.default_rng(6)
    h = rng.standard_normal((2048, 256), dtype=np.float32)
    delta = rng.standard_normal((2048, 10), dtype=np.float32)
    total = np.full((256, 10), 7.0, np.float32)
    _mlp._product_into(total, h, delta, Workspace(), add=False)
    np.testing.assert_allclose(total, h.T.astype(np.float64) @ delta, rtol=1e-4, atol=1e-3)
    _mlp._product_into(total, h, delta, Workspace(), add=True)
    np.testing.assert_allclose(total, 2 * (h.T.astype(np.float64) @ delta), rtol=1e-4, atol=2e-3)
    sparse = scipy.sparse.csr_array(h * (rng.random(h.shape) < 0.1))
    _mlp._product_into(total, sparse, delta, Workspace(), add=False)
    np.testing.assert_allclose(total, sparse.toarray().T @ delta, rtol=1e-4, atol=1e-3)


def _whole_pass_proba(model: MLP, params: dict[str, Array], X: Array) -> Array:
    """Softmax probabilities of every row from one pass of plain numpy over all of ``X``
    (the computation before blocks): each layer's product, bias, activation, then the
    stable softmax, in the order the model computes them."""
    keys = [(f"W{i}", f"b{i}") for i in range(len(model.sizes) - 1)]
    z = X
    for i, (w, b) in enumerate(keys):
        z = z @ params[w]
        z += params[b]
        if i < len(keys) - 1:
            z = np.maximum(z, 0, out=z) if model.activation == "relu" else np.tanh(z, out=z)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("model", [m for m in WIDE if m.task == "classification"], ids=_ids)
def test_predict_proba_over_several_blocks_is_the_whole_pass(model: MLP) -> None:
    """Equal to the whole pass to float64 rounding, not bit for bit: numpy's OpenBLAS
    gives a row of ``A @ W`` other last bits in a product of other rows (with two
    threads, rows 64-149 of a (150, 1000) @ (1000, 6) product differ from those of
    ``A[64:] @ W``), so no split into blocks can promise the whole pass's bits. It does
    promise predict's: the same blocks, so the argmax is predict's labels exactly."""
    X, _, _ = _data(model, N_WIDE)  # 150 rows: blocks of 64, 64 and 22
    assert N_WIDE % model._block_rows(N_WIDE) != 0
    params = model.init(np.random.default_rng(1))
    proba = model.predict_proba(params, X)
    assert proba.dtype == model.dtype
    np.testing.assert_allclose(proba, _whole_pass_proba(model, params, X), rtol=1e-13, atol=0)
    np.testing.assert_array_equal(proba.argmax(axis=1), model.predict(params, X))


def test_predict_proba_allocates_no_hidden_layer_arrays() -> None:
    # It ran the whole forward pass at once: a (rows, hidden) array per layer, 8 MB for
    # the 8,192 rows here, where predict borrows one block of scratch memory.
    model, params, _, _ = _reference_shard()
    X = np.random.default_rng(4).standard_normal((8192 + 77, 128), dtype=np.float32)
    model.predict_proba(params, X)  # the first call fills this thread's workspace
    tracemalloc.start()
    try:
        proba = model.predict_proba(params, X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    hidden = X.shape[0] * 256 * 4
    assert peak < proba.nbytes + hidden // 8, (peak, proba.nbytes)
