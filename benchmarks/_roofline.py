"""Roofline: asynctrain's epoch time vs the fastest this machine could possibly go.

Linear models are bound by memory: an epoch must at least read ``X`` and ``y`` once, so
its minimum is their size over the measured read bandwidth (numpy ``sum`` over a large
array on 1 and on all cores; the faster counts). The MLP is bound by arithmetic: an
epoch needs ``n * (4*d*h + 6*h*k)`` float32 FLOPs (forward, weight gradients, hidden
delta), so its minimum is that over the measured float32 matmul rate (a large square
product on all cores). Each epoch is paired with a limit measured just before it, since
the load of a shared machine drifts. The rate's product uses every core's BLAS thread,
and OpenBLAS keeps its extra threads spinning for work for a while after a call: an
epoch started at once shared its cores with them (epochs 0.29-0.39 s against 0.26-0.29 s
after a pause, interleaved, quiet machine), so each epoch starts once they have gone
to sleep (:func:`~benchmarks._machine.quiesce`). Epochs run the throughput setting
:data:`THROUGHPUT` (large batches keep BLAS busy; the time-to-accuracy race tunes batches
for accuracy per second instead).

Run alone: ``python -m benchmarks._roofline [--quick]``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from asynctrain.backends import default_workers, get_backend
from asynctrain.data import PROBLEMS, Dataset
from benchmarks._command import run_alone
from benchmarks._figure import Figure, ratio_figure
from benchmarks._machine import quiesce
from benchmarks._scale import command, dataset, level, repeats, samples
from benchmarks._workloads import MLP_HIDDEN, PROBLEM_NAMES, head, timed_epochs

TARGETS = {"mlp": "<= 2.0"}  # issue 20, goal 6


class Setting(NamedTuple):
    """How the roofline's epochs are run (Adam at the workloads' learning rate)."""

    batch_size: int
    shards: int
    learning_rate: float
    workers: int
    backend: str


THROUGHPUT = Setting(batch_size=4096, shards=2, learning_rate=1e-3, workers=2, backend="thread")
_BANDWIDTH_MB = {"full": 256, "quick": 128, "smoke": 16}
_MATMUL_N = {"full": 2048, "quick": 1536, "smoke": 256}


def _best_of(fn: Callable[[], object], times: int = 5) -> float:
    best = float("inf")
    for _ in range(times):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


async def read_bandwidth(array: npt.NDArray[np.float32]) -> float:
    """Bytes per second numpy reads (``sum`` of ``array``) on 1 core and on all; the faster."""
    one = _best_of(array.sum, 3)
    parts = np.array_split(array, default_workers())
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        await asyncio.gather(*(asyncio.to_thread(p.sum) for p in parts))
        best = min(best, time.perf_counter() - began)
    return array.nbytes / min(one, best)


def matmul_rate(a: npt.NDArray[np.float32]) -> float:
    """float32 FLOP/s of the square product ``a @ a`` with BLAS on all cores."""
    out, side = np.empty_like(a), int(a.shape[0])
    with threadpool_limits(default_workers(), user_api="blas"):
        seconds = _best_of(lambda: np.matmul(a, a, out=out), 3)
    return 2.0 * side**3 / seconds


def shard_matmul_rate(rows: int) -> float:
    """float32 FLOP/s of the MLP's first-layer product for one shard, on one BLAS thread."""
    info, rng = PROBLEMS["mlp"], np.random.default_rng(0)
    X = rng.random((rows, info.n_features), dtype=np.float32)
    W = rng.random((info.n_features, MLP_HIDDEN), dtype=np.float32)
    with threadpool_limits(1, user_api="blas"):
        seconds = _best_of(lambda: X @ W)
    return 2.0 * rows * info.n_features * MLP_HIDDEN / seconds


def mlp_flops(n: int) -> float:
    """FLOPs of one MLP epoch on ``n`` samples (128-256-10, see the module docstring)."""
    info = PROBLEMS["mlp"]
    d, h, k = info.n_features, MLP_HIDDEN, info.n_classes
    return float(n) * (4 * d * h + 6 * h * k)


class _Limit(NamedTuple):
    seconds: float
    rate: float  # bytes/s (linear) or FLOP/s (MLP)


async def _limit(problem: str, data: Dataset, probe: npt.NDArray[np.float32]) -> _Limit:
    """The epoch's minimum time, from a rate measured now (the machine's load drifts)."""
    if problem == "mlp":
        rate = matmul_rate(probe)
        await quiesce()  # the probe's BLAS threads spin on after it
        return _Limit(mlp_flops(len(data)) / rate, rate)
    rate = await read_bandwidth(probe)
    return _Limit((data.X.nbytes + data.y.nbytes) / rate, rate)


async def _measure(problem: str, data: Dataset, quick: bool) -> tuple[list[float], list[_Limit]]:
    """Epoch times, each paired with the limit measured just before it."""
    size, s = level(quick), THROUGHPUT
    side = _MATMUL_N[size]
    probe = (
        np.random.default_rng(0).random((side, side), dtype=np.float32)
        if problem == "mlp"
        else np.ones(_BANDWIDTH_MB[size] * 2**18, dtype=np.float32)
    )
    backend, _ = get_backend(s.backend, workers=s.workers)
    times, limits = [], []
    async with backend:

        async def epoch(data: Dataset = data) -> float:
            options = {"shards": s.shards, "batch_size": s.batch_size}
            return (await timed_epochs(problem, data, backend=backend, **options))[0]

        await epoch(head(data))  # warm-up
        for _ in range(repeats(quick)):
            limits.append(await _limit(problem, data, probe))
            times.append(await epoch())
    return times, limits


async def run(quick: bool) -> list[Figure]:
    """Epoch time over the bandwidth (linear) or FLOP-rate (MLP) minimum, per problem."""
    shard_rate = shard_matmul_rate(THROUGHPUT.batch_size // THROUGHPUT.shards)
    figures = []
    for problem in PROBLEM_NAMES:
        data = dataset(problem, samples(problem, quick))
        times, limits = await _measure(problem, data, quick)
        rate = statistics.median(limit.rate for limit in limits)
        minimum = statistics.median(limit.seconds for limit in limits)
        reference = (
            f"FLOP-rate minimum {minimum * 1e3:.1f} ms ({rate / 1e9:.0f} GFLOP/s)"
            if problem == "mlp"
            else f"bandwidth minimum {minimum * 1e3:.1f} ms ({rate / 1e9:.1f} GB/s)"
        )
        details = {
            "epoch_seconds": statistics.median(times),
            "minimum_seconds": [limit.seconds for limit in limits],
            "rate": [limit.rate for limit in limits],
            "shard_matmul_gflops_1_thread": shard_rate / 1e9,
            "setting": THROUGHPUT._asdict(),
            "samples": len(data),
        }
        figures.append(
            ratio_figure(
                f"roofline/{problem}",
                times,
                [limit.seconds for limit in limits],
                reference=reference,
                target=TARGETS.get(problem, ""),
                command=command("roofline", quick),
                details=details,
            )
        )
    return figures


if __name__ == "__main__":
    sys.exit(run_alone("roofline"))
