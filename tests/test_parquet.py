"""read_parquet: Parquet files as a stream for fit_stream, against in-memory oracles, and
every bad input we could think of."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

import asynctrain as at
from asynctrain._streaming._feed import RING_SLOTS
from asynctrain._streaming._sources import READ_AHEAD, ReadAhead
from asynctrain._streaming._stream import DEFAULT_BUFFER
from asynctrain.data import read_parquet
from asynctrain.data._parquet import holdout_mask
from asynctrain.data._shared import is_shared

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

BATCH = 64


def _data(n: int = 1000, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features whose first column is the row's number (to tell rows apart), labels 0..2."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[:, 0] = np.arange(n)
    y = (X[:, 1:] + 0.3 * rng.standard_normal((n, d - 1))).argmax(axis=1)
    return X, y


def _table(X: np.ndarray, y: np.ndarray) -> object:
    columns = {f"f{j}": X[:, j] for j in range(X.shape[1])}
    return pa.table({**columns, "y": y})


def _write(path: Path, X: np.ndarray, y: np.ndarray, *, row_group: int = 50, **kw: object) -> Path:
    pq.write_table(_table(X, y), path, row_group_size=row_group, **kw)
    return path


def _split_files(directory: Path, X: np.ndarray, y: np.ndarray, sizes: list[int]) -> list[Path]:
    """The rows written in order over files of ``sizes`` rows (row groups of 50)."""
    directory.mkdir(exist_ok=True)
    paths, start = [], 0
    for number, size in enumerate(sizes):
        rows = slice(start, start + size)
        paths.append(_write(directory / f"part-{number}.parquet", X[rows], y[rows]))
        start += size
    return paths


def _batches(stream: object) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(stream)  # type: ignore[call-overload]


def _same_batches(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]]):
    assert len(a) == len(b)
    for (Xa, ya), (Xb, yb) in zip(a, b, strict=True):
        assert Xa.tobytes() == Xb.tobytes()
        assert ya.tobytes() == yb.tobytes()


def _ids(batches: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.concatenate([X[:, 0] for X, _ in batches]).astype(np.int64)


def _trainer(backend: str = "thread", features: int = 4) -> at.Trainer:
    return at.Trainer(
        at.models.SoftmaxRegression(features, 3),
        at.optim.adam(1e-2),
        backend=backend,
        workers=None if backend == "inline" else 2,
        batch_size=BATCH,
        shards=4,
        seed=3,
    )


# -- the batches, against the rows in memory --------------------------------------------


def test_unshuffled_batches_are_the_rows_in_file_order(tmp_path: Path) -> None:
    X, y = _data()
    _split_files(tmp_path / "parts", X, y, [300, 450, 250])
    stream = read_parquet(tmp_path / "parts", label="y", batch_size=BATCH, shuffle=False)
    expected = [(X[s : s + BATCH], y[s : s + BATCH]) for s in range(0, len(X), BATCH)]
    _same_batches(_batches(stream), expected)


def test_shuffled_passes_are_permutations_and_the_seed_decides_them(tmp_path: Path) -> None:
    X, y = _data()
    path = _write(tmp_path / "one.parquet", X, y)
    stream = read_parquet(path, label="y", batch_size=BATCH, shuffle_buffer=200, epochs=2, seed=7)
    batches = _batches(stream)
    ids = _ids(batches)
    first, second = ids[: len(X)], ids[len(X) :]
    assert sorted(first) == sorted(second) == list(range(len(X)))  # each pass: every row once
    assert not np.array_equal(first, np.arange(len(X)))  # shuffled
    assert not np.array_equal(first, second)  # a new order each pass
    for X_batch, y_batch in batches:  # rows keep their labels
        assert np.array_equal(y[X_batch[:, 0].astype(int)], y_batch)
        assert np.array_equal(X[X_batch[:, 0].astype(int)], X_batch)
    _same_batches(batches, _batches(stream))  # iterating again: the same batches
    other = read_parquet(path, label="y", batch_size=BATCH, shuffle_buffer=200, epochs=2, seed=8)
    assert not np.array_equal(_ids(_batches(other)), ids)
    assert all(len(X_batch) == BATCH for X_batch, _ in batches[: len(X) // BATCH])


def test_the_shuffle_buffer_mixes_rows_across_row_groups(tmp_path: Path) -> None:
    X, y = _data()
    path = _write(tmp_path / "one.parquet", X, y, row_group=100)
    batches = _batches(read_parquet(path, label="y", batch_size=BATCH, shuffle_buffer=400))
    groups_per_batch = [len(set(X_batch[:, 0].astype(int) // 100)) for X_batch, _ in batches]
    assert np.median(groups_per_batch) >= 3  # not one row group at a time


@pytest.mark.parametrize("shuffle", [True, False])
def test_several_files_a_directory_and_a_glob_equal_one_file(tmp_path: Path, shuffle: bool) -> None:
    X, y = _data()
    one = _write(tmp_path / "one.parquet", X, y)
    _split_files(tmp_path / "parts", X, y, [300, 450, 250])  # the same row groups of 50
    (tmp_path / "parts" / "_SUCCESS").write_text("")  # markers Spark writes are skipped
    settings = {"label": "y", "batch_size": BATCH, "shuffle": shuffle, "seed": 5}
    reference = _batches(read_parquet(one, **settings))  # type: ignore[arg-type]
    for path in (
        tmp_path / "parts",
        tmp_path / "parts" / "part-*",
        str(tmp_path / "**/p*/*.parquet"),
    ):
        _same_batches(_batches(read_parquet(path, **settings)), reference)  # type: ignore[arg-type]


def test_features_dtype_and_label_conversions(tmp_path: Path) -> None:
    n = 10
    table = pa.table(
        {
            "i8": pa.array(np.arange(n), pa.int8()),
            "flag": pa.array(np.arange(n) % 2 == 0),
            "u32": pa.array(np.arange(n), pa.uint32()),
            "target": pa.array(np.linspace(0, 1, n)),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    stream = read_parquet(
        tmp_path / "t.parquet",
        label="target",
        features=["u32", "flag"],
        batch_size=n,
        shuffle=False,
        dtype=np.float64,
    )
    [(X, y)] = _batches(stream)
    assert X.dtype == y.dtype == np.float64
    assert np.array_equal(X, np.column_stack([np.arange(n), np.arange(n) % 2 == 0]))
    [(X, y)] = _batches(read_parquet(tmp_path / "t.parquet", label="i8", batch_size=n))
    assert X.dtype == np.float32
    assert X.shape == (n, 3)
    assert y.dtype == np.int64


def test_a_uint64_label_beyond_int64_is_refused_not_wrapped(tmp_path: Path) -> None:
    # cast to int64 as it was, 2**63 + 5 became the label -9223372036854775803
    labels = pa.array(np.array([0, 1, 2**63 + 5], np.uint64))
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0], "y": labels}), tmp_path / "u.parquet")
    with pytest.raises(at.DataError, match=r"label column 'y' holds 9223372036854775813"):
        _first(tmp_path / "u.parquet")
    with pytest.raises(at.DataError, match="beyond the int64 range"):
        at.data.load(tmp_path / "u.parquet", label="y")
    pq.write_table(pa.table({"x": [1.0, 2.0], "y": labels[:2]}), tmp_path / "u.parquet")
    assert _first(tmp_path / "u.parquet")[1].tolist() == [0, 1]  # type: ignore[index]


# -- training on it ----------------------------------------------------------------------


async def test_same_seed_same_parameters_and_unshuffled_equals_the_rows_in_memory(
    backend_name: str, tmp_path: Path
) -> None:
    X, y = _data()
    path = _write(tmp_path / "one.parquet", X, y)
    runs = []
    for _ in range(2):
        async with _trainer(backend_name) as trainer:
            stream = read_parquet(path, label="y", batch_size=BATCH, epochs=2, seed=1)
            runs.append((await trainer.fit_stream(stream)).params)
    assert all(runs[0][k].tobytes() == runs[1][k].tobytes() for k in runs[0])
    async with _trainer(backend_name) as trainer:
        unshuffled = read_parquet(path, label="y", batch_size=BATCH, shuffle=False)
        from_file = (await trainer.fit_stream(unshuffled)).params
    async with _trainer("inline") as trainer:
        pieces = [(X[s : s + 100], y[s : s + 100]) for s in range(0, len(X), 100)]
        in_memory = (await trainer.fit_stream(pieces)).params
    assert all(from_file[k].tobytes() == in_memory[k].tobytes() for k in in_memory)
    assert not all(runs[0][k].tobytes() == in_memory[k].tobytes() for k in in_memory)


async def test_holdout_as_validation_of_a_stream_fit(tmp_path: Path) -> None:
    X, y = _data()
    path = _write(tmp_path / "one.parquet", X, y)
    features = ["f1", "f2", "f3"]  # not f0, the row's number
    train = read_parquet(
        path, label="y", features=features, batch_size=BATCH, holdout=0.2, epochs=3
    )
    validation = await asyncio.to_thread(train.holdout().to_dataset)
    async with _trainer(features=3) as trainer:
        result = await trainer.fit_stream(train, validation=validation, validate_every=10)
    assert result.history[-1].val_accuracy > 0.6
    assert result.steps == -(-3 * (len(X) - len(validation)) // BATCH)


async def test_two_fits_at_once_on_one_file_match_one_alone(tmp_path: Path) -> None:
    X, y = _data()
    path = _write(tmp_path / "one.parquet", X, y)

    async def fit() -> dict[str, np.ndarray]:
        async with _trainer() as trainer:
            stream = read_parquet(path, label="y", batch_size=BATCH, epochs=2, seed=4)
            return (await trainer.fit_stream(stream)).params

    alone = await fit()
    both = await asyncio.gather(fit(), fit())
    for params in both:
        assert all(params[k].tobytes() == alone[k].tobytes() for k in alone)


async def _agen(items: list[object]) -> AsyncIterator[object]:
    for item in items:
        yield item


def _open_files(path: Path) -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _target(fd) == str(path))


def _target(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except OSError:
        return ""


async def test_stopping_early_closes_the_files(tmp_path: Path) -> None:
    X, y = _data()
    path = _write(tmp_path / "one.parquet", X, y)
    async with _trainer() as trainer:
        stream = read_parquet(path, label="y", batch_size=BATCH, epochs=100)
        result = await trainer.fit_stream(stream, max_steps=3)
    assert result.steps == 3
    assert _open_files(path) == 0


# -- the held-out split -----------------------------------------------------------------


def test_holdout_is_disjoint_covering_stable_and_independent_of_batching(tmp_path: Path) -> None:
    X, y = _data(n=2000)
    path = _write(tmp_path / "one.parquet", X, y, row_group=128)
    _split_files(tmp_path / "parts", X, y, [700, 1300])

    def rows(where: Path, subset: str, **kw: object) -> np.ndarray:
        stream = read_parquet(where, label="y", holdout=0.25, subset=subset, **kw)  # type: ignore[arg-type]
        return np.sort(_ids(_batches(stream)))

    held = rows(path, "holdout", batch_size=BATCH)
    kept = rows(path, "train", batch_size=BATCH)
    assert np.intersect1d(held, kept).size == 0
    assert np.array_equal(np.sort(np.concatenate([held, kept])), np.arange(len(X)))
    assert 0.2 < len(held) / len(X) < 0.3
    assert np.array_equal(rows(path, "holdout", batch_size=7, seed=3, shuffle=True), held)
    assert np.array_equal(rows(tmp_path / "parts", "holdout", batch_size=500), held)
    assert np.array_equal(rows(path, "train", batch_size=33, seed=9), kept)
    validation = read_parquet(path, label="y", batch_size=BATCH, holdout=0.25).holdout()
    dataset = validation.to_dataset()
    assert np.array_equal(dataset.X[:, 0].astype(int), held)  # file order
    assert np.array_equal(dataset.y, y[held])


# -- memory ------------------------------------------------------------------------------


def test_memory_is_bounded_by_the_buffer_not_the_file(tmp_path: Path) -> None:
    n, d = 200_000, 16  # 12.8 MB of float32 features
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)).astype(np.float32)
    path = _write(tmp_path / "big.parquet", X, rng.integers(0, 3, n), row_group=5_000)
    stream = read_parquet(path, label="y", batch_size=256, shuffle_buffer=4_096)
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        rows = sum(len(batch) for batch, _ in stream)
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous)
    file_bytes = X.nbytes
    # the buffer (4,096 rows) twice over, one row group (5,000 rows) as Arrow and numpy,
    # a draw of batches: about 2 MB, against 12.8 MB of rows in the file.
    assert rows == n
    assert numpy_peak < file_bytes / 4, numpy_peak
    assert pool.max_memory() < file_bytes / 4, pool.max_memory()


class _Slow(at.models.SoftmaxRegression):
    """Steps of 5 ms: the stream reads as far ahead as it is allowed to."""

    def loss_and_grad(self, params, X, y):  # type: ignore[no-untyped-def]
        time.sleep(0.005)
        return super().loss_and_grad(params, X, y)


@pytest.mark.parametrize("shuffle_buffer", [1024, None])
async def test_memory_under_fit_stream_is_the_documented_bound(
    tmp_path: Path, shuffle_buffer: int | None
) -> None:
    """docs/data.md's bound under fit_stream: the shuffle buffer twice over, a row group,
    and READ_AHEAD + buffer + RING_SLOTS + 3 batches in flight (besides a megabyte of
    Python objects). With a buffer of one batch (the smallest allowed) the batches in
    flight are most of it: "bounded by the shuffle buffer and one row group", as the
    docstring said, was several times under (the read-ahead and the ring were left out)."""
    n, d, batch, group = 40_000, 64, 1024, 5_000
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)).astype(np.float32)
    path = _write(tmp_path / "big.parquet", X, rng.integers(0, 3, n), row_group=group)
    stream = read_parquet(path, label="y", batch_size=batch, shuffle_buffer=shuffle_buffer)
    flight = READ_AHEAD + DEFAULT_BUFFER + RING_SLOTS + 3
    rows = 2 * stream._buffer_rows() + group + flight * batch
    bound = rows * (d * 4 + 8) + 2**20  # X in float32 and int64 labels
    trainer = at.Trainer(_Slow(d, 3), backend="thread", workers=2, batch_size=batch, shards=1)
    async with trainer:
        tracemalloc.start()
        try:
            result = await trainer.fit_stream(stream)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert result.steps == -(-n // batch)
    assert peak < bound, (peak, bound)
    if shuffle_buffer == batch:  # the batches in flight, not the buffer, are what it holds
        assert peak > 8 * batch * (d * 4 + 8), peak


@pytest.mark.parametrize("how", ["load", "to_dataset", "holdout"])
def test_a_dataset_read_whole_holds_its_rows_once(tmp_path: Path, how: str) -> None:
    """``load`` and ``to_dataset`` write each row group's rows straight into arrays made
    once (in shared memory): no private copy of the rows, no chunks concatenated."""
    n, d = 200_000, 16  # 12.8 MB of float32 features
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y, w = rng.integers(0, 3, n), rng.random(n).astype(np.float32)
    path = _weighted(tmp_path / "big.parquet", X, y, w, row_group_size=5_000)
    stream = read_parquet(path, label="y", weight="w", batch_size=256, holdout=0.1)
    tracemalloc.start()
    try:
        if how == "load":
            data = at.data.load(path, label="y", weight="w")
        else:
            data = (stream.holdout() if how == "holdout" else stream).to_dataset()
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rows = np.arange(n)
    if how != "load":
        held = holdout_mask(rows.astype(np.uint64), 0.1)
        rows = rows[held if how == "holdout" else ~held]
    assert np.array_equal(data.X, X[rows])
    assert np.array_equal(data.y, y[rows])
    assert np.array_equal(data.sample_weight, w[rows])
    private = 0 if is_shared(data.X) else data.X.nbytes  # /dev/shm full: X is private
    assert numpy_peak - private < X.nbytes / 4, numpy_peak


def test_a_file_that_changes_while_read_whole_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    X, y = _data(n=300)
    stream = read_parquet(_write(tmp_path / "one.parquet", X, y), label="y", batch_size=BATCH)
    # The footers' count and the rows read disagree either way, also by whole row groups
    # (a count of 250 ends on a row group's last row: the 50 rows after it are not dropped).
    for counted in (299, 301, 250):
        monkeypatch.setattr(type(stream), "_subset_rows", lambda self, files, c=counted: c)
        with pytest.raises(at.DataError, match="changed while it was read"):
            stream.to_dataset()


# -- bad input ---------------------------------------------------------------------------


def _first(path: object, **kw: object) -> object:
    settings: dict[str, object] = {"label": "y", "batch_size": BATCH, **kw}
    return next(iter(read_parquet(path, **settings)))  # type: ignore[arg-type]


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.parquet", *_data())
    with pytest.raises(at.DataError, match=r"no label column 'label'.*'f0', 'f1'"):
        _first(path, label="label")
    with pytest.raises(at.DataError, match=r"a\.parquet has no feature column 'f9'"):
        _first(path, features=["f0", "f9"])


def test_a_non_numeric_column_is_refused_by_name(tmp_path: Path) -> None:
    table = pa.table({"x": [1.0, 2.0], "city": ["Oslo", "Lima"], "y": [0, 1]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(at.DataTypeError, match=r"column 'city' .* type string, not a number"):
        _first(tmp_path / "t.parquet")
    assert _first(tmp_path / "t.parquet", features=["x"])[0].shape == (2, 1)  # type: ignore[index]
    table = pa.table({"x": [1.0, 2.0], "y": ["a", "b"]})
    pq.write_table(table, tmp_path / "s.parquet")
    with pytest.raises(at.DataTypeError, match="column 'y'"):
        _first(tmp_path / "s.parquet")


def test_no_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not data")
    with pytest.raises(at.DataError, match="no Parquet files in the directory"):
        _first(tmp_path / "empty")
    with pytest.raises(at.DataError, match=r"pattern '.*\*\.parquet' matches no files"):
        _first(str(tmp_path / "*.parquet"))
    with pytest.raises(at.DataError, match="no such file or directory"):
        _first(tmp_path / "missing.parquet")


def test_corrupt_and_truncated_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "junk.parquet").write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(at.DataError, match=r"cannot read .*junk\.parquet as Parquet"):
        _first(tmp_path / "junk.parquet")
    good = _write(tmp_path / "good.parquet", *_data())
    data = good.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(at.DataError, match=r"cut\.parquet"):
        _first(tmp_path / "cut.parquet")
    # a page damaged in the middle: the footer reads, the row group does not
    broken = bytearray(data)
    broken[200:260] = b"\xff" * 60
    (tmp_path / "pages.parquet").write_bytes(bytes(broken))
    with pytest.raises(at.DataError, match=r"pages\.parquet"):
        list(read_parquet(tmp_path / "pages.parquet", label="y", batch_size=BATCH))


def test_schema_mismatch_names_both_files(tmp_path: Path) -> None:
    X, y = _data()
    _write(tmp_path / "a.parquet", X, y)
    pq.write_table(_table(X, y).drop_columns(["f3"]), tmp_path / "b.parquet")
    with pytest.raises(at.DataError, match=r"b\.parquet and .*a\.parquet have different columns"):
        _first(tmp_path)
    pq.write_table(_table(X, y.astype(np.float64)), tmp_path / "b.parquet")
    with pytest.raises(at.DataError, match=r"column 'y' is int64 in .*a\.parquet but double in"):
        _first(tmp_path)
    pq.write_table(_table(X, y).drop_columns(["f3"]), tmp_path / "b.parquet")
    assert _first(tmp_path, features=["f0", "f1"])[0].shape == (BATCH, 2)  # type: ignore[index]


def test_a_column_name_used_twice_is_refused_unless_it_is_left_out(tmp_path: Path) -> None:
    # pyarrow's lookup by name failed with a bare KeyError ("Column a does not exist")
    columns = [pa.array([1.0, 2.0]), pa.array([3.0, 4.0]), pa.array([5.0, 6.0]), pa.array([0, 1])]
    table = pa.Table.from_arrays(columns, names=["a", "a", "b", "y"])
    pq.write_table(table, tmp_path / "d.parquet")
    for settings in ({}, {"features": ["a", "b"]}, {"features": ["b"], "label": "a"}):
        with pytest.raises(at.DataError, match=r"d\.parquet has 2 columns named 'a'"):
            _first(tmp_path / "d.parquet", **settings)
    assert _first(tmp_path / "d.parquet", features=["b"])[0].tolist() == [[5.0], [6.0]]  # type: ignore[index]
    pq.write_table(pa.table({"a": [1.0], "b": [5.0], "y": [0]}), tmp_path / "c.parquet")
    with pytest.raises(at.DataError, match=r"d\.parquet has 2 columns named 'a'"):
        _first(tmp_path)  # c.parquet first, then d.parquet


@pytest.mark.parametrize("statistics", [True, False])
def test_nulls_are_refused_naming_the_column(tmp_path: Path, statistics: bool) -> None:
    table = pa.table({"x": pa.array([1.0, None, 3.0]), "y": pa.array([0, 1, 0])})
    pq.write_table(table, tmp_path / "n.parquet", write_statistics=statistics)
    with pytest.raises(at.DataError, match=r"n\.parquet, row group 0: column 'x' has 1 null"):
        _first(tmp_path / "n.parquet")


def test_nan_is_refused_naming_the_column_and_row(tmp_path: Path) -> None:
    X, y = _data(n=100)
    X[77, 2] = np.nan
    path = _write(tmp_path / "nan.parquet", X, y)
    with pytest.raises(at.DataError, match=r"row group 1: column 'f2' .*\(nan\) at row 27"):
        list(read_parquet(path, label="y", batch_size=BATCH, shuffle=False))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, None])
def test_the_largest_finite_values_are_read_as_they_are_and_inf_is_refused(
    tmp_path: Path, bad: float | None
) -> None:
    """Values at float32's limit pass the finiteness check (their sum would overflow),
    come out bit for bit in row order, and an Inf among them is named."""
    X, y = _data(n=100)
    X[:, 3] = np.finfo(np.float32).max  # finite, and their sum is Inf
    if bad is not None:
        X[60, 1] = bad
    path = _write(tmp_path / "big.parquet", X, y)
    stream = read_parquet(path, label="y", batch_size=BATCH, shuffle=False)
    if bad is not None:
        with pytest.raises(at.DataError, match=r"row group 1: column 'f1' .*inf\) at row 10"):
            list(stream)
        return
    batches = list(stream)
    got = np.concatenate([b[0] for b in batches])
    assert got.tobytes() == X.tobytes()
    assert all(b[0].flags.c_contiguous for b in batches)


# -- chunks -------------------------------------------------------------------------------


def test_the_batches_do_not_depend_on_the_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shuffled, with a holdout, over several files: chunks of a few rows give the batches
    that chunks of whole row groups give, bit for bit (the shuffle buffer takes rows in
    arrival order, whatever the chunks that bring them)."""
    import asynctrain.data._parquet_files as files

    X, y = _data()
    _split_files(tmp_path / "parts", X, y, [300, 450, 250])
    stream = read_parquet(
        tmp_path / "parts", label="y", batch_size=BATCH, shuffle_buffer=200, epochs=2, holdout=0.2
    )
    whole = _batches(stream)
    monkeypatch.setattr(files, "CHUNK_BYTES", 7 * 24)  # 7 rows of 4 float32 and a label
    _same_batches(_batches(stream), whole)
    kept = np.count_nonzero(~holdout_mask(np.arange(len(X), dtype=np.uint64), 0.2))
    assert sum(len(batch) for batch, _ in whole) == 2 * kept  # two passes of the kept rows


# -- reading ahead (what fit_stream does) -----------------------------------------------


async def _read_ahead(stream: object, limit: int = READ_AHEAD) -> list[object]:
    """Every item of ``iter(stream)`` as a :class:`ReadAhead` on a thread yields them."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ahead") as executor:
        ahead = ReadAhead(iter(stream), executor, limit=limit)  # type: ignore[call-overload]
        try:
            return [item async for item in ahead]
        finally:
            await ahead.aclose()


@pytest.mark.parametrize("shuffle", [True, False])
async def test_reading_ahead_gives_the_same_batches_read_on_another_thread(
    tmp_path: Path, shuffle: bool
) -> None:
    X, y = _data()
    _split_files(tmp_path / "parts", X, y, [300, 450, 250])
    stream = read_parquet(
        tmp_path / "parts", label="y", batch_size=BATCH, shuffle=shuffle, epochs=2, holdout=0.1
    )
    threads: set[str] = set()

    def recorded() -> object:
        for batch in stream:
            threads.add(threading.current_thread().name)
            yield batch

    got = await _read_ahead(recorded(), limit=2)
    _same_batches(got, _batches(stream))  # type: ignore[arg-type]
    assert threads
    assert all(name.startswith("ahead") for name in threads)


async def test_reading_ahead_stays_at_most_its_limit_ahead(tmp_path: Path) -> None:
    made: list[int] = []

    def counted() -> object:
        for i in range(20):
            made.append(i)
            yield i

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        ahead = ReadAhead(iter(counted()), executor, limit=3)  # type: ignore[arg-type]
        try:
            assert await anext(ahead) == 0
            for _ in range(1000):  # the thread fills what it may, then waits
                if len(made) >= 5:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # a thread that did not wait would make them all
            assert len(made) == 1 + 3 + 1  # taken, 3 held ready, one waiting for room
        finally:
            await ahead.aclose()
    assert len(made) == 5  # closing stopped it


async def test_closing_a_read_ahead_waits_for_the_read_and_closes_the_files(
    tmp_path: Path,
) -> None:
    X, y = _data(n=2000)
    path = _write(tmp_path / "one.parquet", X, y)
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        stream = read_parquet(path, label="y", batch_size=BATCH)
        ahead = ReadAhead(iter(stream), executor, limit=2)
        await anext(ahead)
        assert _open_files(path) == 1
        await ahead.aclose()
        assert _open_files(path) == 0


async def test_a_bad_row_group_read_ahead_fails_after_the_same_batches(tmp_path: Path) -> None:
    X, y = _data(n=100)
    X[77, 2] = np.nan
    path = _write(tmp_path / "nan.parquet", X, y)
    stream = read_parquet(path, label="y", batch_size=10, shuffle=False)
    got: list[object] = []
    bad = r"row group 1: column 'f2' .*at row 27"
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        ahead = ReadAhead(iter(stream), executor, limit=2)

        async def read() -> None:
            async for batch in ahead:
                got.append(batch)

        with pytest.raises(at.DataError, match=bad):
            await read()
        await ahead.aclose()
    assert len(got) == 5  # row group 0's rows, as when read without reading ahead


@pytest.mark.parametrize("backend", ["inline", "thread"])
async def test_a_nan_in_a_file_fails_fit_stream_naming_its_file_column_and_row(
    tmp_path: Path, backend: str
) -> None:
    """A NaN in a row group fails the fit with the stream's own message (file, row group,
    column, row), after the steps on the rows before it, read ahead or not."""
    X, y = _data(n=300)
    X[177, 2] = np.nan
    path = _write(tmp_path / "nan.parquet", X, y, row_group=100)
    async with _trainer(backend) as trainer:
        stream = read_parquet(path, label="y", batch_size=BATCH, shuffle=False)
        with pytest.raises(at.DataError, match=r"nan\.parquet, row group 1: column 'f2' .*row 77"):
            await trainer.fit_stream(stream)
        assert trainer.state.step == 100 // BATCH  # the full batches before row group 1


@pytest.mark.parametrize("backend", ["inline", "thread"])
async def test_fit_stream_reads_ahead_off_inline_backends_to_the_same_bits(
    tmp_path: Path, backend: str
) -> None:
    X, y = _data(n=3000)
    path = _write(tmp_path / "one.parquet", X, y, row_group=500)
    threads: set[str] = set()

    class Threads(at.Callback):
        def on_step(self, event: at.StepEvent) -> None:
            threads.update(thread.name for thread in threading.enumerate())

    async with _trainer(backend) as trainer:
        stream = read_parquet(path, label="y", batch_size=BATCH)
        result = await trainer.fit_stream(stream, callbacks=[Threads()])
    async with _trainer("inline") as trainer:
        reference = await trainer.fit_stream(_agen(list(stream)))
    reading_ahead = any(name.startswith("asynctrain-read-ahead") for name in threads)
    assert reading_ahead == (backend != "inline")
    assert all(np.array_equal(result.params[k], reference.params[k]) for k in reference.params)


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"batch_size": 0}, at.ConfigError, "batch_size must be >= 1"),
        ({"batch_size": -5}, at.ConfigError, "batch_size must be >= 1"),
        ({"batch_size": 2.5}, at.ConfigTypeError, "batch_size must be an integer"),
        ({"epochs": 0}, at.ConfigError, "epochs must be >= 1"),
        ({"shuffle_buffer": 10}, at.ConfigError, "shuffle_buffer=10 is smaller than batch_size"),
        ({"shuffle": False, "shuffle_buffer": 100}, at.ConfigError, "needs shuffle=True"),
        ({"holdout": 1.0}, at.ConfigError, r"holdout must be in \[0, 1\)"),
        ({"holdout": float("nan")}, at.ConfigError, "holdout must be in"),
        ({"subset": "test"}, at.ConfigError, "subset must be one of"),
        ({"subset": "holdout"}, at.ConfigError, "needs holdout > 0"),
        ({"features": "f0"}, at.ConfigTypeError, r"pass features=\['f0'\]"),
        ({"features": ["f0", "y"]}, at.ConfigError, "label column 'y' is also in features"),
        ({"features": ["f0", "f0"]}, at.ConfigError, r"\['f0'\] more than once"),
        ({"dtype": np.int32}, at.ConfigError, "dtype must be float32 or float64"),
        ({"seed": -1}, at.ConfigError, "seed must be >= 0"),
    ],
)
def test_bad_settings_fail_at_once(settings: dict[str, object], error: type, match: str) -> None:
    arguments: dict[str, object] = {"label": "y", "batch_size": BATCH, **settings}
    with pytest.raises(error, match=match):
        read_parquet("never-read.parquet", **arguments)  # type: ignore[arg-type]


def test_a_numpy_holdout_fraction_is_taken_like_a_float() -> None:
    # np.float32(0.1) was refused: "holdout must be a fraction such as 0.1, got 0.1"
    settings: dict[str, object] = {"label": "y", "batch_size": BATCH}
    stream = read_parquet("never-read.parquet", **settings, holdout=np.float32(0.5))  # type: ignore[arg-type]
    assert stream.holdout_fraction == 0.5
    with pytest.raises(at.ConfigTypeError, match="holdout must be a fraction"):
        read_parquet("never-read.parquet", **settings, holdout="0.1")  # type: ignore[arg-type]


def test_files_without_rows(tmp_path: Path) -> None:
    empty = pa.table({"a": pa.array([], pa.float64()), "y": pa.array([], pa.int64())})
    pq.write_table(empty, tmp_path / "a.parquet")
    pq.write_table(pa.table({"a": np.arange(5.0), "y": np.arange(5)}), tmp_path / "b.parquet")
    stream = read_parquet(tmp_path, label="y", batch_size=2, shuffle=False)
    assert [y.tolist() for _, y in stream] == [[0, 1], [2, 3], [4]]
    alone = read_parquet(tmp_path / "a.parquet", label="y", batch_size=2)
    assert list(alone) == []
    with pytest.raises(at.DataError, match=r"a\.parquet' holds no rows; a Dataset needs one"):
        alone.to_dataset()


def test_holdout_of_a_stream_without_one_is_refused() -> None:
    with pytest.raises(at.ConfigError, match="holds nothing out"):
        read_parquet("x.parquet", label="y", batch_size=1).holdout()


def test_without_pyarrow_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"pip install 'asynctrain\[parquet\]'"):
        read_parquet("x.parquet", label="y", batch_size=1)


async def test_a_bad_file_fails_the_fit_before_any_step(tmp_path: Path) -> None:
    X, y = _data()
    _write(tmp_path / "a.parquet", X, y)
    pq.write_table(_table(X, y).drop_columns(["f3"]), tmp_path / "b.parquet")
    async with _trainer() as trainer:
        with pytest.raises(at.DataError, match="different columns"):
            await trainer.fit_stream(read_parquet(tmp_path, label="y", batch_size=BATCH))
        assert trainer.state.step == 0


async def test_cancelling_mid_read_leaves_nothing_running(
    backend_name: str, tmp_path: Path
) -> None:
    X, y = _data(n=20_000)
    path = _write(tmp_path / "one.parquet", X, y, row_group=500)
    stepped = asyncio.Event()

    class Signal(at.Callback):
        def on_step(self, event: at.StepEvent) -> None:
            if event.step == 3:
                stepped.set()

    stream = read_parquet(path, label="y", batch_size=BATCH, epochs=50)
    async with _trainer(backend_name) as trainer:
        fit = asyncio.ensure_future(trainer.fit_stream(stream, callbacks=[Signal()]))
        await stepped.wait()
        fit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fit
        result = await trainer.fit_stream(read_parquet(path, label="y", batch_size=BATCH))
        assert result.steps == -(-len(X) // BATCH)  # the trainer fits again afterwards


# -- the bench suite (smoke size: every figure is produced; no speed is checked) ---------


def test_the_bench_suite_produces_its_figures() -> None:
    from benchmarks import _parquet
    from benchmarks._scale import smoke

    with smoke():
        figures = at.run(_parquet.run(quick=True))
    assert [f.name for f in figures] == [
        "parquet/softmax/thread/throughput",
        "parquet/mlp/thread/throughput",
        "parquet/softmax/thread/peak_memory",
    ]
    for figure in figures:
        assert figure.value > 0
        assert figure.command == "asynctrain bench --only parquet --smoke"
    for figure in figures[:2]:
        assert figure.details["read_only_samples_per_s"] > 0


# -- reading columns without pyarrow's numpy conversion ---------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        *("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
        *("float16", "float32", "float64", "bool_"),
    ],
)
def test_column_values_equal_pyarrows_own_conversion(kind: str) -> None:
    from asynctrain.data._parquet_files import _values

    rng = np.random.default_rng(0)
    array = pa.array(rng.integers(0, 100, 37).astype(np.float64), getattr(pa, kind)())
    if kind == "bool_":
        array = pa.array(rng.integers(0, 2, 37).astype(bool))
    for column in (array, array.slice(5, 20), array.slice(11), array.slice(3, 0)):
        values = _values(column, pa)
        assert values.dtype == column.to_numpy(zero_copy_only=False).dtype
        assert np.array_equal(values, column.to_numpy(zero_copy_only=False))


def test_reading_does_not_import_pandas(tmp_path: Path) -> None:
    import subprocess

    path = _write(tmp_path / "one.parquet", *_data())
    code = (
        "import sys, asynctrain as at\n"
        f"batches = list(at.data.read_parquet({str(path)!r}, label='y', batch_size=64))\n"
        "assert batches and 'pandas' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- a weight column ---------------------------------------------------------------------


def _weighted(path: Path, X: np.ndarray, y: np.ndarray, w: np.ndarray, **kw: object) -> Path:
    """The weight column first, so taking it out of the default features is tested."""
    table = _table(X, y)
    pq.write_table(table.add_column(0, "w", pa.array(w)), path, **{"row_group_size": 50, **kw})
    return path


def _row_weights(X: np.ndarray) -> np.ndarray:
    """A weight that is a function of the row's number (0 to 3): tells where it came from."""
    return (X[:, 0].astype(np.int64) * 7) % 4


def test_weights_travel_with_their_rows_shuffled_or_not(tmp_path: Path) -> None:
    X, y = _data()
    path = _weighted(tmp_path / "w.parquet", X, y, _row_weights(X))
    for shuffle in (False, True):
        batches = list(read_parquet(path, label="y", weight="w", batch_size=BATCH, shuffle=shuffle))
        assert all(len(batch) == 3 for batch in batches)
        assert batches[0][0].shape == (BATCH, 4)  # the weight is not a feature
        for Xb, _, wb in batches:
            assert wb.dtype == np.float32
            np.testing.assert_array_equal(wb, _row_weights(Xb))
        assert sorted(_ids([(Xb, yb) for Xb, yb, _ in batches])) == list(range(len(X)))
    unweighted = list(
        read_parquet(
            path, label="y", features=[f"f{j}" for j in range(4)], batch_size=BATCH, seed=5
        )
    )
    weighted = list(read_parquet(path, label="y", weight="w", batch_size=BATCH, seed=5))
    _same_batches(unweighted, [(Xb, yb) for Xb, yb, _ in weighted])  # the same order


def test_to_dataset_and_the_holdout_carry_the_weights(tmp_path: Path) -> None:
    X, y = _data()
    w = _row_weights(X) + 0.5
    path = _weighted(tmp_path / "w.parquet", X, y, w, row_group_size=128)
    train = read_parquet(
        path, label="y", weight="w", batch_size=BATCH, holdout=0.3, dtype=np.float64
    )
    held, kept = train.holdout().to_dataset(), train.to_dataset()
    for part in (held, kept):
        rows = part.X[:, 0].astype(np.int64)
        assert part.sample_weight is not None
        assert part.sample_weight.dtype == np.float64
        np.testing.assert_array_equal(part.sample_weight, w[rows])
        np.testing.assert_array_equal(part.X, X[rows])
    assert len(held) + len(kept) == len(X)
    assert "weight='w'" in repr(train.holdout())


async def test_a_weighted_stream_trains_to_the_bits_of_the_weighted_batches_in_memory(
    backend_name: str, tmp_path: Path
) -> None:
    X, y = _data()
    w = np.random.default_rng(4).uniform(0, 3, len(X)).astype(np.float32)
    path = _weighted(tmp_path / "w.parquet", X, y, w)
    async with _trainer(backend_name) as trainer:
        stream = read_parquet(path, label="y", weight="w", batch_size=BATCH, shuffle=False)
        from_file = (await trainer.fit_stream(stream)).params
    async with _trainer("inline") as trainer:
        pieces = [(X[s : s + 100], y[s : s + 100], w[s : s + 100]) for s in range(0, len(X), 100)]
        in_memory = (await trainer.fit_stream(pieces)).params
    async with _trainer("inline") as trainer:
        unweighted = (await trainer.fit_stream([(X, y)])).params
    assert all(from_file[k].tobytes() == in_memory[k].tobytes() for k in in_memory)
    assert not all(unweighted[k].tobytes() == in_memory[k].tobytes() for k in in_memory)


async def test_integer_weights_equal_repeated_rows_for_one_full_batch_step(tmp_path: Path) -> None:
    X, y = _data(n=300)
    X[:, 0] /= 300  # the row's number, scaled like the other features
    w = _row_weights(np.arange(300.0)[:, None])  # 0 to 3: rows dropped, kept, repeated
    path = _weighted(tmp_path / "w.parquet", X, y, w.astype(np.int32))

    async def one_step(source: object, rows: int) -> dict[str, np.ndarray]:
        model = at.models.SoftmaxRegression(4, 3, l2=0.1, dtype=np.float64)
        trainer = at.Trainer(model, at.optim.sgd(0.5), backend="inline", batch_size=rows)
        async with trainer:
            result = await trainer.fit_stream(source)  # type: ignore[arg-type]
        assert result.steps == 1
        return dict(result.params)

    stream = read_parquet(
        path, label="y", weight="w", batch_size=300, shuffle=False, dtype=np.float64
    )
    weighted = await one_step(stream, 300)
    repeated = await one_step([(X.repeat(w, axis=0), y.repeat(w))], int(w.sum()))
    start = at.models.SoftmaxRegression(4, 3, dtype=np.float64).init(np.random.default_rng(0))
    for key, value in repeated.items():
        assert not np.array_equal(value, start[key]), key  # the step moved it
        np.testing.assert_allclose(weighted[key], value, rtol=1e-12, atol=1e-15, err_msg=key)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (
            -1.0,
            r"w\.parquet, row group 1: weight column 'w' has a negative weight \(-1\.0\) at "
            r"row 27 of the row group",
        ),
        (np.nan, r"w\.parquet, row group 1: column 'w' has a non-finite value \(nan\) at row 27"),
        (np.inf, r"w\.parquet, row group 1: column 'w' has a non-finite value \(inf\) at row 27"),
        (None, r"w\.parquet, row group 1: column 'w' has 1 null"),
    ],
)
def test_bad_weights_are_refused_naming_the_file_row_group_and_row(
    tmp_path: Path, bad: float | None, match: str
) -> None:
    X, y = _data(n=100)
    w: list[float | None] = [1.0] * 100
    w[77] = bad
    path = _weighted(tmp_path / "w.parquet", X, y, w)  # type: ignore[arg-type]
    with pytest.raises(at.DataError, match=match):
        list(read_parquet(path, label="y", weight="w", batch_size=BATCH, shuffle=False))


async def test_a_batch_of_zero_weights_fails_the_fit_naming_the_batch(tmp_path: Path) -> None:
    X, y = _data(n=200)
    w = np.ones(200)
    w[BATCH : 2 * BATCH] = 0  # the second batch weighs nothing: the stream's check refuses it
    path = _weighted(tmp_path / "w.parquet", X, y, w)
    stream = read_parquet(path, label="y", weight="w", batch_size=BATCH, shuffle=False)
    async with _trainer() as trainer:
        with pytest.raises(at.DataError, match=r"stream batch 1.*zero for every row"):
            await trainer.fit_stream(stream)


def test_a_bad_weight_column_is_refused_by_name(tmp_path: Path) -> None:
    X, y = _data(n=100)
    path = _write(tmp_path / "p.parquet", X, y)
    with pytest.raises(at.DataError, match=r"no weight column 'w'; its columns are"):
        _first(path, weight="w")
    table = _table(X, y).append_column("w", pa.array(["a"] * 100))
    pq.write_table(table, tmp_path / "s.parquet")
    with pytest.raises(at.DataTypeError, match=r"column 'w' of .*s\.parquet has type string"):
        _first(tmp_path / "s.parquet", weight="w")
    only = pa.table({"w": [1.0, 2.0], "y": [0, 1]})
    pq.write_table(only, tmp_path / "o.parquet")
    with pytest.raises(at.DataError, match="only the label column 'y' and the weight column 'w'"):
        _first(tmp_path / "o.parquet", weight="w")


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"weight": "y"}, at.ConfigError, "weight='y' is also the label column"),
        ({"weight": 3}, at.ConfigTypeError, "weight must be a column name"),
        ({"weight": "w", "features": ["f0", "w"]}, at.ConfigError, "weight column 'w' is also in"),
    ],
)
def test_bad_weight_settings_fail_at_once(
    settings: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        read_parquet("never-read.parquet", label="y", batch_size=BATCH, **settings)  # type: ignore[arg-type]


def test_a_pandas_index_written_as_a_column_is_not_a_feature(tmp_path: Path) -> None:
    # DataFrame.to_parquet of a filtered frame (its index no longer a plain range) writes
    # the index as the column __index_level_0__: row labels, which pandas reads back as
    # the index. They were taken for a feature, and predict(frame) then missed it.
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": np.arange(20.0), "b": -np.arange(20.0), "label": np.arange(20) % 2})
    frame[frame.a % 3 != 0].to_parquet(tmp_path / "part-0.parquet")
    frame.iloc[:5].to_parquet(tmp_path / "part-1.parquet")  # a RangeIndex: no column
    assert "__index_level_0__" in pq.read_schema(tmp_path / "part-0.parquet").names
    stream = read_parquet(tmp_path, label="label", batch_size=4, shuffle=False)
    X, _ = next(iter(stream))
    assert X.shape[1] == 2
    data = stream.to_dataset()
    assert data.feature_names == ("a", "b")
    assert at.data.load(tmp_path / "part-0.parquet").feature_names == ("a", "b")


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_batch_larger_than_the_files_costs_the_files_rows_not_the_batch(
    tmp_path: Path, shuffle: bool
) -> None:
    # The shuffle buffer (4 batches by default) kept an index per slot, written for all
    # of them: a 100-row file read with batch_size=10**8 took 47 s and 14 GB, and 10**10
    # raised numpy's MemoryError (the unshuffled batch's arrays too).
    X, y = _data(100)
    path = _write(tmp_path / "small.parquet", X, y)
    stream = read_parquet(path, label="y", batch_size=10**10, shuffle=shuffle, epochs=2)
    tracemalloc.start()
    try:
        batches = _batches(stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [len(b[0]) for b in batches] == [100, 100]
    assert sorted(_ids(batches[:1]).tolist()) == list(range(100))
    assert peak < 2**20


@pytest.mark.parametrize("backend", ["inline", "thread"])
async def test_a_parquet_stream_s_column_names_are_checked_at_predict(
    tmp_path: Path, backend: str
) -> None:
    # fit(stream.to_dataset()) kept the columns' names, fit_stream(stream) did not: a
    # frame with the columns in another order was then taken by position, in silence.
    pd = pytest.importorskip("pandas")
    X, y = _data(200)
    path = _write(tmp_path / "train.parquet", X, y)
    async with _trainer(backend) as trainer:
        result = await trainer.fit_stream(read_parquet(path, label="y", batch_size=BATCH))
        assert trainer.feature_names == result.feature_names == ("f0", "f1", "f2", "f3")
        frame = pd.DataFrame(X[:5], columns=["f0", "f1", "f2", "f3"])
        trainer.predict(frame)
        with pytest.raises(at.DataError, match="another order"):
            trainer.predict(frame[["f1", "f0", "f2", "f3"]])
        narrower = read_parquet(path, label="y", features=["f0", "f1"], batch_size=BATCH)
        with pytest.raises(at.DataError, match="misses"):  # other names: before any step
            await trainer.fit_stream(narrower)


@pytest.mark.parametrize(
    ("path", "match"),
    [
        (None, "got None"),
        (42, r"got 42 \(int\)"),
        (b"train.parquet", r"\(bytes\)"),
        (["a.parquet", "b.parquet"], "several files: pass their directory or a glob"),
    ],
)
def test_a_path_that_is_not_one_fails_at_once(path: object, match: str) -> None:
    # It failed only when read (in fit_stream, after the fit started), with Python's
    # TypeError: "expected str, bytes or os.PathLike object, not list".
    with pytest.raises(at.ConfigTypeError, match=match):
        read_parquet(path, label="y", batch_size=BATCH)  # type: ignore[arg-type]
    assert read_parquet(Path("p.parquet"), label="y", batch_size=BATCH).path == Path("p.parquet")
