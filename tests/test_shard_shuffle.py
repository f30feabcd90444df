"""Shard-local sampling (``Trainer(shuffle="shard")``) and no shuffling
(``shuffle="none"``): the orders' properties against plain-Python oracles, and
bit-identical parameters on every backend and worker count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import asynctrain as at
from asynctrain.data import Dataset, batch_bounds, shard_bounds, synthetic
from asynctrain.data._partition import partition_sizes, shard_epoch_order, shard_partitions
from asynctrain.models import SoftmaxRegression


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic("softmax", n=1100, seed=4)


def _shard_parts(order: np.ndarray, batch_size: int, shards: int) -> list[list[int]]:
    """Every position shard ``s`` reads in an epoch, in order: cut as the engine cuts."""
    parts: list[list[int]] = [[] for _ in range(shards)]
    for a, b in batch_bounds(len(order), batch_size):
        for s, (start, stop) in enumerate(shard_bounds(b - a, shards)):
            parts[s] += order[a + start : a + stop].tolist()
    return parts


@pytest.mark.parametrize(("n", "batch_size", "shards"), [(1100, 100, 4), (97, 10, 3), (5, 8, 4)])
def test_each_shard_reads_its_own_partition_once_an_epoch(
    n: int, batch_size: int, shards: int
) -> None:
    partitions = shard_partitions(n, batch_size=batch_size, shards=shards, seed=7)
    rows = sorted(int(i) for part in partitions for i in part)
    assert rows == list(range(n))  # every row in exactly one partition
    starts = np.cumsum([0] + [len(p) for p in partitions])
    orders = [
        shard_epoch_order(n, batch_size=batch_size, shards=shards, seed=7, epoch=e)
        for e in range(3)
    ]
    for order in orders:
        assert sorted(order.tolist()) == list(range(n))
        for s, seen in enumerate(_shard_parts(order, batch_size, shards)):
            # shard s reads exactly the positions of partition s, each once
            assert sorted(seen) == list(range(starts[s], starts[s + 1]))
    assert [len(p) for p in partitions] == partition_sizes(
        n, batch_size=batch_size, shards=shards
    ).tolist()
    if n > 20:  # each epoch shuffles within the partitions anew
        assert not np.array_equal(orders[0], orders[1])
        assert shard_partitions(n, batch_size=batch_size, shards=shards, seed=8)[0].tolist() != (
            partitions[0].tolist()
        )


async def _fit(
    backend: Any,
    data: Dataset,
    *,
    mode: str = "sync",
    shuffle: str = "shard",
    workers: int = 2,
    epochs: int = 2,
) -> at.FitResult:
    trainer = at.Trainer(
        SoftmaxRegression(128, 10),
        at.optim.adam(1e-2),
        backend=backend,
        workers=None if backend == "inline" else workers,
        batch_size=100,
        shards=4,
        seed=3,
        mode=mode,
        shuffle=shuffle,
        local_steps=3 if mode == "local" else None,
    )
    async with trainer:
        return await trainer.fit(data, epochs=epochs)


def _bits(params: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in params.items()}


@pytest.mark.parametrize("mode", ["sync", "local", "ssp"])
async def test_bit_identical_on_every_backend_and_worker_count(
    mode: str, data: Dataset, backend_name: str
) -> None:
    if backend_name == "dask":
        pytest.skip("tests/test_dask.py checks Dask against these")
    reference = await _fit("inline", data, mode=mode)
    for workers in (1, 2):
        result = await _fit(backend_name, data, mode=mode, workers=workers)
        assert _bits(result.params) == _bits(reference.params), f"{backend_name}({workers})"
    assert reference.history[-1].loss < reference.history[0].loss


async def test_a_shard_reads_only_the_rows_of_its_partition(data: Dataset) -> None:
    """A model that records the labels it is given, on data whose label is the row number:
    shard s sees exactly the rows of its partition, every epoch."""
    rows = Dataset(data.X, np.arange(len(data), dtype=np.float64))
    seen = Recorder()
    trainer = at.Trainer(seen, backend="inline", batch_size=100, shards=4, seed=3, shuffle="shard")
    async with trainer:
        await trainer.fit(rows, epochs=2)
    partitions = shard_partitions(len(data), batch_size=100, shards=4, seed=3)
    assert len(seen.rows) == 2 * len(data)
    for calls in (seen.rows[: len(data)], seen.rows[len(data) :]):
        assert sorted(calls) == list(range(len(data)))
    by_shard = seen.by_shard()
    for s, part in enumerate(partitions):
        assert by_shard[s] == set(part.tolist())


class Recorder:
    """A linear regression that records which rows (by their label) each shard reads."""

    n_features, n_classes, dtype, uses_key = 128, None, np.float64, True

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.shards: list[tuple[int, list[int]]] = []

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"w": np.zeros(128)}

    def loss_and_grad(self, params: Any, X: np.ndarray, y: np.ndarray, key: Any = None) -> Any:
        labels = [int(v) for v in y]
        self.rows += labels
        self.shards.append((key[2], labels))
        return 0.0, {"w": np.zeros(128)}

    def predict(self, params: Any, X: np.ndarray) -> np.ndarray:
        return np.zeros(len(X))

    def by_shard(self) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for shard, labels in self.shards:
            out.setdefault(shard, set()).update(labels)
        return out


async def test_without_shuffling_every_epoch_reads_the_rows_in_the_order_given(
    data: Dataset,
) -> None:
    rows = Dataset(data.X, np.arange(len(data), dtype=np.float64))
    seen = Recorder()
    trainer = at.Trainer(seen, backend="inline", batch_size=100, shards=4, seed=3, shuffle="none")
    async with trainer:
        await trainer.fit(rows, epochs=2)
    assert seen.rows == 2 * list(range(len(data)))


async def test_without_shuffling_a_fit_equals_a_shuffled_one_on_rows_put_in_its_order(
    data: Dataset, backend_name: str
) -> None:
    """The oracle: one epoch of the global shuffle reads the rows in ``epoch_order``'s
    order; put in that order first, the same rows train to the same bits unshuffled, on
    every backend and worker count."""
    if backend_name == "dask":
        pytest.skip("tests/test_dask.py covers Dask's epoch orders")
    shuffled = await _fit("inline", data, shuffle="global", epochs=1)
    order = at.data.epoch_order(len(data), seed=3, epoch=0)
    ordered = Dataset(data.X[order], data.y[order])
    for workers in (1, 2):
        result = await _fit(backend_name, ordered, shuffle="none", workers=workers, epochs=1)
        assert _bits(result.params) == _bits(shuffled.params), f"{backend_name}({workers})"


async def test_shard_shuffle_trains_another_order_than_the_global_one(data: Dataset) -> None:
    shard = await _fit("inline", data)
    whole = await _fit("inline", data, shuffle="global")
    assert _bits(shard.params) != _bits(whole.params)


def test_misuse_is_refused_naming_the_fix() -> None:
    model = SoftmaxRegression(128, 10)
    with pytest.raises(at.ConfigError, match="shuffle"):
        at.Trainer(model, shuffle="rows")
    with pytest.raises(at.ConfigError, match="async"):
        at.Trainer(model, mode="async", shuffle="shard")


async def test_a_stream_refuses_shard_shuffle(data: Dataset) -> None:
    trainer = at.Trainer(SoftmaxRegression(128, 10), backend="inline", shuffle="shard")
    batches = [(data.X[:100], data.y[:100])]
    async with trainer:
        with pytest.raises(at.ConfigError, match="stream"):
            await trainer.fit_stream(batches)
    # a stream's rows come in the order they arrive: unshuffled is what it does anyway
    results = []
    for shuffle in ("global", "none"):
        unshuffled = at.Trainer(SoftmaxRegression(128, 10), backend="inline", shuffle=shuffle)
        async with unshuffled:
            results.append(await unshuffled.fit_stream(batches))
    assert _bits(results[0].params) == _bits(results[1].params)


@pytest.mark.parametrize("shuffle", ["shard", "none"])
async def test_a_checkpoint_keeps_the_setting_and_a_resume_needs_it(
    data: Dataset, tmp_path: Path, shuffle: str
) -> None:
    model = SoftmaxRegression(128, 10)
    trainer = at.Trainer(model, backend="inline", batch_size=100, seed=3, shuffle=shuffle)
    async with trainer:
        await trainer.fit(data, epochs=1, checkpoint_dir=tmp_path)
    restored = await at.Trainer.restore(tmp_path, model, backend="inline")
    assert restored.config.shuffle == shuffle
    other = at.Trainer(model, backend="inline", batch_size=100, seed=3)
    with pytest.raises(at.CheckpointError, match="shuffle"):
        await other.load(tmp_path)


async def test_sparse_weighted_rows_are_partitioned_too() -> None:
    """A CSR X and sample weights travel with their partitions: the same bits on threads
    as inline, and not those of the unweighted fit."""
    sp = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(5)
    X = sp.random(900, 128, density=0.1, format="csr", random_state=5, dtype=np.float64)
    y = rng.integers(0, 10, 900)
    weighted = Dataset(X, y).with_weights(rng.uniform(0.0, 2.0, 900))
    fits = [await _fit(name, weighted) for name in ("inline", "thread")]
    assert _bits(fits[0].params) == _bits(fits[1].params)
    assert _bits((await _fit("inline", Dataset(X, y))).params) != _bits(fits[0].params)
