"""Evaluation: loss, accuracy and chosen metrics of parameters, on the backend.

A fit's validation evaluates the parameters it has shared already (:func:`evaluate`);
``Trainer.evaluate`` shares its data, parameters and model for one evaluation and
releases them (:func:`evaluate_once`). Both are the same chunks summed in the same order,
so the same data and parameters give the same numbers bit for bit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from asynctrain._engine._context import arrays_of
from asynctrain._engine._metrics import combine
from asynctrain._engine._tasks import gather_ordered
from asynctrain._engine._work import EvalResult, evaluate_chunk, ship_model
from asynctrain._types import Params
from asynctrain.backends import Backend, SharedArrays
from asynctrain.data import Dataset, shard_bounds

EVAL_CHUNK = 8192  # rows per evaluation task: big enough to amortise a task round trip

OffLoop = Callable[..., Awaitable[Any]]
"""Runs ``fn(*args)`` off the event loop and returns its result (``Updater.call``)."""


class Evaluation(NamedTuple):
    """Mean loss, accuracy (NaN for regression) and each chosen metric, by its name
    (``"f1"``: a fit's events report it as ``val_f1``).

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


async def evaluate_once(
    model: object,
    backend: Backend,
    dataset: Dataset,
    params: Params,
    *,
    metrics: tuple[str, ...] = (),
    off_loop: OffLoop | None = None,
    chunk: int = EVAL_CHUNK,
) -> Evaluation:
    """:func:`evaluate` ``params`` on ``dataset`` outside a fit: share the data, the
    parameters and (for workers in other processes) the model's pickle with the open
    ``backend``, and release them when done, however it ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def share(arrays: Mapping[str, Any]) -> Any:
            handle = await backend.share(arrays, slots=1)
            stack.push_async_callback(backend.release, handle)
            return handle

        data = await share(arrays_of(dataset))
        shared = await share(params)
        carried = await ship_model(model, data, share)
        return await evaluate(
            model,
            backend,
            data,
            len(dataset),
            shared,
            0,
            carried=carried,
            metrics=metrics,
            off_loop=off_loop,
            chunk=chunk,
        )


def combine_all(metrics: tuple[str, ...], results: list[EvalResult]) -> dict[str, float]:
    """Every metric of ``metrics`` from the chunks' results, by name."""
    parts = [r.parts or {} for r in results]
    return {name: combine(name, [p[name] for p in parts]) for name in metrics}
