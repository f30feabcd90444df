"""Validation: loss, accuracy and chosen metrics of the current parameters, on the backend."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from asynctrain._engine._metrics import combine
from asynctrain._engine._tasks import gather_ordered
from asynctrain._engine._work import EvalResult, evaluate_chunk
from asynctrain.backends import Backend, SharedArrays
from asynctrain.data import shard_bounds

EVAL_CHUNK = 8192  # rows per evaluation task: big enough to amortise a task round trip

OffLoop = Callable[..., Awaitable[Any]]
"""Runs ``fn(*args)`` off the event loop and returns its result (``Updater.call``)."""


class Evaluation(NamedTuple):
    """Mean loss, accuracy (NaN for regression) and each chosen metric, by name.

    With sample weights in the data, loss and accuracy are weighted means; the metrics
    are not weighted."""

    loss: float
    accuracy: float
    metrics: dict[str, float]


async def evaluate(
    model: object,
    backend: Backend,
    data: SharedArrays,
    n: int,
    params: SharedArrays,
    slot: int,
    *,
    carried: object = None,
    metrics: tuple[str, ...] = (),
    off_loop: OffLoop | None = None,
    chunk: int = EVAL_CHUNK,
) -> Evaluation:
    """Evaluate the parameters in ``slot`` on ``n`` rows of ``data``.

    The rows are split into chunks of about ``chunk`` rows evaluated concurrently and
    summed in chunk order. Tasks carry ``carried`` (the model's shipped handle) when
    given, else ``model``. The chunks' parts of ``metrics`` are combined by ``off_loop``
    (the updater's thread): AUC sorts every score, which is no work for the loop.
    """
    shipped = model if carried is None else carried
    chunks = max(1, -(-n // chunk))
    results: list[EvalResult] = await gather_ordered(
        backend.run(evaluate_chunk, shipped, data, params, slot, start, stop, metrics)
        for start, stop in shard_bounds(n, chunks)
    )
    weight = sum(r.weight for r in results)
    loss = sum(r.loss for r in results) / weight
    accuracy = math.nan
    if getattr(model, "n_classes", None) is not None:
        accuracy = sum(r.correct for r in results) / weight
    values: dict[str, float] = {}
    if metrics:
        assert off_loop is not None, "metrics are combined off the loop"
        values = await off_loop(combine_all, metrics, results)
    return Evaluation(loss, accuracy, values)


def combine_all(metrics: tuple[str, ...], results: list[EvalResult]) -> dict[str, float]:
    """Every metric of ``metrics`` from the chunks' results, keyed ``val_<name>``."""
    parts = [r.parts or {} for r in results]
    return {f"val_{name}": combine(name, [p[name] for p in parts]) for name in metrics}
