"""Scaling: epoch time with 1 worker over epoch time with 2 workers, per backend.

Same problem, seed, batch size and shard count on every side (so the same bits); only
the workers change. A worker is a core: with 1 worker, BLAS is held to one thread, so the
figure is the speed-up from one core to two (the thread backend holds BLAS to one thread
whatever its workers; a process backend's workers hold their own). Both backends are
open at once and take turns, an epoch each, the first going first every other repeat,
so the machine's drift hits both sides alike and each repeat's ratio compares epochs
measured side by side.

``scaling/ceiling`` is what the machine itself allows at that moment: the speed-up of
pure float32 matmuls (no framework, one BLAS thread each) on 2 threads over 1. On a
dedicated 2-core machine it is close to 2; on a shared one, whatever the neighbours leave.

Run alone: ``python -m benchmarks._scaling [--quick]``.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from asynctrain.backends import get_backend
from asynctrain.data import Dataset
from benchmarks._command import run_alone
from benchmarks._figure import Figure, ratio_figure, skipped_figure, time_async
from benchmarks._scale import command, dataset, level, repeats, samples
from benchmarks._workloads import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SHARDS,
    backend_available,
    head,
    timed_epochs,
)


class Config(NamedTuple):
    """One scaling figure: a problem at a batch size and shard count, and its target."""

    problem: str
    batch_size: int
    shards: int
    target: str
    suffix: str = ""


# The MLP's headline gives each of the 2 workers one task per step, of 2,048 samples (about
# 5 ms of math on one core, within the task sizes docs/backends.md recommends); the
# default batch and shard count (128-sample tasks, where per-task and per-step costs
# dominate) are reported beside it. There, and on the linear problems whose shards compute
# for microseconds, the target is that 2 workers are never slower than 1 (issue 20, goal
# 5): a step groups shards too small to pay for their hand-off (docs/backends.md).
NEVER_SLOWER = ">= 1.0"
CONFIGS = (
    Config("mlp", 4096, 2, ">= 1.7"),
    Config("mlp", DEFAULT_BATCH_SIZE, DEFAULT_SHARDS, NEVER_SLOWER, "/b512"),
    Config("softmax", DEFAULT_BATCH_SIZE, DEFAULT_SHARDS, NEVER_SLOWER),
    Config("logreg", DEFAULT_BATCH_SIZE, DEFAULT_SHARDS, NEVER_SLOWER),
)
BACKENDS = ("thread", "process")


async def paired_epoch_times(
    problem: str,
    data: Dataset,
    backend_name: str,
    *,
    times: int,
    batch_size: int,
    shards: int,
) -> tuple[list[float], list[float]]:
    """``times`` epoch times with 1 worker and with 2: two backends open at once, taking
    turns (after a few warm-up steps each), BLAS held to one thread."""
    sides = {w: get_backend(backend_name, workers=w)[0] for w in (1, 2)}
    epoch = functools.partial(timed_epochs, problem, shards=shards, batch_size=batch_size)
    seconds: dict[int, list[float]] = {1: [], 2: []}
    async with sides[1], sides[2]:
        with threadpool_limits(1, user_api="blas"):
            for backend in sides.values():
                await epoch(head(data), backend=backend)
            for i in range(times):
                for workers in (1, 2) if i % 2 == 0 else (2, 1):
                    seconds[workers].append((await epoch(data, backend=sides[workers]))[0])
    return seconds[1], seconds[2]


async def _figures(config: Config, backend: str, quick: bool) -> list[Figure]:
    problem, batch, target = config.problem, config.batch_size, config.target
    name, cmd = f"scaling/{problem}/{backend}{config.suffix}", command("scaling", quick)
    missing = backend_available(backend)
    if missing:
        return [
            skipped_figure(
                name, missing, unit="x", reference="1 worker", command=cmd, target=target
            )
        ]
    data, r = dataset(problem, samples(problem, quick)), repeats(quick)
    size = {"batch_size": batch, "shards": config.shards}
    one, two = await paired_epoch_times(problem, data, backend, times=r, **size)
    details = {
        "epoch_seconds": {"1": min(one), "2": min(two)},
        **size,
        "samples": len(data),
    }
    return [
        ratio_figure(
            name,
            one,
            two,
            reference=f"1 worker (1 core), {backend}, batch {batch} in {config.shards} shards",
            target=target,
            command=cmd,
            details=details,
        )
    ]


def _matmuls(a: npt.NDArray[np.float32], count: int) -> None:
    for _ in range(count):
        a @ a


async def ceiling(quick: bool) -> Figure:
    """Speed-up of plain matmuls on 2 threads over 1: the machine's own limit right now."""
    a = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    count = {"full": 400, "quick": 200, "smoke": 20}[level(quick)]
    one, two = [], []
    with threadpool_limits(1, user_api="blas"):
        for _ in range(repeats(quick)):
            one.append(await time_async(lambda: asyncio.to_thread(_matmuls, a, 2 * count)))
            two.append(
                await time_async(
                    lambda: asyncio.gather(*(asyncio.to_thread(_matmuls, a, count) for _ in "ab"))
                )
            )
    return ratio_figure(
        "scaling/ceiling",
        one,
        two,
        command=command("scaling", quick),
        reference="the same matmuls on 1 thread (no framework)",
    )


async def run(quick: bool) -> list[Figure]:
    """Speed-up from 1 to 2 workers on each backend, for every reference problem."""
    figures: list[Figure] = [await ceiling(quick)]
    for config in CONFIGS:
        for backend in BACKENDS:
            figures += await _figures(config, backend, quick)
    return figures


if __name__ == "__main__":
    sys.exit(run_alone("scaling"))
