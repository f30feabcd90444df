"""Framework overhead: asynctrain (inline, 1 shard) vs the same math in a numpy loop.

Both sides train one epoch of each reference problem from the same parameters, on the
same batches (``epoch_order``), with Adam at the default batch size, and must end on the
same parameters (``details["param_rel_diff"]``). The ratio is asynctrain's epoch time over
the loop's, paired per repeat. BLAS runs one thread on both sides: the figure is the cost
of the framework, not of BLAS threading. An informational second figure per problem runs
the thread backend (1 worker, 1 shard) to show the cost of leaving the event loop.

Run alone: ``python -m benchmarks._overhead [--quick]``.
"""

from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from asynctrain.backends import ThreadBackend
from asynctrain.data import Dataset
from benchmarks._command import run_alone
from benchmarks._figure import Figure, ratio_figure
from benchmarks._handwritten import Arrays, train_epochs
from benchmarks._scale import command, dataset, repeats, samples
from benchmarks._workloads import (
    DEFAULT_BATCH_SIZE,
    LEARNING_RATE,
    head,
    initial_params,
    per_problem,
    timed_epochs,
)

TARGET = "<= 1.10"


def relative_difference(a: Arrays, b: Arrays) -> float:
    """Largest ``||a[k] - b[k]|| / ||b[k]||`` over the parameters (0 for equal bits)."""
    worst = 0.0
    for key, ref in b.items():
        scale = float(np.linalg.norm(ref)) or 1.0
        worst = max(worst, float(np.linalg.norm(a[key].astype(np.float64) - ref)) / scale)
    return worst


def _numpy_epoch(problem: str, data: Dataset, start: Arrays) -> tuple[float, Arrays]:
    began = time.perf_counter()
    params = train_epochs(problem, start, data, lr=LEARNING_RATE, batch_size=DEFAULT_BATCH_SIZE)
    return time.perf_counter() - began, params


async def _thread_epoch(problem: str, data: Dataset) -> float:
    async with ThreadBackend(workers=1) as backend:
        with _one_blas_thread():  # after opening: the backend sets its own limit then
            return (await timed_epochs(problem, data, backend=backend))[0]


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    limit: contextlib.AbstractContextManager[object] = threadpool_limits(1, user_api="blas")
    return limit


async def _problem(problem: str, quick: bool) -> list[Figure]:
    data = dataset(problem, samples(problem, quick))
    start = initial_params(problem)
    ours, theirs, threads, diff = [], [], [], 0.0
    with _one_blas_thread():
        await timed_epochs(problem, head(data))  # warm-up
        for i in range(repeats(quick)):
            if i % 2:  # alternate who goes first, so drift hits both sides alike
                hand, ref = _numpy_epoch(problem, data, start)
                seconds, params = await timed_epochs(problem, data)
            else:
                seconds, params = await timed_epochs(problem, data)
                hand, ref = _numpy_epoch(problem, data, start)
            ours.append(seconds)
            theirs.append(hand)
            diff = max(diff, relative_difference(params, ref))
    for _ in range(repeats(quick)):
        threads.append(await _thread_epoch(problem, data))
    details = {"samples": len(data), "batch_size": DEFAULT_BATCH_SIZE, "param_rel_diff": diff}
    cmd = command("overhead", quick)
    return [
        ratio_figure(
            f"overhead/{problem}",
            ours,
            theirs,
            reference="numpy loop, same batches and Adam",
            target=TARGET,
            command=cmd,
            details=details,
        ),
        ratio_figure(
            f"overhead/{problem}/thread",
            threads,
            theirs,
            reference="numpy loop (thread backend, 1 worker, 1 shard)",
            command=cmd,
            details=details,
        ),
    ]


async def run(quick: bool) -> list[Figure]:
    """Overhead figures for the three reference problems."""
    return await per_problem(_problem, quick)


if __name__ == "__main__":
    sys.exit(run_alone("overhead"))
