"""Ordered, sample-weighted reduction of shard results taken off an ``asyncio.Queue``.

Shards finish in any order; their results are summed in SHARD order, so the same seed and
shard count give the same bits whichever executor ran them and however many workers it had.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from asynctrain._engine._work import ShardResult
from asynctrain._types import Grads
from asynctrain.backends import SharedArrays


async def collect_in_order(queue: asyncio.Queue[ShardResult], shards: int) -> list[ShardResult]:
    """Take ``shards`` results of one step off ``queue`` and return them in shard order.

    No array math happens here (this runs on the event loop); summing is
    :func:`sum_in_order`'s job on the updater.
    """
    slots: list[ShardResult | None] = [None] * shards
    for _ in range(shards):
        result = await queue.get()
        slots[result.shard] = result
    return [r for r in slots if r is not None]


def sum_in_order(
    results: Sequence[ShardResult], grads: SharedArrays, out: Grads
) -> tuple[float, int]:
    """Sum the results' gradients into ``out`` in the given order; return (loss sum, n).

    ``out`` is caller-owned scratch (overwritten). Shards with no samples are skipped. The
    gradient is divided by the total sample count by :func:`mean_in_place` afterwards.
    """
    first = True
    loss, n = 0.0, 0
    for result in results:
        if result.n == 0:
            continue
        shard_grads = grads.read(result.grad_slot)
        for key, acc in out.items():
            if first:
                np.copyto(acc, shard_grads[key])
            else:
                np.add(acc, shard_grads[key], out=acc)
        first = False
        loss += result.loss
        n += result.n
    return loss, n


def mean_in_place(grads: Grads, n: int) -> None:
    """Divide summed gradients by the sample count ``n``, in place."""
    for value in grads.values():
        np.divide(value, n, out=value)


def zeros_like(params: dict[str, Any]) -> Grads:
    """Fresh zero arrays with the shapes and dtypes of ``params``."""
    return {key: np.zeros_like(value) for key, value in params.items()}
