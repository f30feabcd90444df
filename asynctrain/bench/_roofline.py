"""Roofline: asynctrain's epoch time vs the fastest this machine could possibly go.

Linear models are bound by memory: an epoch must at least read ``X`` and ``y`` once, so
its minimum is their size over the measured read bandwidth (numpy ``sum`` over a large
array on 1 and on all cores; the faster counts). The MLP is bound by arithmetic: an epoch
needs ``n * (4*d*h + 6*h*k)`` float32 FLOPs (forward, weight gradients, hidden delta), so
its minimum is that over the measured float32 matmul rate (a large square product on all
cores). Epochs run the throughput setting :data:`THROUGHPUT` (large batches keep BLAS
busy; the time-to-accuracy race tunes batches for accuracy per second instead).

Run alone: ``python -m asynctrain.bench._roofline [--quick]``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from asynctrain.backends import default_workers, get_backend
from asynctrain.bench._accuracy import Setting
from asynctrain.bench._command import run_alone
from asynctrain.bench._figure import Figure, Spread, ratio_figure
from asynctrain.bench._scale import command, dataset, level, repeats, samples
from asynctrain.bench._workloads import MLP_HIDDEN, PROBLEM_NAMES, timed_epochs
from asynctrain.data import PROBLEMS, Dataset

TARGETS = {"mlp": "<= 1.5"}
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


async def read_bandwidth(megabytes: int) -> float:
    """Bytes per second numpy reads (``sum``) on 1 core and on all cores; the faster."""
    array = np.ones(megabytes * 2**18, dtype=np.float32)
    one = _best_of(array.sum)
    parts = np.array_split(array, default_workers())

    async def together() -> None:
        await asyncio.gather(*(asyncio.to_thread(p.sum) for p in parts))

    began, best = 0.0, float("inf")
    for _ in range(5):
        began = time.perf_counter()
        await together()
        best = min(best, time.perf_counter() - began)
    return array.nbytes / min(one, best)


def matmul_rate(n: int) -> float:
    """float32 FLOP/s of an ``n x n`` matrix product with BLAS on all cores."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    out = np.empty_like(a)
    return 2.0 * n**3 / _best_of(lambda: np.matmul(a, b, out=out))


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


async def _epoch_times(problem: str, data: Dataset, quick: bool) -> list[float]:
    s = THROUGHPUT
    backend, _ = get_backend(s.backend, workers=s.workers)
    times = []
    async with backend:
        await timed_epochs(problem, data, backend=backend, shards=s.shards, batch_size=s.batch_size)
        for _ in range(repeats(quick)):
            seconds, _ = await timed_epochs(
                problem, data, backend=backend, shards=s.shards, batch_size=s.batch_size
            )
            times.append(seconds)
    return times


async def run(quick: bool) -> list[Figure]:
    """Epoch time over the bandwidth (linear) or FLOP-rate (MLP) minimum, per problem."""
    size = level(quick)
    bandwidth = await read_bandwidth(_BANDWIDTH_MB[size])
    flop_rate = matmul_rate(_MATMUL_N[size])
    shard_rate = shard_matmul_rate(THROUGHPUT.batch_size // THROUGHPUT.shards)
    figures = []
    for problem in PROBLEM_NAMES:
        data = dataset(problem, samples(problem, quick))
        times = await _epoch_times(problem, data, quick)
        if problem == "mlp":
            minimum = mlp_flops(len(data)) / flop_rate
            reference = f"FLOP-rate minimum {minimum * 1e3:.1f} ms ({flop_rate / 1e9:.0f} GFLOP/s)"
        else:
            minimum = (data.X.nbytes + data.y.nbytes) / bandwidth
            reference = f"bandwidth minimum {minimum * 1e3:.1f} ms ({bandwidth / 1e9:.1f} GB/s)"
        details = {
            "epoch_seconds": Spread.of(times).median,
            "minimum_seconds": minimum,
            "read_bandwidth_gbs": bandwidth / 1e9,
            "matmul_gflops": flop_rate / 1e9,
            "shard_matmul_gflops_1_thread": shard_rate / 1e9,
            "setting": THROUGHPUT._asdict(),
            "samples": len(data),
        }
        figures.append(
            ratio_figure(
                f"roofline/{problem}",
                times,
                [minimum] * len(times),
                reference=reference,
                target=TARGETS.get(problem, ""),
                command=command("roofline", quick),
                details=details,
            )
        )
    return figures


if __name__ == "__main__":
    sys.exit(run_alone("roofline"))
