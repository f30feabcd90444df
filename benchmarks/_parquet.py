"""Parquet streams: ``fit_stream(read_parquet(...))`` against ``fit`` on the same rows in memory.

The ``"softmax"`` reference problem (200,000 × 128, 10 classes; 50,000 rows with
``--quick``) and the ``"mlp"`` one (200,000 × 128, trained with the 128-256-10 MLP;
25,000 rows with ``--quick``) are each written once to a Parquet file in a temporary
directory (row groups of 10,000 rows, pyarrow's default compression, no dictionary
encoding). One epoch is then trained two ways on the same trainer settings (thread
backend): from memory, ``fit(data, epochs=1)`` (shuffled by the trainer), and from the
file, ``fit_stream(read_parquet(path, ...))`` (row groups in a seeded random order
through a shuffle buffer of 10,000 rows). Both are timed around the whole call, so the
footer reading, decoding and conversion are in the stream's time. The figure is the
stream's samples/s over the in-memory samples/s, paired per repeat (goal >= 0.90).
``details`` has the rate at which the stream alone is read (iterated without training),
the CPU seconds of both sides, and the file's size. A last figure is the peak memory
allocated while training on the softmax file.

Run alone: ``python -m benchmarks._parquet [--quick]``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

from asynctrain import FitResult, Trainer
from asynctrain.backends import Backend, get_backend
from asynctrain.data import Dataset, read_parquet
from asynctrain.optim import adam
from benchmarks._command import run_alone
from benchmarks._figure import Figure, Spread
from benchmarks._scale import command, dataset, repeats, samples
from benchmarks._workloads import model_for

SEED = 0
ROW_GROUP = 10_000
SHUFFLE_ROWS = 10_000  # read_parquet's default shuffle buffer at the default batch size
_MB = 2**20


def _trainer(backend: Backend, problem: str) -> Trainer:
    return Trainer(model_for(problem), adam(1e-3), backend=backend, seed=SEED)


def write(data: Dataset, path: Path) -> None:
    """Write ``data`` as a Parquet file: columns ``x0`` .. ``x127`` and ``label``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {f"x{j}": data.X[:, j] for j in range(data.X.shape[1])}
    table = pa.table({**columns, "label": data.y})
    # Dictionary encoding suits repeated values, not continuous features: without it the
    # file is 30 % smaller and 20 % cheaper to read (docs/data.md).
    pq.write_table(table, path, row_group_size=_row_group(len(data)), use_dictionary=False)


def _row_group(rows: int) -> int:
    return min(ROW_GROUP, max(1, rows // 10))


class _Run(NamedTuple):
    seconds: float  # wall clock, around the whole call
    cpu: float  # CPU seconds of the whole process (all threads)


async def _timed(
    backend: Backend, problem: str, fit: Callable[[Trainer], Awaitable[FitResult]]
) -> _Run:
    """One fit, timed."""
    async with _trainer(backend, problem) as trainer:
        started, cpu = time.perf_counter(), time.process_time()
        await fit(trainer)
        return _Run(time.perf_counter() - started, time.process_time() - cpu)


def _read_only(path: Path, batch_size: int) -> float:
    """Seconds to iterate the stream without training (reading, decoding, shuffling)."""
    started = time.perf_counter()
    for _ in read_parquet(path, label="label", batch_size=batch_size, seed=SEED):
        pass
    return time.perf_counter() - started


async def throughput(problem: str, quick: bool) -> Figure:
    """Samples/s of one epoch of ``problem`` from a Parquet file over one from memory."""
    n = samples(problem, quick) // (2 if quick and problem == "mlp" else 1)  # CI's time
    data = dataset(problem, n, seed=SEED)
    with tempfile.TemporaryDirectory(prefix="asynctrain-bench-") as directory:
        path = Path(directory) / f"{problem}.parquet"
        write(data, path)
        async with get_backend("thread")[0] as backend:
            batch = _trainer(backend, problem).config.batch_size
            # Reading alone, first: it also imports what pyarrow imports on first use.
            read_s = min([await asyncio.to_thread(_read_only, path, batch) for _ in range(2)])

            def from_memory(trainer: Trainer) -> Awaitable[FitResult]:
                return trainer.fit(data, epochs=1)

            def from_file(trainer: Trainer) -> Awaitable[FitResult]:
                stream = read_parquet(path, label="label", batch_size=batch, seed=SEED)
                return trainer.fit_stream(stream)

            runs = repeats(quick) + (1 if problem == "softmax" else 0)
            pairs = await _paired(backend, problem, from_memory, from_file, runs)
        file_mb = path.stat().st_size / _MB
    ratios = Spread.of([memory.seconds / stream.seconds for memory, stream in pairs])
    return Figure(
        f"parquet/{problem}/thread/throughput",
        ratios.median,
        ratios.low,
        ratios.high,
        "x",
        reference="samples/s of fit() on the same epoch in memory (thread backend)",
        repeats=ratios.n,
        command=command("parquet", quick),
        target=">= 0.90",
        details={
            "stream_samples_per_s": n / statistics.median(s.seconds for _, s in pairs),
            "in_memory_samples_per_s": n / statistics.median(m.seconds for m, _ in pairs),
            "cpu_seconds_ratio": statistics.median(s.cpu / m.cpu for m, s in pairs),
            "read_only_samples_per_s": n / read_s,
            "samples": n,
            "file_mb": round(file_mb, 1),
            "row_group_rows": _row_group(n),
            "batch_size": batch,
        },
    )


async def _paired(
    backend: Backend,
    problem: str,
    from_memory: Callable[[Trainer], Awaitable[FitResult]],
    from_file: Callable[[Trainer], Awaitable[FitResult]],
    count: int,
) -> list[tuple[_Run, _Run]]:
    """(in memory, from file) seconds, ``count`` times, after a warm-up."""
    await _timed(backend, problem, from_memory)  # starts the workers (pyarrow is imported)
    pairs = []
    for i in range(count):  # alternate who goes first, so drift hits both sides alike
        if i % 2:
            file_s = await _timed(backend, problem, from_file)
            pairs.append((await _timed(backend, problem, from_memory), file_s))
        else:
            memory_s = await _timed(backend, problem, from_memory)
            pairs.append((memory_s, await _timed(backend, problem, from_file)))
    return pairs


async def peak_memory(quick: bool) -> Figure:
    """Peak memory allocated while ``fit_stream`` trains on a Parquet file, next to the
    file's rows: numpy's buffers (``tracemalloc``) plus pyarrow's (its memory pool)."""
    import pyarrow as pa

    n = samples("softmax", quick)
    data = dataset("softmax", n, seed=SEED)
    with tempfile.TemporaryDirectory(prefix="asynctrain-bench-") as directory:
        path = Path(directory) / "softmax.parquet"
        write(data, path)
        previous = pa.default_memory_pool()
        pool = pa.proxy_memory_pool(previous)
        async with get_backend("thread")[0] as backend, _trainer(backend, "softmax") as trainer:
            stream = read_parquet(path, label="label", batch_size=trainer.config.batch_size)
            pa.set_memory_pool(pool)
            tracemalloc.start()
            try:
                await trainer.fit_stream(stream)
                numpy_peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
                pa.set_memory_pool(previous)
    rows_mb = (data.X.nbytes + data.y.nbytes) / _MB
    peak = (numpy_peak + pool.max_memory()) / _MB
    return Figure(
        "parquet/softmax/thread/peak_memory",
        peak,
        peak,
        peak,
        "MB",
        reference="memory allocated during fit_stream(read_parquet(...)): tracemalloc + pyarrow",
        repeats=1,
        command=command("parquet", quick),
        details={
            "numpy_peak_mb": numpy_peak / _MB,
            "pyarrow_peak_mb": pool.max_memory() / _MB,
            "rows_mb": rows_mb,
            "shuffle_buffer_mb": SHUFFLE_ROWS * _row_bytes(data) / _MB,
            "row_group_mb": _row_group(n) * _row_bytes(data) / _MB,
        },
    )


def _row_bytes(data: Dataset) -> int:
    return int(data.X[0].nbytes + data.y[0].nbytes)


async def run(quick: bool) -> list[Figure]:
    """Every figure of this suite."""
    figures = [await throughput(problem, quick) for problem in ("softmax", "mlp")]
    return [*figures, await peak_memory(quick)]


if __name__ == "__main__":
    sys.exit(run_alone("parquet"))
