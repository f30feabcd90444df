"""Ordered reduction: the same bits whatever order shard results arrive in."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from asynctrain._engine._step import collect_in_order
from asynctrain._engine._update import mean_in_place, sum_in_order
from asynctrain._engine._work import ShardResult
from asynctrain.backends import LocalShared


def _results(shards: int) -> tuple[list[ShardResult], LocalShared]:
    rng = np.random.default_rng(0)
    # Values of very different magnitudes make float32 addition order-sensitive.
    grads = [
        {"w": (rng.standard_normal(257) * 10.0 ** rng.integers(-6, 6)).astype(np.float32)}
        for _ in range(shards)
    ]
    shared = LocalShared({"w": np.zeros(257, np.float32)}, slots=shards)
    for s, g in enumerate(grads):
        shared.write(s, g)
    results = [ShardResult(0, s, 0, s, 10 + s, float(s) * 1e-3, 10.0 + s) for s in range(shards)]
    return results, shared


async def _deliver(results: list[ShardResult], seed: int) -> list[ShardResult]:
    queue: asyncio.Queue[ShardResult] = asyncio.Queue()
    delays = random.Random(seed).sample(range(len(results)), len(results))

    async def send(result: ShardResult, delay: int) -> None:
        await asyncio.sleep(delay * 0.001)
        queue.put_nowait(result)

    async with asyncio.TaskGroup() as group:
        for result, delay in zip(results, delays, strict=True):
            group.create_task(send(result, delay))
        ordered = await collect_in_order(queue, len(results))
    return ordered


async def test_arrival_order_does_not_change_the_bits() -> None:
    results, shared = _results(8)
    reference = {"w": np.zeros(257, np.float32)}
    expected = sum_in_order(results, shared, reference)
    for seed in range(10):
        ordered = await _deliver(results, seed)
        assert [r.shard for r in ordered] == list(range(8))
        out = {"w": np.zeros(257, np.float32)}
        assert sum_in_order(ordered, shared, out) == expected
        assert out["w"].tobytes() == reference["w"].tobytes()


def test_sum_matches_a_serial_sum_and_weights_by_samples() -> None:
    results, shared = _results(4)
    out = {"w": np.zeros(257, np.float32)}
    loss, n, weight = sum_in_order(results, shared, out)
    assert weight == float(n)
    manual = shared.read(0)["w"].copy()
    for s in range(1, 4):
        manual += shared.read(s)["w"]
    np.testing.assert_array_equal(out["w"], manual)
    assert n == 10 + 11 + 12 + 13
    assert loss == sum(r.loss for r in results)
    mean_in_place(out, n)
    np.testing.assert_allclose(out["w"], manual / n, rtol=1e-6)


def test_empty_shards_are_skipped() -> None:
    results, shared = _results(3)
    empty = results[1]._replace(n=0, loss=0.0, weight=0.0)
    out = {"w": np.zeros(257, np.float32)}
    _, n, _ = sum_in_order([results[0], empty, results[2]], shared, out)
    np.testing.assert_array_equal(out["w"], shared.read(0)["w"] + shared.read(2)["w"])
    assert n == results[0].n + results[2].n


def test_a_weighted_step_divides_by_the_weight_sum_and_a_weightless_one_stays_zero() -> None:
    results, shared = _results(2)
    weighted = [r._replace(weight=w) for r, w in zip(results, (2.5, 0.5), strict=True)]
    out = {"w": np.zeros(257, np.float32)}
    _, n, weight = sum_in_order(weighted, shared, out)
    assert (n, weight) == (10 + 11, 3.0)
    manual = shared.read(0)["w"] + shared.read(1)["w"]
    mean_in_place(out, weight)
    np.testing.assert_allclose(out["w"], manual / np.float32(3.0), rtol=1e-6)
    zeros = {"w": np.zeros(257, np.float32)}
    mean_in_place(zeros, 0.0)  # a batch whose rows all weigh 0: zero, not 0 / 0
    assert not zeros["w"].any()


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_mean_has_the_bits_of_sum_then_divide(shards: int, dtype: type) -> None:
    # The oracle is the plain two-pass reduction: copy shard 0 (cast to the slot's dtype,
    # as a shared-memory slot does), add the others in shard order, then divide by n.
    rng = np.random.default_rng(shards)
    arrays = [{"w": rng.standard_normal((33, 7)).astype(dtype)} for _ in range(shards)]
    shared = LocalShared(arrays[0], shards)
    for s, value in enumerate(arrays):
        shared.write(s, value)
    results = [ShardResult(0, s, 0, s, 3 + s, float(s), float(3 + s)) for s in range(shards)]
    expected = np.array(arrays[0]["w"], np.float32)
    for value in arrays[1:]:
        np.add(expected, value["w"].astype(np.float32), out=expected)
    n = sum(r.n for r in results)
    np.divide(expected, n, out=expected)
    out = {"w": np.full((33, 7), np.nan, np.float32)}
    assert sum_in_order(results, shared, out, mean=True) == (
        sum(r.loss for r in results),
        n,
        float(n),
    )
    assert out["w"].tobytes() == expected.tobytes()
