"""Gathering ahead (``asynctrain._engine._prefetch``): the same bits, nothing left behind.

The oracle is the same fit with gathering ahead switched off, where every shard gathers
its own rows (as the process backend's always do), compared bit for bit. Each test also
checks that steps did take gathered rows, so a change that quietly stops gathering ahead
fails here rather than passing on the old path. The autouse leak fixture fails a test
that leaves the gather thread running. Every test runs as on a machine of two cores
(``two_cores``): gathering ahead needs a core the step leaves free.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from _reliability import state_bits

import asynctrain as at
from asynctrain._engine import _context, _prefetch
from asynctrain._engine import _step as step_module
from asynctrain._engine._prefetch import Prefetch
from asynctrain._sparse import pack
from asynctrain.backends import LocalShared
from asynctrain.data import Dataset, synthetic
from asynctrain.models import MLP, SoftmaxRegression


class Taken:
    """Counts the steps that took gathered rows (``Prefetch.take`` not None)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gathered = 0
        real = Prefetch.take

        async def take(prefetch: Prefetch, indices: Any) -> Any:
            shards = await real(prefetch, indices)
            self.gathered += shards is not None
            return shards

        monkeypatch.setattr(Prefetch, "take", take)


@pytest.fixture(autouse=True)
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process may run on two cores, whatever this machine has."""
    monkeypatch.setattr(_prefetch, "default_workers", lambda: 2)


@pytest.fixture
def any_shard_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gather ahead for steps of several shards too (the default is one-shard steps only:
    ``_context._gathers_ahead``), so the machinery is held to the bits there as well."""
    real = _context._gathers_ahead

    def gathers_ahead(ctx: Any, data: Any) -> bool:
        return bool(real(dataclasses.replace(ctx, shards=1), data))

    monkeypatch.setattr(_context, "_gathers_ahead", gathers_ahead)


def _data(weighted: bool, csr: bool = False) -> Dataset:
    # Not a multiple of any batch below (CSR steps, slower, on fewer rows).
    data = synthetic("softmax", n=410 if csr else 1_000, seed=3)
    X = _sparse_rows(data.X) if csr else data.X
    weights = None
    if weighted:
        weights = np.random.default_rng(4).uniform(0.0, 3.0, len(data)).astype(np.float32)
    return Dataset(X, data.y, sample_weight=weights)


def _sparse_rows(X: np.ndarray) -> Any:
    """``X`` as CSR with about a tenth of its values kept, and some rows left empty."""
    sparse = pytest.importorskip("scipy.sparse")
    keep = np.random.default_rng(5).random(X.shape) < 0.1
    keep[::7] = False
    return sparse.csr_array(np.where(keep, X, 0.0))


async def _fit(model: Any, data: Dataset, workers: int, shards: int, batch: int) -> Any:
    async with at.Trainer(
        model,
        at.optim.adam(0.01),
        backend="thread",
        workers=workers,
        shards=shards,
        batch_size=batch,
        seed=7,
    ) as trainer:
        await trainer.fit(data, epochs=2)
        return state_bits(trainer.state)


CASES = [
    (1, 1, 64),
    (1, 3, 50),
    (1, 4, 9),  # the last batch, 1 row, leaves 3 shards empty
    (2, 1, 64),
    (2, 4, 60),
]


@pytest.mark.parametrize(("workers", "shards", "batch"), CASES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.usefixtures("any_shard_count")
async def test_gathered_ahead_gives_the_bits_of_gathering_per_shard(
    monkeypatch: pytest.MonkeyPatch, workers: int, shards: int, batch: int, weighted: bool
) -> None:
    monkeypatch.setattr(step_module, "LOOP_BUDGET", 1.0)  # every step on the loop
    data, model = _data(weighted), SoftmaxRegression(128, 10)
    taken = Taken(monkeypatch)
    ahead = await _fit(model, data, workers, shards, batch)
    assert taken.gathered > 0
    monkeypatch.setattr(_context, "_gathers_ahead", lambda *args: False)
    assert await _fit(model, data, workers, shards, batch) == ahead


@pytest.mark.usefixtures("any_shard_count")
async def test_rows_gathered_on_the_loop_reach_the_workers_as_they_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Steps alternate between the loop and 2 worker threads: chunks gathered while the
    loop computes are taken by the steps that go to the workers too."""
    turns = itertools.count()

    def tasks(self: Any, shards: int, workers: int, *, local: bool = False) -> int:
        return 0 if next(turns) % 2 else shards

    monkeypatch.setattr(step_module.Placement, "tasks", tasks)
    data, model = _data(weighted=True), MLP((128, 16, 10))
    taken = Taken(monkeypatch)
    ahead = await _fit(model, data, 2, 2, 40)
    assert taken.gathered > 10
    monkeypatch.setattr(_context, "_gathers_ahead", lambda *args: False)
    assert await _fit(model, data, 2, 2, 40) == ahead


@pytest.mark.parametrize(("workers", "shards", "batch"), CASES)
@pytest.mark.parametrize("on_loop", [True, False])
async def test_csr_rows_gathered_ahead_give_the_bits_of_gathering_per_shard(
    monkeypatch: pytest.MonkeyPatch, workers: int, shards: int, batch: int, on_loop: bool
) -> None:
    """Sparse rows are gathered ahead at every shard count, and cut into their shards as
    views of the chunk: on the loop, or in one task on a worker thread (the other core is
    free), with sample weights."""

    def tasks(self: Any, shards: int, workers: int, *, local: bool = False) -> int:
        return 0 if on_loop else 1

    monkeypatch.setattr(step_module.Placement, "tasks", tasks)
    data, model = _data(weighted=True, csr=True), SoftmaxRegression(128, 10)
    taken = Taken(monkeypatch)
    ahead = await _fit(model, data, workers, shards, batch)
    assert taken.gathered > 0
    monkeypatch.setattr(_context, "_gathers_ahead", lambda *args: False)
    assert await _fit(model, data, workers, shards, batch) == ahead


@pytest.mark.parametrize("csr", [False, True])
async def test_steps_on_workers_gather_ahead_only_with_a_core_to_spare(
    monkeypatch: pytest.MonkeyPatch, csr: bool
) -> None:
    """One worker thread leaves the second core to the gather thread; two spread over
    both cores leave none, and their steps gather per shard."""
    taken = Taken(monkeypatch)
    data, model = _data(weighted=False, csr=csr), MLP((128, 16, 10))
    monkeypatch.setattr(step_module, "LOOP_BUDGET", 0.0)  # every step to the workers
    one = await _fit(model, data, 1, 2 if csr else 1, 64)
    assert taken.gathered > 0
    taken.gathered = 0

    def spread(self: Any, shards: int, workers: int, *, local: bool = False) -> int:
        return min(shards, workers)

    monkeypatch.setattr(step_module.Placement, "tasks", spread)
    both = await _gather_threads_during(_fit(model, _data(False, csr), 2, 2, 64))
    assert taken.gathered == 0
    assert both == set()
    monkeypatch.setattr(_context, "_gathers_ahead", lambda *args: False)
    assert await _fit(model, data, 1, 2 if csr else 1, 64) == one


async def test_no_gathering_ahead_for_streams_the_inline_backend_or_dense_shards() -> None:
    data = synthetic("softmax", n=200, seed=1)

    def stream() -> Iterator[tuple[Any, Any]]:
        for start in range(0, 200, 50):
            yield data.X[start : start + 50], data.y[start : start + 50]

    model = SoftmaxRegression(128, 10)
    async with at.Trainer(model, backend="thread", workers=1, batch_size=50, shards=1) as trainer:
        assert await _gather_threads_during(trainer.fit_stream(stream())) == set()
        assert await _gather_threads_during(trainer.fit(data, epochs=2)) != set()  # the oracle
    async with at.Trainer(model, backend="inline", batch_size=50, shards=1) as trainer:
        assert await _gather_threads_during(trainer.fit(data, epochs=2)) == set()
    async with at.Trainer(model, backend="thread", workers=1, batch_size=50) as trainer:
        assert trainer.config.shards > 1  # the default: steps of several shards
        assert await _gather_threads_during(trainer.fit(data, epochs=2)) == set()
    async with at.Trainer(model, backend="thread", workers=1, batch_size=50, shards=1) as trainer:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_prefetch, "default_workers", lambda: 1)  # no core to spare
            assert await _gather_threads_during(trainer.fit(data, epochs=2)) == set()


async def _gather_threads_during(fit: Any) -> set[str]:
    seen: set[str] = set()

    async def watch() -> None:
        while True:
            seen.update(_gather_threads())
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(watch())
    try:
        await fit
    finally:
        watcher.cancel()
    return seen


def _gather_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("asynctrain-gather")}


# -- failures and cancellation ---------------------------------------------------------


@pytest.fixture
def slow_gathers(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Every chunk gathered ahead takes 50 ms; the event is set when the third starts."""
    starts, third = itertools.count(1), threading.Event()
    real = _prefetch.gather

    def gather(arrays: Any, rows: Any) -> Any:
        if next(starts) == 3:
            third.set()
        time.sleep(0.05)
        return real(arrays, rows)

    monkeypatch.setattr(_prefetch, "gather", gather)
    return third


@pytest.mark.parametrize(
    ("workers", "shards", "on_loop", "csr"),
    [(1, 1, True, False), (2, 1, True, False), (1, 2, False, True)],  # the last on a worker
)
async def test_a_fit_cancelled_while_a_chunk_is_gathered_stops_and_leaves_no_thread(
    monkeypatch: pytest.MonkeyPatch,
    slow_gathers: threading.Event,
    workers: int,
    shards: int,
    on_loop: bool,
    csr: bool,
) -> None:
    monkeypatch.setattr(step_module, "LOOP_BUDGET", 1.0 if on_loop else 0.0)
    data = synthetic("softmax", n=2_000, seed=2)
    if csr:
        data = Dataset(_sparse_rows(data.X), data.y)
    async with at.Trainer(
        SoftmaxRegression(128, 10),
        backend="thread",
        workers=workers,
        batch_size=20,
        shards=shards,
        seed=1,
    ) as trainer:
        fit = asyncio.ensure_future(trainer.fit(data, epochs=1))
        assert await asyncio.to_thread(slow_gathers.wait, 10)
        fit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fit
        assert _gather_threads() == set()  # joined before the cancellation came back
        step = trainer.state.step
    # The state is a whole step: the same fit, uninterrupted up to it, ends on its bits.
    async with at.Trainer(
        SoftmaxRegression(128, 10), backend="inline", batch_size=20, shards=shards, seed=1
    ) as reference:
        steps = reference.steps(data, epochs=1)
        async with contextlib.aclosing(steps):
            async for event in steps:
                if event.kind == "step" and reference.state.step == step:
                    break
        assert state_bits(reference.state) == state_bits(trainer.state)


async def test_a_failed_gather_fails_its_step_with_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = itertools.count()
    real = _prefetch.gather

    def gather(arrays: Any, rows: Any) -> Any:
        if next(calls) == 2:
            raise MemoryError("no room for the chunk")
        return real(arrays, rows)

    monkeypatch.setattr(_prefetch, "gather", gather)
    data = synthetic("softmax", n=2_000, seed=2)
    async with at.Trainer(
        SoftmaxRegression(128, 10), backend="thread", workers=1, batch_size=20, shards=1
    ) as trainer:
        with pytest.raises(MemoryError, match="no room"):
            await trainer.fit(data, epochs=1)
        assert trainer.state.step > 0
        result = await trainer.fit(data, epochs=1)  # the trainer goes on
    assert result.steps > 0
    assert _gather_threads() == set()


@pytest.mark.parametrize("csr", [False, True])
async def test_two_fits_at_once_each_gather_their_own_rows(
    monkeypatch: pytest.MonkeyPatch, csr: bool
) -> None:
    data = [synthetic("softmax", n=600, seed=s) for s in (1, 2)]
    if csr:
        data = [Dataset(_sparse_rows(d.X), d.y) for d in data]
    taken = Taken(monkeypatch)

    async def fit(d: Dataset) -> Any:
        async with at.Trainer(
            SoftmaxRegression(128, 10),
            backend="thread",
            workers=1,
            batch_size=30,
            shards=1,
            seed=3,
        ) as trainer:
            await trainer.fit(d, epochs=2)
            return state_bits(trainer.state)

    together = await asyncio.gather(fit(data[0]), fit(data[1]))
    assert taken.gathered > 0  # the two fits' steps took rows gathered ahead
    assert together == [await fit(data[0]), await fit(data[1])]


# -- the schedule ----------------------------------------------------------------------


def _prefetch_of(rows: int, features: int, csr: bool = False) -> tuple[Prefetch, Any]:
    """A prefetch of one shard a step over ``rows`` rows and the features it gathers from:
    dense, or CSR storing half of each row (in float32 with int32 column indices, as many
    bytes a row as the dense rows)."""
    X: Any = np.arange(1, rows * features + 1, dtype=np.float32).reshape(rows, features)
    if csr:
        X[:, features // 2 :] = 0.0
        X = pytest.importorskip("scipy.sparse").csr_array(X)
    data = LocalShared({**pack(X), "y": np.arange(rows)}, 1)
    return Prefetch(data, split=lambda n: [(0, n)]), X


def _dense(X: Any) -> np.ndarray:
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


@pytest.mark.parametrize("csr", [False, True])
async def test_chunks_double_from_one_step_and_stop_at_the_byte_budget(
    monkeypatch: pytest.MonkeyPatch, csr: bool
) -> None:
    monkeypatch.setattr(_prefetch, "CHUNK_BYTES", 10 * 4 * 4 * 8)  # 8 steps of 10 rows
    prefetch, X = _prefetch_of(1_000, 4, csr)
    order = np.random.default_rng(0).permutation(1_000)
    batches = [order[i : i + 10] for i in range(0, 1_000, 10)]
    sizes = []
    prefetch.begin(batches)
    try:
        for indices in batches:
            shards = await prefetch.take(indices)
            if shards is not None:
                assert np.array_equal(_dense(shards[0].X), _dense(X[indices]))
                assert np.array_equal(shards[0].y, indices)
            planned = prefetch._planned
            prefetch.ahead()
            if prefetch._planned != planned:
                sizes.append(prefetch._planned - planned)
    finally:
        await prefetch.aclose()
    assert sizes[:5] == [1, 2, 4, 8, 8]
    assert sum(sizes) == len(batches) - 1  # every step but the first, gathered once


async def test_after_steps_not_gathered_ahead_chunks_start_again_from_one_step() -> None:
    prefetch, _ = _prefetch_of(1_000, 4)
    batches = [np.arange(i, i + 10) for i in range(0, 1_000, 10)]
    sizes = []

    async def step(ahead: bool) -> None:
        await prefetch.take(batches[len(sizes)])
        planned = prefetch._planned
        if ahead:
            prefetch.ahead()
        sizes.append(prefetch._size if prefetch._planned != planned else 0)  # a chunk's steps

    prefetch.begin(batches)
    try:
        for ahead in [True] * 8 + [False] * 20 + [True] * 4:  # on the loop, workers, loop
            await step(ahead)
    finally:
        await prefetch.aclose()
    assert sizes[:8] == [1, 2, 4, 0, 8, 0, 0, 0]
    assert sizes[28:] == [1, 2, 4, 0]  # not a chunk of 16 the next step would wait for


async def test_rows_not_begun_or_of_another_epoch_are_not_taken() -> None:
    prefetch, X = _prefetch_of(100, 3)
    first = [np.arange(10), np.arange(10, 20), np.arange(20, 30)]
    try:
        assert await prefetch.take(np.arange(5)) is None  # nothing begun
        prefetch.begin(first)
        assert await prefetch.take(first[0]) is None
        prefetch.ahead()  # step 1's rows
        second = [np.arange(30, 40), np.arange(40, 50)]
        prefetch.begin(second)  # step 1's chunk is dropped
        assert await prefetch.take(second[0]) is None
        prefetch.ahead()
        (shard,) = await prefetch.take(second[1]) or [None]
        assert shard is not None
        assert np.array_equal(shard.X, X[40:50])
        assert await prefetch.take(first[1]) is None
    finally:
        await prefetch.aclose()
    assert _gather_threads() == set()


async def test_a_step_on_every_core_leaves_none_spare() -> None:
    prefetch, X = _prefetch_of(100, 3)  # two cores (two_cores)
    batches = [np.arange(i, i + 10) for i in range(0, 100, 10)]
    prefetch.begin(batches)
    try:
        await prefetch.take(batches[0])
        assert not prefetch.spare(busy=2)  # two worker tasks: no core for the gather thread
        assert await prefetch.take(batches[1]) is None
        assert prefetch.spare(busy=1)
        prefetch.ahead()
        (shard,) = await prefetch.take(batches[2]) or [None]
        assert shard is not None
        assert np.array_equal(shard.X, X[20:30])
    finally:
        await prefetch.aclose()
    assert _gather_threads() == set()
