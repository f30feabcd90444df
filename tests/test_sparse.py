"""scipy.sparse CSR input: kept sparse from Dataset to the models' products, on every
backend, with the dense run of the same data as the oracle."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

import asynctrain as at
from asynctrain import _sparse
from asynctrain._exceptions import DataError, DataTypeError
from asynctrain._inputs import prepare
from asynctrain.data import Dataset, _shared
from asynctrain.models import (
    MLP,
    LinearRegression,
    LogisticRegression,
    SoftmaxRegression,
    check_data,
    check_gradients,
    check_inputs,
)

N, D = 600, 40


def _csr(n: int = N, d: int = D, density: float = 0.1, seed: int = 0, **kw: Any) -> Any:
    return sp.random(n, d, density=density, format="csr", random_state=seed, **kw)


def _problem(name: str, dtype: Any = np.float64) -> tuple[Any, Any, np.ndarray]:
    """A model and a CSR X with its targets (a linear rule, so training learns)."""
    rng = np.random.default_rng(1)
    X = _csr(dtype=np.float64)
    scores = X @ rng.standard_normal((D, 3))
    models = {
        "linear": (LinearRegression(D, dtype=dtype), scores[:, 0]),
        "logistic": (LogisticRegression(D, l2=0.01, dtype=dtype), (scores[:, 0] > 0) * 1),
        "softmax": (SoftmaxRegression(D, 3, dtype=dtype), scores.argmax(axis=1)),
        "mlp": (MLP((D, 8, 3), dtype=dtype, l2=0.01), scores.argmax(axis=1)),
    }
    model, y = models[name]
    return model, X, np.asarray(y)


MODELS = ["linear", "logistic", "softmax", "mlp"]


# -- Dataset -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [sp.csr_matrix, sp.csr_array])
def test_dataset_keeps_csr_of_its_kind_without_copying(kind: Any) -> None:
    X = kind(_csr(dtype=np.float32))
    data = Dataset(X, np.zeros(N))
    assert data.sparse
    assert type(data.X) is kind
    assert np.shares_memory(data.X.data, X.data)
    assert np.shares_memory(data.X.indices, X.indices)
    assert data.n_features == D
    assert data.n_samples == N
    assert data.dtype == np.float32
    assert not data.X.data.flags.writeable
    assert X.data.flags.writeable
    assert repr(data) == f"<Dataset n_samples={N} n_features={D} dtype=float32 sparse nnz={X.nnz}>"


@pytest.mark.parametrize("fmt", ["csc", "coo", "lil", "dok", "bsr"])
def test_other_sparse_formats_are_converted_to_csr_once(fmt: str) -> None:
    X = _csr().asformat(fmt)
    data = Dataset(X, np.zeros(N), dtype=np.float32)
    assert data.X.format == "csr"
    assert data.X.dtype == np.float32
    np.testing.assert_array_equal(data.X.toarray(), X.toarray().astype(np.float32))


def test_dtype_and_index_conversion_never_densify() -> None:
    X = _csr(dtype=np.float64)
    X.indices, X.indptr = X.indices.astype(np.int64), X.indptr.astype(np.int64)
    data = Dataset(X, np.zeros(N), dtype=np.float32)
    assert data.X.dtype == np.float32
    assert data.X.indices.dtype == np.int32
    assert data.X.nnz == X.nnz
    ints = Dataset(sp.csr_array(np.eye(3, dtype=np.int8)), [0, 1, 0])
    assert ints.X.dtype == np.float32
    assert ints.sparse


@pytest.mark.parametrize(
    ("X", "y", "error", "match"),
    [
        (_csr(n=5, d=4, density=1.0, dtype=np.complex128), np.zeros(5), DataTypeError, "complex"),
        (_csr(n=5, d=4), np.zeros(6), DataError, "X has 5 rows but y has 6"),
        (sp.csr_array((0, 4)), np.zeros(0), DataError, "at least one row"),
        (sp.csr_array((3, 0)), np.zeros(3), DataError, "at least one row and one column"),
        (sp.coo_array(np.ones(3)), np.zeros(3), DataError, "must be 2-D"),
    ],
)
def test_bad_sparse_input_is_refused(X: Any, y: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Dataset(X, y)


def _corrupt(kind: Any, data: list[float], indices: list[int], indptr: list[int]) -> Any:
    """A matrix of shape (3, 3) around index arrays scipy does not bound-check."""
    arrays = (np.array(data), np.array(indices, np.int32), np.array(indptr, np.int32))
    return kind(arrays, shape=(3, 3))


@pytest.mark.parametrize(
    ("X", "match"),
    [
        (_corrupt(sp.csr_array, [1, 2], [0, 1000], [0, 1, 2, 2]), "column index 1000 in row 1"),
        (_corrupt(sp.csr_matrix, [1, 2], [-1, 0], [0, 1, 2, 2]), "column index -1 in row 0"),
        (_corrupt(sp.csc_array, [1, 2], [0, 3], [0, 0, 1, 2]), "row index 3 in column 2"),
        (_corrupt(sp.csr_array, [1, 2], [0, 1], [0, 2, 1, 2]), "decrease at row 1"),
    ],
)
def test_index_arrays_out_of_the_shape_are_refused_before_any_product(X: Any, match: str) -> None:
    # scipy builds these without complaint; a product over them read out of bounds (a
    # segmentation fault in fit, or wrong numbers)
    with pytest.raises(DataError, match=match):
        Dataset(X, [0, 1, 0])
    with pytest.raises(DataError, match=match):
        check_inputs(LogisticRegression(3), X)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_stored_value_is_named_by_row_and_column(bad: float) -> None:
    X = sp.csr_array(np.array([[1.0, 0, 0], [0, 0, 2.0], [0, 3.0, 4.0]]))
    X.data[2] = bad  # row 2, column 1
    with pytest.raises(DataError, match=r"non-finite value \((nan|inf)\) at row 2, column 1"):
        Dataset(X, [0, 1, 0])
    with pytest.raises(DataError, match=r"row 1, column 2 \(after conversion from float64"):
        Dataset(sp.csr_array(np.array([[1.0, 0, 0], [0, 0, 1e300]])), [0, 1], dtype=np.float32)


def test_subset_split_shared_and_pickle_stay_sparse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shared, "MIN_BYTES", 1024)  # share arrays from 1 KiB
    X = _csr(n=5000, d=100, density=0.02, dtype=np.float32)  # 40 KB of values
    data = Dataset(X, np.arange(5000) % 2)
    rows = np.array([3, 1, 3, 4999])
    part = data.subset(rows)
    assert part.sparse
    assert not part.shared
    assert data.subset(np.arange(0, 5000, 2)).shared
    np.testing.assert_array_equal(part.X.toarray(), X[rows].toarray())
    train, val = data.split(0.25)
    assert train.sparse
    assert val.sparse
    assert len(train) + len(val) == 5000
    shared = data.to_shared()
    assert shared.shared
    assert not data.shared
    assert shared.to_shared() is shared
    assert (shared.X != X).nnz == 0
    copy = pickle.loads(pickle.dumps(part))
    assert copy.sparse
    assert not copy.X.data.flags.writeable
    assert (copy.X != part.X).nnz == 0


# -- prepare and the models' checks --------------------------------------------------------


class DenseOnly:
    """A user model without ``accepts_sparse``."""

    n_features, n_classes, dtype = D, 2, np.dtype(np.float32)


def test_prepare_converts_to_the_models_dtype_and_checks_the_model() -> None:
    X = _csr(dtype=np.float64)
    data = prepare(LogisticRegression(D), (X, np.arange(N) % 2))
    assert data.sparse
    assert data.dtype == np.float32
    with pytest.raises(DataError, match=f"dataset has {D} features but the model expects 7"):
        prepare(LogisticRegression(7), (X, np.arange(N) % 2))
    with pytest.raises(DataTypeError, match="DenseOnly cannot compute on sparse input"):
        prepare(DenseOnly(), (X, np.arange(N) % 2))  # type: ignore[arg-type]
    with pytest.raises(DataTypeError, match=r"X\.toarray"):
        check_data(DenseOnly(), X, np.arange(N) % 2)  # type: ignore[arg-type]


def test_check_inputs_keeps_csr_and_refuses_bad_input() -> None:
    model = LogisticRegression(D)
    X = check_inputs(model, _csr(dtype=np.float64))
    assert sp.issparse(X)
    assert X.dtype == np.float32
    with pytest.raises(DataError, match="expects 40"):
        check_inputs(model, _csr(d=3))
    bad = _csr()
    bad.data[0] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        check_inputs(model, bad)


# -- the models ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_gradients_on_csr_match_finite_differences(name: str) -> None:
    model, X, y = _problem(name)
    rows = X[:12]
    params = model.init(np.random.default_rng(0))
    params = {k: v + 0.1 for k, v in params.items()}
    result = check_gradients(model, params, rows, y[:12])
    assert result.ok, result


@pytest.mark.parametrize("name", MODELS)
def test_csr_loss_gradient_and_predictions_equal_the_dense_ones(name: str) -> None:
    model, X, y = _problem(name)
    params = {k: v + 0.05 for k, v in model.init(np.random.default_rng(0)).items()}
    loss, grads = model.loss_and_grad(params, X, y)
    dense_loss, dense_grads = model.loss_and_grad(params, X.toarray(), y)
    assert loss == pytest.approx(dense_loss, rel=1e-12)
    for key in grads:
        assert isinstance(grads[key], np.ndarray)
        np.testing.assert_allclose(grads[key], dense_grads[key], rtol=1e-10, atol=1e-12)
    predicted, dense_predicted = model.predict(params, X), model.predict(params, X.toarray())
    np.testing.assert_allclose(predicted, dense_predicted, rtol=1e-12)  # labels: exact
    if hasattr(model, "predict_proba") and name != "linear":
        np.testing.assert_allclose(
            model.predict_proba(params, sp.csr_matrix(X)), model.predict_proba(params, X.toarray())
        )


# -- training --------------------------------------------------------------------------------


async def _fit(
    model: Any, data: Any, *, backend: Any = "inline", metrics: tuple[str, ...] = (), **kw: Any
) -> Any:
    async with at.Trainer(
        model, optimizer=at.optim.sgd(0.1), backend=backend, batch_size=64, seed=3, **kw
    ) as trainer:
        result = await trainer.fit(data, epochs=2, validation=data, metrics=metrics)
        return trainer.params, result


@pytest.mark.parametrize("name", MODELS)
async def test_training_on_csr_matches_the_dense_run(name: str) -> None:
    model, X, y = _problem(name, dtype=np.float32)
    sparse_params, sparse_result = await _fit(model, (X, y), backend="thread")
    dense_params, dense_result = await _fit(model, (X.toarray(), y), backend="thread")
    for key in dense_params:
        np.testing.assert_allclose(sparse_params[key], dense_params[key], atol=1e-5, rtol=0)
    assert sparse_result.history[-1].val_loss == pytest.approx(
        dense_result.history[-1].val_loss, abs=1e-5
    )


@pytest.mark.parametrize("mode", ["sync", "local"])
async def test_csr_training_is_bit_identical_across_backends_and_workers(mode: str) -> None:
    model, X, y = _problem("softmax", dtype=np.float32)
    modes = {"sync": at.modes.Sync(), "local": at.modes.Local(steps=2)}
    runs = []
    for backend in [
        at.backends.InlineBackend(),
        at.backends.ThreadBackend(1),
        at.backends.ThreadBackend(2),
        at.backends.ProcessBackend(1),
        at.backends.ProcessBackend(2),
    ]:
        async with backend:
            params, result = await _fit(
                model, (X, y), backend=backend, shards=4, mode=modes[mode], metrics=("f1",)
            )
        runs.append((params, result.history[-1].val_loss, result.history[-1].metrics))
    for params, loss, metrics in runs[1:]:
        assert loss == runs[0][1]
        assert metrics == runs[0][2]
        for key in params:
            np.testing.assert_array_equal(params[key], runs[0][0][key])


async def test_predict_takes_csr() -> None:
    model, X, y = _problem("logistic", dtype=np.float32)
    async with at.Trainer(model, backend="inline", batch_size=64) as trainer:
        await trainer.fit((X, y), epochs=1)
        np.testing.assert_array_equal(trainer.predict(X), trainer.predict(X.toarray()))


async def test_a_stream_of_sparse_batches_is_refused() -> None:
    model, X, y = _problem("logistic", dtype=np.float32)

    async def batches() -> Any:
        yield X[:100], y[:100]

    async with at.Trainer(model, backend="inline", batch_size=64) as trainer:
        with pytest.raises(DataTypeError, match="stream batches are dense arrays"):
            await trainer.fit_stream(batches())


def test_pack_and_unpack_rebuild_csr_around_the_same_arrays() -> None:
    X = Dataset(_csr(), np.zeros(N), dtype=np.float32).X
    arrays = _sparse.pack(X)
    assert sorted(arrays) == ["X.data", "X.indices", "X.indptr", "X.shape"]
    rebuilt = _sparse.unpack(arrays)
    assert rebuilt.data is arrays["X.data"] or np.shares_memory(rebuilt.data, X.data)
    assert np.shares_memory(rebuilt.indices, X.indices)
    assert rebuilt.shape == X.shape
    np.testing.assert_array_equal(_sparse.take(rebuilt, range(3, 9)).toarray(), X[3:9].toarray())


def _same_csr(got: Any, want: Any) -> None:
    """Same kind, shape and the very same three arrays (values, dtypes, order)."""
    assert type(got) is type(want)
    assert got.shape == want.shape
    for part in ("data", "indices", "indptr"):
        a, b = getattr(got, part), getattr(want, part)
        assert a.dtype == b.dtype, part
        np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("kind", [sp.csr_array, sp.csr_matrix])
@pytest.mark.parametrize(
    "rows",
    [
        np.array([5, 0, 599, 5, 17]),  # unordered, repeated, both ends
        np.arange(0, N, 7, dtype=np.int32),
        np.array([], dtype=np.int64),
        np.array([-1, 3]),  # negative: scipy's meaning (from the end)
        range(3, 9),
        range(0, N),
        range(7, 7),
        range(0, 10, 3),
    ],
    ids=repr,
)
def test_take_gives_scipys_rows_exactly(kind: Any, rows: Any) -> None:
    X = kind(Dataset(_csr(), np.zeros(N), dtype=np.float32).X)
    want = X[rows] if not isinstance(rows, range) else X[rows.start : rows.stop : rows.step]
    _same_csr(_sparse.take(X, rows), want)
    packed = _sparse.take_packed(_sparse.pack(X, "F"), rows, "F", checked=True)
    _same_csr(packed, sp.csr_array(want))  # rebuilt from shared arrays: a csr_array
    assert _sparse.indices_checked(packed)


def test_take_refuses_rows_outside_the_matrix_as_scipy_does() -> None:
    X = Dataset(_csr(), np.zeros(N), dtype=np.float32).X
    with pytest.raises(IndexError):
        _sparse.take(X, np.array([0, N]))
    with pytest.raises(IndexError):
        _sparse.take_packed(_sparse.pack(X), np.array([N]))


@pytest.mark.parametrize("transpose", [False, True], ids=["X@v", "X.T@d"])
@pytest.mark.parametrize("shape", [(), (1,), (3,)], ids=["1-D", "n,1", "n,3"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_products_have_scipys_bits(transpose: bool, shape: Any, dtype: Any) -> None:
    X = Dataset(_csr(density=0.3), np.zeros(N), dtype=dtype).X
    v = np.random.default_rng(2).standard_normal(((N if transpose else D), *shape)).astype(dtype)
    got = _sparse.rmatmul(X, v) if transpose else _sparse.matmul(X, v)
    want = X.T @ v if transpose else X @ v
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want, strict=True)


def test_sparse_products_of_other_dtypes_and_layouts_go_through_scipy() -> None:
    X = Dataset(_csr(), np.zeros(N), dtype=np.float32).X
    v64 = np.random.default_rng(3).standard_normal(D)
    np.testing.assert_array_equal(_sparse.matmul(X, v64), X @ v64, strict=True)
    d = np.asfortranarray(np.random.default_rng(4).standard_normal((N, 2)).astype(np.float32))
    np.testing.assert_array_equal(_sparse.rmatmul(X, d), X.T @ d, strict=True)


def test_without_scipys_private_kernels_gathers_and_products_keep_their_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scipy without ``_sparsetools`` (private) takes the public indexing and operators."""
    X = Dataset(_csr(density=0.3), np.zeros(N), dtype=np.float32).X
    rows = np.array([5, 0, 599, 5, 17])
    v = np.random.default_rng(5).standard_normal(D).astype(np.float32)
    d = np.random.default_rng(6).standard_normal((N, 3)).astype(np.float32)
    fast = (_sparse.take(X, rows), _sparse.matmul(X, v), _sparse.rmatmul(X, d))
    monkeypatch.delattr(sp, "_sparsetools")  # import fails: neither attribute nor module
    monkeypatch.setitem(sys.modules, "scipy.sparse._sparsetools", None)
    _sparse._kernel.cache_clear()
    try:
        assert _sparse._kernel("csr_row_index") is None
        _same_csr(_sparse.take(X, rows), fast[0])
        np.testing.assert_array_equal(_sparse.matmul(X, v), fast[1], strict=True)
        np.testing.assert_array_equal(_sparse.rmatmul(X, d), fast[2], strict=True)
    finally:
        _sparse._kernel.cache_clear()


def test_scipy_is_imported_only_for_sparse_input() -> None:
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import asynctrain as at
        from asynctrain.models import LogisticRegression
        X = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
        at.run(at.fit(LogisticRegression(3), (X, (X[:, 0] > 0) * 1), epochs=1))
        print(sorted(m for m in sys.modules if m.split(".")[0] == "scipy"))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.dask
async def test_csr_training_on_dask_gives_the_inline_bits(dask_cluster: Any) -> None:
    model, X, y = _problem("logistic", dtype=np.float32)
    inline, _ = await _fit(model, (X, y), shards=2)
    async with at.backends.DaskBackend(dask_cluster.scheduler_address) as backend:
        params, _ = await _fit(model, (X, y), backend=backend, shards=2)
    for key in params:
        np.testing.assert_array_equal(params[key], inline[key])


MEMORY_SCRIPT = """
import os, sys, threading
import numpy as np
import scipy.sparse as sp
import asynctrain as at
from asynctrain.models import LogisticRegression


def tree_memory():
    # (sum of RSS, sum of PSS) in bytes over this process and all its descendants
    rss = pss = 0
    stack = [os.getpid()]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as handle:
                    stack.extend(int(child) for child in handle.read().split())
        except (OSError, ValueError):
            continue
    return rss, pss


peak = [0, 0]
done = threading.Event()


def sample():
    while not done.wait(0.005):
        rss, pss = tree_memory()
        peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)


def run():
    base = tree_memory()
    threading.Thread(target=sample, daemon=True).start()
    n, d, per_row = 200_000, 100_000, 50  # density 0.05 %
    rng = np.random.default_rng(0)
    indptr = np.arange(0, n * per_row + 1, per_row, dtype=np.int32)
    indices = rng.integers(0, d, n * per_row, dtype=np.int32)
    values = rng.random(n * per_row, dtype=np.float32)
    X = sp.csr_array((values, indices, indptr), shape=(n, d))
    y = (X @ rng.standard_normal(d).astype(np.float32) > 0).astype(np.int64)
    del values, indices, indptr
    at.run(main(X, y, d))
    done.set()
    print((peak[0] - base[0]) / 2**20, (peak[1] - base[1]) / 2**20, X.data.nbytes * 2 / 2**20)


async def main(X, y, d):
    async with at.Trainer(
        LogisticRegression(d), backend=at.backends.ProcessBackend(2), batch_size=4000, shards=2
    ) as trainer:
        result = await trainer.fit((X, y), epochs=1)
        assert np.isfinite(result.history[-1].loss)


if __name__ == "__main__":
    run()
"""


@pytest.mark.slow
def test_a_large_csr_matrix_trains_in_bounded_memory(tmp_path: Any) -> None:
    """200,000 x 100,000 at 0.05 % density (10M stored values, 80 MB as CSR; 80 GB dense)
    trains on two worker processes with the whole process tree's peak memory growth
    under 600 MB, counted as the sum of RSS (shared pages counted in every process that
    touches them) and as PSS."""
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=300
    )
    rss_mb, pss_mb, data_mb = (float(v) for v in out.stdout.split())
    assert rss_mb < 600, out.stdout
    assert pss_mb < 600, out.stdout
    assert data_mb < pss_mb  # the data was there: the sampler saw it


@pytest.mark.slow
def test_the_sparse_bench_suite_produces_its_figures() -> None:
    from benchmarks import _sparse as suite
    from benchmarks._scale import smoke

    with smoke():
        figures = at.run(suite.run(quick=True))
    assert [f.name for f in figures] == [
        f"sparse/rcv1-logreg/{b}-{w}w" for b in ("thread", "process") for w in (1, 2)
    ]
    for figure in figures:
        assert figure.target == (">= 1.0" if figure.name.endswith("1w") else ">= 1.7")
        accuracy = figure.details["accuracy_asynctrain"][0]
        assert accuracy >= figure.details["accuracy_sklearn"][0] - suite.TOLERANCE or (
            figure.skipped
        )


def test_a_torch_model_refuses_sparse_input_before_work_starts() -> None:
    torch = pytest.importorskip("torch")
    from asynctrain.models import TorchModel

    model = TorchModel(torch.nn.Linear(D, 2))
    with pytest.raises(DataTypeError, match="TorchModel cannot compute on sparse input"):
        prepare(model, (_csr(), np.arange(N) % 2))


async def test_the_process_backend_maps_a_shared_csr_dataset_without_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asynctrain._engine._context import arrays_of

    monkeypatch.setattr(_shared, "MIN_BYTES", 1024)
    data = Dataset(_csr(n=5000, d=100, density=0.02), np.arange(5000) % 2).to_shared()
    async with at.backends.ProcessBackend(1) as backend:
        handle = await backend.share(arrays_of(data))
        try:
            paths = {f.key: f.path for f in handle.fields}
            assert all(paths[f"X.{part}"] for part in ("data", "indices", "indptr"))
            rows = np.array([4999, 0, 17])
            gathered = await backend.run(_gather, handle, rows)
            np.testing.assert_array_equal(gathered.toarray(), data.X[rows].toarray())
        finally:
            await backend.release(handle)


def _gather(handle: Any, rows: np.ndarray) -> Any:
    """A worker task: the rows a shard of ``rows`` trains on, from the shared arrays."""
    from asynctrain._engine._work import features

    return features(handle.read(0), rows)


def test_a_corrupt_csr_given_to_a_model_directly_is_refused() -> None:
    # Not through a Trainer or Dataset: model.predict and loss_and_grad multiplied the
    # corrupt matrix as it was and died of a segmentation fault (hence the subprocess).
    code = textwrap.dedent(
        """
        import numpy as np, scipy.sparse as sp
        from asynctrain.models import MLP, LinearRegression, LogisticRegression, SoftmaxRegression
        arrays = (np.ones(2), np.array([0, 1000], np.int32), np.array([0, 1, 2, 2], np.int32))
        X, y = sp.csr_array(arrays, shape=(3, 3)), np.array([0, 1, 0])
        models = [LogisticRegression(3), SoftmaxRegression(3, 2), LinearRegression(3)]
        for model in [*models, MLP((3, 4, 2))]:
            params = model.init(np.random.default_rng(0))
            for name, labels in (("predict", ()), ("loss_and_grad", (y,))):
                try:
                    getattr(model, name)(params, X, *labels)
                except Exception as exc:
                    print(type(exc).__name__, exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 8
    for line in lines:
        assert line.startswith("DataError"), line
        assert "column index 1000 in row 1" in line


async def test_a_fits_shards_are_not_checked_again_but_a_direct_call_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The Dataset checked the index arrays once; a model checking every shard's again
    # read each index once more a step (about a tenth of a sparse step's time).
    X = sp.random(400, 30, density=0.1, format="csr", dtype=np.float32, random_state=0)
    y = np.random.default_rng(0).integers(0, 2, 400)
    data = Dataset(X, y)
    calls: list[Any] = []
    checked = _sparse.check_indices
    monkeypatch.setattr(
        "asynctrain.models._common.check_indices", lambda *a: calls.append(a) or checked(*a)
    )
    model = LogisticRegression(30)
    result = await at.fit(model, data, epochs=2, batch_size=64, shards=2, validation=data)
    assert result.steps == 14
    assert not calls
    model.predict(result.params, X)  # the caller's own matrix: checked
    assert len(calls) == 1
    rows = _sparse.take(X, np.arange(5))  # rows of a matrix nobody checked: checked
    model.predict(result.params, rows)
    assert len(calls) == 2
