"""What runs on a worker: one shard's loss and gradient, one chunk's evaluation.

These functions are module-level (picklable) and reach the data, parameters and gradient
buffers through :class:`~asynctrain.backends.SharedArrays` handles, so a task carries only
small values: the step, the shard, the parameter slot and the sample indices (or, for a
batch assembled from a stream, a data slot and a contiguous row range).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._engine._shipping import resolve_model
from asynctrain.backends import SharedArrays
from asynctrain.models._protocol import shard_loss_and_grad

Rows = npt.NDArray[np.int64] | range
"""Rows of a shard: sample indices into the data, or a contiguous range of one data slot."""


class ShardTask(NamedTuple):
    """One shard of one step: which samples (rows of data slot ``data_slot``), on which
    parameter version."""

    step: int
    shard: int
    version: int
    param_slot: int
    grad_slot: int
    indices: Rows
    data_slot: int = 0
    seed: int = 0
    """The trainer's seed: with ``step`` and ``shard`` it keys a model's randomness."""


class ShardResult(NamedTuple):
    """What a shard sends back; its gradient waits in the gradient slot ``grad_slot``."""

    step: int
    shard: int
    version: int
    grad_slot: int
    n: int
    loss: float


def compute_shard(
    model: Any,
    data: SharedArrays,
    params: SharedArrays,
    grads: SharedArrays,
    task: ShardTask,
) -> ShardResult:
    """Compute the summed loss and gradient of ``task``'s samples into its gradient slot.

    ``model`` is the model or its shipped handle (see :mod:`._shipping`).
    """
    arrays = data.read(task.data_slot)
    X, y = _rows(arrays["X"], task.indices), _rows(arrays["y"], task.indices)
    key = (task.seed, task.step, task.shard)
    current = params.read(task.param_slot)
    loss, shard_grads = shard_loss_and_grad(resolve_model(model), current, X, y, key)
    grads.write(task.grad_slot, shard_grads)
    return ShardResult(task.step, task.shard, task.version, task.grad_slot, len(y), float(loss))


def _rows(array: npt.NDArray[Any], rows: Rows) -> npt.NDArray[Any]:
    # A range is copied too, not viewed: the shard then computes on a fresh array exactly
    # as with gathered indices, so a stream gives the same bits as the in-memory dataset.
    if isinstance(rows, range):
        return array[rows.start : rows.stop].copy()
    return np.take(array, rows, axis=0)


class EvalResult(NamedTuple):
    """Summed loss and count of correct predictions over a chunk of a dataset."""

    loss: float
    correct: int
    n: int


def evaluate_chunk(
    model: Any, data: SharedArrays, params: SharedArrays, slot: int, start: int, stop: int
) -> EvalResult:
    """Evaluate rows ``start:stop``: loss sum and, for classifiers, correct predictions."""
    model = resolve_model(model)
    arrays = data.read(0)
    X, y = arrays["X"][start:stop], arrays["y"][start:stop]
    current = params.read(slot)
    loss, _ = model.loss_and_grad(current, X, y)
    correct = 0
    if getattr(model, "n_classes", None) is not None:
        correct = int(np.count_nonzero(model.predict(current, X) == y))
    return EvalResult(float(loss), correct, stop - start)
