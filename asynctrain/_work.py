"""What runs on a worker: one shard's loss and gradient, one chunk's evaluation.

These functions are module-level (picklable) and reach the data, parameters and gradient
buffers through :class:`~asynctrain.backends.SharedArrays` handles, so a task carries only
small values: the step, the shard, the parameter slot and the sample indices.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain.backends import SharedArrays


class ShardTask(NamedTuple):
    """One shard of one step: which samples, on which parameter version."""

    step: int
    shard: int
    version: int
    param_slot: int
    grad_slot: int
    indices: npt.NDArray[np.int64]


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
    """Compute the summed loss and gradient of ``task``'s samples into its gradient slot."""
    arrays = data.read(0)
    X = np.take(arrays["X"], task.indices, axis=0)
    y = np.take(arrays["y"], task.indices, axis=0)
    loss, shard_grads = model.loss_and_grad(params.read(task.param_slot), X, y)
    grads.write(task.grad_slot, shard_grads)
    return ShardResult(task.step, task.shard, task.version, task.grad_slot, len(y), float(loss))


class EvalResult(NamedTuple):
    """Summed loss and count of correct predictions over a chunk of a dataset."""

    loss: float
    correct: int
    n: int


def evaluate_chunk(
    model: Any, data: SharedArrays, params: SharedArrays, slot: int, start: int, stop: int
) -> EvalResult:
    """Evaluate rows ``start:stop``: loss sum and, for classifiers, correct predictions."""
    arrays = data.read(0)
    X, y = arrays["X"][start:stop], arrays["y"][start:stop]
    current = params.read(slot)
    loss, _ = model.loss_and_grad(current, X, y)
    correct = 0
    if getattr(model, "n_classes", None) is not None:
        correct = int(np.count_nonzero(model.predict(current, X) == y))
    return EvalResult(float(loss), correct, stop - start)
