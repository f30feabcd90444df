"""Benchmark the process backend against threads: epoch time, per-task cost, peak memory.

Run from the repository root::

    .venv/bin/python benchmarks/process_backend.py            # full: about 3 minutes
    .venv/bin/python benchmarks/process_backend.py --quick    # smaller, about 40 s
    .venv/bin/python benchmarks/process_backend.py --memory-only  # table 3, about 20 s

It prints the command, then three markdown tables:

1. epoch time of the ``"mlp"`` reference problem (128-256-10 MLP, Adam, 4 shards per
   batch) on 1 and 2 thread workers and 1 and 2 process workers, median over epochs after
   a warm-up epoch, at the default batch of 512 and at 4096 (bigger shard tasks);
2. per-task cost of a trivial task, awaited one at a time and with all tasks in flight;
3. peak memory of all processes (sum of PSS from /proc/<pid>/smaps_rollup over the
   benchmark process and all its descendants) while loading the dataset and while fitting
   one epoch, each configuration in a fresh subprocess that loads the same saved dataset,
   against the size of the dataset: into plain numpy arrays (which the process backend
   copies into shared memory), memory-mapped for ``-npy``, or into plain arrays moved
   into asynctrain's shared memory with ``Dataset.to_shared()`` for ``-shared``.

The machine's load average is printed before and after: on a shared machine, compare
rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

import asynctrain as at
from asynctrain.backends import Backend, InlineBackend, ProcessBackend, ThreadBackend

BACKENDS: dict[str, Callable[[], Backend]] = {
    "thread-1": lambda: ThreadBackend(workers=1),
    "thread-2": lambda: ThreadBackend(workers=2),
    "process-1": lambda: ProcessBackend(workers=1),
    "process-2": lambda: ProcessBackend(workers=2),
}
MEMORY_CONFIGS = [
    "thread-2",
    "process-1",
    "process-2",
    "process-2-npy",
    "process-1-shared",
    "process-2-shared",
]


def noop() -> None:
    """The trivial task."""


# -- 1. epoch time --------------------------------------------------------------------------


async def epoch_seconds(name: str, data: at.data.Dataset, batch: int, epochs: int) -> float:
    model = at.models.MLP((128, 256, 10))
    async with BACKENDS[name]() as backend:
        trainer = at.Trainer(
            model, at.optim.adam(1e-3), backend=backend, batch_size=batch, shards=4
        )
        async with trainer:
            result = await trainer.fit(data, epochs=1 + epochs)
    return statistics.median(e.seconds for e in result.history[1:])


async def epoch_table(n: int, epochs: int) -> list[str]:
    data = at.data.synthetic("mlp", n=n)
    rows = ["| batch | backend | epoch s (median) | vs thread-1 |", "| --- | --- | --- | --- |"]
    for batch in (512, 4096):
        base = None
        for name in BACKENDS:
            seconds = await epoch_seconds(name, data, batch, epochs)
            base = base or seconds
            rows.append(f"| {batch} | {name} | {seconds:.3f} | {seconds / base:.2f}x |")
    return rows


# -- 2. per-task cost -----------------------------------------------------------------------


async def per_task_us(backend: Backend, tasks: int, together: bool) -> float:
    started = time.perf_counter()
    if together:
        await asyncio.gather(*(backend.run(noop) for _ in range(tasks)))
    else:
        for _ in range(tasks):
            await backend.run(noop)
    return (time.perf_counter() - started) / tasks * 1e6


async def task_table(tasks: int, repeats: int) -> list[str]:
    rows = ["| backend | awaited singly, µs/task | all in flight, µs/task |", "| --- | --- | --- |"]
    makers: dict[str, Callable[[], Backend]] = {"inline": InlineBackend}
    makers |= {k: v for k, v in BACKENDS.items() if k.endswith("2")}
    for name, make in makers.items():
        async with make() as backend:
            await asyncio.gather(*(backend.run(noop) for _ in range(100)))  # warm up
            single = [await per_task_us(backend, tasks, False) for _ in range(repeats)]
            many = [await per_task_us(backend, tasks, True) for _ in range(repeats)]
        rows.append(f"| {name} | {statistics.median(single):.1f} | {statistics.median(many):.1f} |")
    return rows


# -- 3. peak memory (each configuration in a fresh process) ---------------------------------


def tree_pss_bytes(root: int) -> int:
    """Sum of PSS over ``root`` and all its descendants."""
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                total += next(int(ln.split()[1]) for ln in handle if ln.startswith("Pss:")) * 1024
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as handle:
                    stack.extend(int(child) for child in handle.read().split())
        except (OSError, StopIteration):
            continue
    return total


class PeakSampler:
    """Samples the process tree's PSS every 10 ms in a thread (a benchmark may poll)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_pss_bytes(os.getpid()))
            self._stop.wait(0.01)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def load_dataset(kind: str, folder: Path) -> at.data.Dataset:
    """The saved dataset: plain arrays (``""``), memory-mapped (``"npy"``) or shared."""
    mode: Literal["r"] | None = "r" if kind == "npy" else None
    data = at.data.Dataset(np.load(folder / "X.npy", mmap_mode=mode), np.load(folder / "y.npy"))
    return data.to_shared() if kind == "shared" else data  # the plain arrays are dropped


async def memory_child(config: str, folder: Path) -> dict[str, float]:
    kind, name = "", config
    if config.endswith(("-npy", "-shared")):
        name, kind = config.rsplit("-", 1)
    async with BACKENDS[name]() as backend:
        await asyncio.gather(*(backend.run(noop) for _ in range(8)))  # workers up
        gc.collect()
        baseline = tree_pss_bytes(os.getpid())
        # Loaded, not generated: the generator's freed temporaries would stay in the heap.
        with PeakSampler() as loading:
            data = load_dataset(kind, folder)
        model = at.models.MLP((128, 256, 10))
        with PeakSampler() as fitting:
            async with at.Trainer(model, backend=backend, batch_size=4096, shards=4) as trainer:
                await trainer.fit(data, epochs=1)
    return {
        "dataset": data.X.nbytes + data.y.nbytes,
        "baseline": baseline,
        "loading": loading.peak,
        "peak": fitting.peak,
    }


def memory_table(n: int) -> list[str]:
    rows = [
        "| config | dataset MB | before loading MB | peak while loading MB | "
        "peak while fitting MB | (fitting peak - before) / dataset |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        data = at.data.synthetic("mlp", n=n)
        np.save(Path(tmp) / "X.npy", data.X)
        np.save(Path(tmp) / "y.npy", data.y)
        del data
        for config in MEMORY_CONFIGS:
            cmd = [sys.executable, __file__, "--memory-child", config, "--data", tmp]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            m = json.loads(out.strip().splitlines()[-1])
            mb = {k: v / 2**20 for k, v in m.items()}
            ratio = (m["peak"] - m["baseline"]) / m["dataset"]
            rows.append(
                f"| {config} | {mb['dataset']:.0f} | {mb['baseline']:.0f} | "
                f"{mb['loading']:.0f} | {mb['peak']:.0f} | {ratio:.2f} |"
            )
    return rows


async def main(args: argparse.Namespace) -> None:
    if args.memory_child:
        print(json.dumps(await memory_child(args.memory_child, Path(args.data))))
        return
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, numpy {np.__version__}")
    print("load average before: {:.2f} {:.2f} {:.2f}\n".format(*os.getloadavg()))
    if not args.memory_only:
        print(f"## epoch time, synthetic('mlp', n={args.n}), {args.epochs} timed epochs\n")
        print("\n".join(await epoch_table(args.n, args.epochs)), "\n")
        print(f"## per-task cost, trivial task, {args.tasks} tasks, median of {args.repeats}\n")
        print("\n".join(await task_table(args.tasks, args.repeats)), "\n")
    print(f"## peak memory, loading and fitting one epoch of synthetic('mlp', n={args.n})\n")
    print("\n".join(await asyncio.to_thread(memory_table, args.n)))
    print("\nload average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n=50000, 2 epochs, 3 repeats")
    parser.add_argument("--n", type=int, default=200_000, help="samples (default 200000)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per backend")
    parser.add_argument("--tasks", type=int, default=2000, help="trivial tasks per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the task timing")
    parser.add_argument("--memory-only", action="store_true", help="only the memory table")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.epochs, args.repeats = 50_000, 2, 3
    return args


if __name__ == "__main__":
    at.run(main(parse(sys.argv[1:])))
