"""A fit's step context: what it shares with the backend once, released when it ends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from asynctrain._engine import StepContext
from asynctrain._engine._reduce import zeros_like
from asynctrain.backends import SharedArrays
from asynctrain.data import Dataset

if TYPE_CHECKING:
    from asynctrain._trainer import Trainer


@contextlib.asynccontextmanager
async def open_context(
    trainer: Trainer,
    data: Mapping[str, Any] | SharedArrays,
    validation: Dataset | None,
    *,
    streaming: bool = False,
) -> AsyncIterator[tuple[StepContext, SharedArrays | None]]:
    """Share a fit's data, parameters, gradient buffers and validation data; release them
    when the block ends, however it ends.

    ``data`` is either the arrays to share (``{"X": ..., "y": ...}``) or a handle someone
    else shared and releases (a stream's ring of batch buffers). Parameter and gradient
    slot counts come from the trainer's mode.
    """
    backend, updater, mode = trainer.backend, trainer._updater, trainer.mode
    assert updater is not None, "open the trainer first"
    shards, params = trainer.config.shards, updater.state.params
    async with contextlib.AsyncExitStack() as stack:

        async def share(arrays: Mapping[str, Any], slots: int = 1) -> Any:
            handle = await backend.share(arrays, slots=slots)
            stack.push_async_callback(backend.release, handle)
            return handle

        ctx = StepContext(
            model=trainer.model,
            backend=backend,
            updater=updater,
            data=data if isinstance(data, SharedArrays) else await share(data),
            params=await share(params, mode.param_slots(shards)),
            grads=await share(zeros_like(params), mode.grad_slots(shards)),
            batch_size=trainer.config.batch_size,
            shards=shards,
            streaming=streaming,
        )
        val = None if validation is None else await share(arrays_of(validation))
        yield ctx, val


def arrays_of(dataset: Dataset) -> dict[str, Any]:
    """The arrays of ``dataset`` as the backend shares them."""
    return {"X": dataset.X, "y": dataset.y}
