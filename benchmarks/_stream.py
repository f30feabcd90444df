"""Streaming: throughput of ``fit_stream`` vs ``fit`` on the same data, and bounded memory.

Throughput: one epoch of the ``"softmax"`` reference problem, trained in memory
(``fit(data)``) and as a stream of 1,000-row batches in the same order
(``fit_stream(batches)``), on the same trainer settings; the two must end on the same
parameters (``details["same_params"]``). The figure is the stream's samples/s over the
in-memory samples/s, paired per repeat (goal >= 0.90).

Memory: an async producer 10× faster than training (it sleeps a tenth of the measured
training time per batch, then allocates a fresh batch) feeds ``fit_stream``. The figure is
the peak of memory allocated during the fit (``tracemalloc``, which sees numpy's buffers),
next to the documented bound (``buffer + 3`` source batches and the ring's batch buffers)
and the bytes of the whole stream, which an unbounded queue would approach.

Run alone: ``python -m benchmarks._stream [--quick]``.
"""

from __future__ import annotations

import asyncio
import inspect
import statistics
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain import FitResult, Trainer
from asynctrain.backends import Backend, backend_names, get_backend
from asynctrain.data import Dataset, epoch_order
from asynctrain.models import SoftmaxRegression
from asynctrain.optim import adam
from benchmarks._command import run_alone
from benchmarks._figure import Figure, Spread, at_most
from benchmarks._scale import dataset

PIECE = 1_000  # rows per batch the producer yields (re-cut into the trainer's batch size)
SEED = 0
_MB = 2**20
# The feed's documented shape (docs/streaming.md): fit_stream's default queue of source
# batches, the batch being assembled, then a ring of 3 batch slots shared with the backend.
DEFAULT_BUFFER: int = inspect.signature(Trainer.fit_stream).parameters["buffer"].default
RING_SLOTS = 3


def _sizes(quick: bool) -> tuple[int, int]:
    """(samples, repeats) at this size."""
    return (50_000, 3) if quick else (200_000, 7)


def _command(quick: bool) -> str:
    return "asynctrain bench --only stream" + (" --quick" if quick else "")


def _trainer(backend: str | Backend) -> Trainer:
    return Trainer(SoftmaxRegression(128, 10), adam(1e-3), backend=backend, seed=SEED)


def _in_epoch_order(data: Dataset) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """The rows in the order the trainer's first epoch visits them (gathered once)."""
    order = epoch_order(len(data), seed=SEED, epoch=0)
    return data.X[order], data.y[order]


async def _views(X: npt.NDArray[Any], y: npt.NDArray[Any]) -> AsyncIterator[Any]:
    for start in range(0, len(X), PIECE):
        yield X[start : start + PIECE], y[start : start + PIECE]


class _Run(NamedTuple):
    speed: float  # samples/s, wall clock
    cpu: float  # CPU seconds of the whole process (all threads)
    params: dict[str, Any]


async def _measure(
    backend: str | Backend, n: int, fit: Callable[[Trainer], Awaitable[FitResult]]
) -> _Run:
    async with _trainer(backend) as trainer:
        cpu = time.process_time()
        result = await fit(trainer)
        cpu = time.process_time() - cpu
    return _Run(n / result.seconds, cpu, result.params)


async def throughput(backend: str, quick: bool) -> Figure:
    """Streaming vs in-memory samples/s on one epoch of ``"softmax"``."""
    n, repeats = _sizes(quick)
    data = dataset("softmax", n, seed=SEED)
    async with get_backend(backend)[0] as opened:  # one pool for every fit
        pairs = await _paired_runs(opened, data, repeats)
    ratios = Spread.of([s.speed / m.speed for s, m in pairs])
    return Figure(
        f"stream/softmax/{backend}/throughput",
        ratios.median,
        ratios.low,
        ratios.high,
        "x",
        reference=f"samples/s of fit() on the same epoch in memory ({backend} backend)",
        repeats=ratios.n,
        command=_command(quick),
        target=">= 0.90",
        details={
            "stream_samples_per_s": statistics.median(s.speed for s, _ in pairs),
            "in_memory_samples_per_s": statistics.median(m.speed for _, m in pairs),
            "cpu_seconds_ratio": statistics.median(s.cpu / m.cpu for s, m in pairs),
            "samples": n,
            "piece_rows": PIECE,
            "same_params": all(_same(s.params, m.params) for s, m in pairs),
        },
    )


async def _paired_runs(backend: Backend, data: Dataset, repeats: int) -> list[tuple[_Run, _Run]]:
    """(streamed, in memory) runs of one epoch each, ``repeats`` times, after a warm-up."""
    n, rows = len(data), _in_epoch_order(data)

    def in_memory(trainer: Trainer) -> Awaitable[FitResult]:
        return trainer.fit(data, epochs=1)

    def streamed(trainer: Trainer) -> Awaitable[FitResult]:
        return trainer.fit_stream(_views(*rows))

    await _measure(backend, n, in_memory)  # warm-up: start BLAS, threads, workers
    pairs = []
    for i in range(repeats):
        if i % 2:  # alternate who goes first, so drift hits both sides alike
            s = await _measure(backend, n, streamed)
            pairs.append((s, await _measure(backend, n, in_memory)))
        else:
            m = await _measure(backend, n, in_memory)
            pairs.append((await _measure(backend, n, streamed), m))
    return pairs


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(np.array_equal(a[key], b[key]) for key in b)


async def _paced(
    rows: tuple[npt.NDArray[Any], npt.NDArray[Any]], pause: float, waited: list[float]
) -> AsyncIterator[Any]:
    """Fresh batches, one every ``pause`` seconds at most; records time held back."""
    X, y = rows
    for start in range(0, len(X), PIECE):
        await asyncio.sleep(pause)
        batch = X[start : start + PIECE].copy(), y[start : start + PIECE].copy()
        handed = time.perf_counter()
        yield batch
        waited.append(time.perf_counter() - handed)


async def peak_memory(backend: str, quick: bool) -> Figure:
    """Peak allocated memory of a stream fit fed by a producer 10× faster than training."""
    n, repeats = _sizes(quick)
    data = dataset("softmax", n, seed=SEED)
    rows = _in_epoch_order(data)
    speed = (await _measure(backend, n, lambda trainer: trainer.fit(data, epochs=1))).speed
    pause = PIECE / speed / 10  # the producer makes a batch 10× faster than it is trained
    peaks, held = [], []
    for _ in range(max(1, repeats // 2)):
        waited: list[float] = []
        async with _trainer(backend) as trainer:
            tracemalloc.start()
            try:
                await trainer.fit_stream(_paced(rows, pause, waited))
                peaks.append(tracemalloc.get_traced_memory()[1] / _MB)
            finally:
                tracemalloc.stop()
        held.append(sum(waited))
    piece_mb = PIECE * (rows[0][0].nbytes + rows[1][0].nbytes) / _MB
    batch_mb = trainer.config.batch_size * piece_mb / PIECE
    # The feed's bound (docs/streaming.md: buffer + 3 source batches, the ring's slots and
    # the batch being assembled), plus working memory: one source batch's validation
    # scratch and one batch of shard copies in flight.
    bound = (DEFAULT_BUFFER + 4) * piece_mb + (RING_SLOTS + 2) * batch_mb
    return Figure(
        f"stream/softmax/{backend}/peak_memory",
        statistics.median(peaks),
        min(peaks),
        max(peaks),
        "MB",
        reference="memory allocated during fit_stream (tracemalloc), producer 10× faster",
        repeats=len(peaks),
        command=_command(quick),
        target=at_most(bound),
        details={
            "bound_mb": bound,
            "stream_mb": len(rows[0]) / PIECE * piece_mb,
            "producer_held_back_s": statistics.median(held),
            "producer_pause_s": pause,
            "buffer": DEFAULT_BUFFER,
        },
    )


async def run(quick: bool) -> list[Figure]:
    """Every figure of this suite (the process backend's throughput when it is installed)."""
    figures = [await throughput("thread", quick), await peak_memory("thread", quick)]
    if "process" in backend_names():
        figures.append(await throughput("process", quick))
    return figures


if __name__ == "__main__":
    sys.exit(run_alone("stream"))
