"""Benchmark: what checkpoints cost a fit, and how fast they are written and read.

* ``checkpoint/fit-overhead``: a fit saving a checkpoint every 50 steps (about every 60 ms
  here, longer than one fsynced write) over the same fit without checkpoints (paired
  repeats). Writes overlap the following steps; one write is in flight at a time, so
  checkpoints taken faster than the disk writes them make training wait for the disk.
* ``checkpoint/save`` and ``checkpoint/load``: ``Trainer.save`` and ``Trainer.load`` of an
  MLP whose checkpoint (parameters and Adam moments) is about 76 MB, in MB/s; fsync and
  SHA-256 included.

Run: python -m benchmarks._checkpoint [--quick]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from asynctrain import Trainer
from asynctrain.data import Dataset
from asynctrain.models import MLP, SoftmaxRegression
from asynctrain.optim import adam
from benchmarks._command import run_alone
from benchmarks._figure import Figure, Spread
from benchmarks._scale import dataset

COMMAND = "python -m benchmarks._checkpoint"
EVERY = 50


async def run(quick: bool) -> list[Figure]:
    """Measure the figures of this suite (``quick``: smaller data, fewer repeats)."""
    repeats = 2 if quick else 5
    command = f"{COMMAND}{' --quick' if quick else ''}"
    data = dataset("softmax", 50_000 if quick else 200_000)
    with tempfile.TemporaryDirectory() as directory:
        plain, saving = [], []
        for repeat in range(repeats):
            plain.append(await _fit(data, None))
            saving.append(await _fit(data, Path(directory) / str(repeat)))
        ratios = Spread.of([s / p for s, p in zip(saving, plain, strict=True)])
        overhead = Figure(
            "checkpoint/fit-overhead",
            ratios.median,
            ratios.low,
            ratios.high,
            "x",
            reference="the same fit without checkpoints (softmax, thread backend, 1 epoch)",
            repeats=ratios.n,
            command=command,
            target="<= 1.05",
            details={
                "samples": len(data),
                "checkpoint_every": EVERY,
                "seconds_with": Spread.of(saving).median,
                "seconds_without": Spread.of(plain).median,
            },
        )
        return [overhead, *await _save_and_load(Path(directory), repeats, command)]


async def _fit(data: Dataset, directory: Path | None) -> float:
    trainer = Trainer(SoftmaxRegression(128, 10), adam(1e-2), batch_size=512)
    started = time.perf_counter()
    every = None if directory is None else EVERY
    await trainer.fit(data, checkpoint_dir=directory, checkpoint_every=every)
    return time.perf_counter() - started


async def _save_and_load(directory: Path, repeats: int, command: str) -> list[Figure]:
    model = MLP((1024, 2048, 2048, 10))
    trainer = Trainer(model, adam(1e-3), backend="inline")
    path = directory / "big.ckpt"
    saves, loads = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        await trainer.save(path)
        saves.append(time.perf_counter() - started)
        started = time.perf_counter()
        await Trainer(model, adam(1e-3), backend="inline").load(path)
        loads.append(time.perf_counter() - started)
    megabytes = path.stat().st_size / 1e6
    return [
        _throughput("checkpoint/save", megabytes, saves, "Trainer.save", command),
        _throughput("checkpoint/load", megabytes, loads, "Trainer.load", command),
    ]


def _throughput(name: str, megabytes: float, seconds: list[float], what: str, cmd: str) -> Figure:
    rates = Spread.of([megabytes / s for s in seconds])
    return Figure(
        name,
        rates.median,
        rates.low,
        rates.high,
        "MB/s",
        reference=f"{what} of a {megabytes:.0f} MB checkpoint (MLP 1024-2048-2048-10, Adam)",
        repeats=rates.n,
        command=cmd,
        details={"megabytes": megabytes, "seconds_median": Spread.of(seconds).median},
    )


if __name__ == "__main__":
    sys.exit(run_alone("checkpoint"))
