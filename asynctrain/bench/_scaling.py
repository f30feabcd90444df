"""Scaling: epoch time with 1 worker over epoch time with 2, per backend.

Same problem, seed, batch size and shard count on both sides (so the same bits); only the
number of workers changes. With one worker the thread backend lets BLAS use every core
(``cores // workers`` threads), so the speed-up is that of worker parallelism over BLAS
threading, not over a single core. The process backend is measured when it is available.

Run alone: ``python -m asynctrain.bench._scaling [--quick]``.
"""

from __future__ import annotations

import sys

from asynctrain._config import DEFAULT_BATCH_SIZE, DEFAULT_SHARDS
from asynctrain.backends import get_backend
from asynctrain.bench._command import run_alone
from asynctrain.bench._figure import Figure, ratio_figure, skipped_figure
from asynctrain.bench._scale import command, dataset, repeats, samples
from asynctrain.bench._workloads import backend_available, timed_epochs
from asynctrain.data import Dataset

PROBLEMS = {"mlp": ">= 1.7", "softmax": ""}
BACKENDS = ("thread", "process")


async def _epoch_seconds(problem: str, data: Dataset, backend_name: str, workers: int) -> float:
    backend, _ = get_backend(backend_name, workers=workers)
    async with backend:
        await timed_epochs(problem, data, backend=backend, shards=DEFAULT_SHARDS)  # warm-up
        seconds, _ = await timed_epochs(problem, data, backend=backend, shards=DEFAULT_SHARDS)
    return seconds


async def _figure(problem: str, backend: str, quick: bool) -> Figure:
    name, cmd = f"scaling/{problem}/{backend}", command("scaling", quick)
    reference = f"1 worker, {backend} backend"
    missing = backend_available(backend)
    if missing:
        return skipped_figure(
            name, missing, unit="x", reference=reference, command=cmd, target=PROBLEMS[problem]
        )
    data = dataset(problem, samples(problem, quick))
    one, two = [], []
    for _ in range(repeats(quick)):
        one.append(await _epoch_seconds(problem, data, backend, 1))
        two.append(await _epoch_seconds(problem, data, backend, 2))
    details = {
        "epoch_seconds": {"1": min(one), "2": min(two)},
        "batch_size": DEFAULT_BATCH_SIZE,
        "shards": DEFAULT_SHARDS,
        "samples": len(data),
    }
    return ratio_figure(
        name, one, two, reference=reference, target=PROBLEMS[problem], command=cmd, details=details
    )


async def run(quick: bool) -> list[Figure]:
    """Speed-up from 1 to 2 workers on each backend, for the MLP and softmax problems."""
    return [await _figure(p, b, quick) for p in PROBLEMS for b in BACKENDS]


if __name__ == "__main__":
    sys.exit(run_alone("scaling"))
