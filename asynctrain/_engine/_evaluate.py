"""Validation: loss and accuracy of the current parameters, computed on the backend."""

from __future__ import annotations

import math

from asynctrain._engine._tasks import gather_ordered
from asynctrain._engine._work import EvalResult, evaluate_chunk
from asynctrain.backends import Backend, SharedArrays
from asynctrain.data import shard_bounds

EVAL_CHUNK = 8192  # rows per evaluation task: big enough to amortise a task round trip


async def evaluate(
    model: object,
    backend: Backend,
    data: SharedArrays,
    n: int,
    params: SharedArrays,
    slot: int,
    *,
    carried: object = None,
) -> tuple[float, float]:
    """Mean loss and accuracy over ``n`` rows of ``data`` (accuracy NaN for regression).

    The rows are split into chunks evaluated concurrently and summed in chunk order.
    Tasks carry ``carried`` (the model's shipped handle) when given, else ``model``.
    """
    shipped = model if carried is None else carried
    chunks = max(1, -(-n // EVAL_CHUNK))
    results: list[EvalResult] = await gather_ordered(
        backend.run(evaluate_chunk, shipped, data, params, slot, start, stop)
        for start, stop in shard_bounds(n, chunks)
    )
    loss = sum(r.loss for r in results) / n
    if getattr(model, "n_classes", None) is None:
        return loss, math.nan
    return loss, sum(r.correct for r in results) / n
