"""A fit's parts and its step context: what it shares with the backend once, released when
it ends."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from asynctrain._config import TrainConfig
from asynctrain._engine._prefetch import Prefetch
from asynctrain._engine._step import Mode, Partitions, StepContext, placement_for
from asynctrain._engine._update import Updater, zeros_like
from asynctrain._engine._work import ship_model
from asynctrain._monitor import LoopLagMonitor
from asynctrain._sparse import pack
from asynctrain.backends import Backend, SharedArrays
from asynctrain.data import Dataset, shard_bounds
from asynctrain.data._partition import shard_partitions


@dataclass(frozen=True)
class FitParts:
    """What one fit works with: the trainer hands these to the engine, and nothing else.

    ``lag`` is the fit's loop-lag monitor, if it has one (epoch events report it).
    """

    model: Any
    backend: Backend
    updater: Updater
    mode: Mode
    config: TrainConfig
    lag: LoopLagMonitor | None = None


@contextlib.asynccontextmanager
async def open_context(
    parts: FitParts,
    data: Mapping[str, Any] | SharedArrays,
    validation: Dataset | None,
    *,
    streaming: bool = False,
    partitions: list[Mapping[str, Any]] | None = None,
) -> AsyncIterator[tuple[StepContext, SharedArrays | None]]:
    """Share a fit's data, parameters, gradient buffers, validation data and (for workers
    in other processes) the model's pickle; release them when the block ends, however it
    ends.

    ``data`` is either the arrays to share (``{"X": ..., "y": ...}``) or a handle someone
    else shared and releases (a stream's ring of batch buffers). Parameter and gradient
    slot counts come from the fit's mode. With ``partitions`` (``shuffle="shard"``:
    each shard's rows, as :func:`partition_arrays` gives them) ``data`` is not shared:
    every partition is shared on its own instead.
    """
    backend, updater, mode = parts.backend, parts.updater, parts.mode
    shards, params = parts.config.shards, updater.state.params
    async with contextlib.AsyncExitStack() as stack:

        async def share(arrays: Mapping[str, Any], slots: int = 1) -> Any:
            handle = await backend.share(arrays, slots=slots)
            stack.push_async_callback(backend.release, handle)
            return handle

        placed = None
        if partitions is not None:
            handles = tuple([await share(part) for part in partitions])
            placed = Partitions(handles, _starts(partitions))
            shared_data = handles[0]
        else:
            shared_data = data if isinstance(data, SharedArrays) else await share(data)
        ctx = StepContext(
            model=parts.model,
            backend=backend,
            updater=updater,
            data=shared_data,
            params=await share(params, mode.param_slots(shards)),
            grads=await share(zeros_like(params), mode.grad_slots(shards)),
            batch_size=parts.config.batch_size,
            shards=shards,
            streaming=streaming,
            seed=parts.config.seed,
            shipped=await ship_model(parts.model, shared_data, share),
            partitions=placed,
            share=share,
            placement=placement_for(
                backend,
                parts.model,
                params,
                data,
                batch_size=parts.config.batch_size,
                shards=shards,
            ),
        )
        if _gathers_ahead(ctx, data):
            # A step's rows cut into its shards' as the step cuts them (shard_tasks)
            split = functools.lru_cache(maxsize=4)(functools.partial(shard_bounds, shards=shards))
            ctx.prefetch = prefetch = Prefetch(shared_data, split=split)
            stack.push_async_callback(prefetch.aclose)
        val = None if validation is None else await share(arrays_of(validation))
        yield ctx, val


def _gathers_ahead(ctx: StepContext, data: Mapping[str, Any] | SharedArrays) -> bool:
    """Whether the fit's steps gather their next rows ahead (:mod:`._prefetch`): on an
    in-memory dataset (not a stream's ring, not partitioned), on a backend of threads in
    this process; with dense features, steps of one shard.

    Not the inline backend: it runs a fit with no thread of its own (docs/backends.md).
    Not dense steps of several shards: measured side by side (1 worker, the views against
    gathering per shard, 8 MiB chunks), one-shard steps gained everywhere (logistic
    regression at batch 512 0.80 and 0.87×, at 2,048 0.82×; softmax at 1,024 0.91-0.93×;
    with the 2 MiB chunks kept: 0.93×, 0.85× and 0.86×), but several shards a step
    gained on softmax (batch 512 in 4 shards 0.91×) and lost on logistic regression
    (batch 512 in 2 shards 1.08-1.16×, in 4 shards 1.09-1.17×, and no chunk size from
    256 KiB to 32 MiB helped), for a reason not found. CSR rows gain at every shard count
    measured: their gather waits on memory row by row, and costs more than the products
    that read them (sparse logistic regression on the RCV1-shaped benchmark data on 1
    worker thread, an epoch's time, nine alternated: at batch 4,096 in 1 shard 0.71×, 2
    shards 0.70×, 4 shards 0.76×; at batch 512 in 4 shards 0.88×; at batch 256 in 1
    shard, on the loop, 1.00×).
    """
    threads = getattr(ctx.backend, "local", False) and not ctx.backend.inline
    if not threads or not isinstance(data, Mapping) or ctx.partitions is not None or ctx.streaming:
        return False
    if "X" in data:  # dense
        return ctx.shards == 1
    return "X.data" in data  # CSR (``pack``)


def partition_arrays(dataset: Dataset, batch_size: int, shards: int, seed: int) -> list[Any]:
    """The arrays of each shard's partition of ``dataset`` (``shuffle="shard"``), in
    shard order: the rows of :func:`~asynctrain.data._partition.shard_partitions`, copied."""
    rows = shard_partitions(len(dataset), batch_size=batch_size, shards=shards, seed=seed)
    return [arrays_of(dataset._take(part)) for part in rows]


def _starts(partitions: list[Mapping[str, Any]]) -> tuple[int, ...]:
    sizes = [len(part["y"]) for part in partitions]
    return tuple(sum(sizes[:s]) for s in range(len(sizes)))


def arrays_of(dataset: Dataset) -> dict[str, Any]:
    """The arrays of ``dataset`` as the backend shares them: ``X`` (a sparse ``X`` as its
    three arrays and its shape: see :func:`asynctrain._sparse.pack`), ``y`` and, for a
    weighted dataset, its sample weights ``w`` (which the workers gather with the rows)."""
    arrays = {**pack(dataset.X), "y": dataset.y}
    if dataset.sample_weight is not None:
        arrays["w"] = dataset.sample_weight
    return arrays
