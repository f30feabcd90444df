"""The Dask backend against the best local backend, on the same machine, in one run.

Figures (2 workers each; the reference is the process backend when it is installed, else
the thread backend, named in every figure):

* ``dask/startup``: seconds to open a backend (a LocalCluster of 2 processes on the loop)
  and close it again; ``details`` hold the reference backend's time;
* ``dask/task_cost/{single,step,in_flight}``: milliseconds per task that does nothing,
  awaited one at a time, 4 at a time (a step of 4 shards) and 64 at a time;
* ``dask/epoch/mlp/<mode>/b<batch>``: epoch time on the ``"mlp"`` reference problem as a
  ratio to the reference backend (paired repeats), in ``sync`` and ``local`` mode (when
  this checkout has it), with batches of 512 and 8192 in 4 shards;
* ``dask/loop_lag/{fit,2000_tasks,2000_tasks_unbounded,2000_tasks_scheduler_elsewhere}``:
  p99 lateness (ms) of a 1 ms heartbeat while an MLP epoch trains on Dask, and while 2,000
  trivial tasks go through the backend with its default bound on tasks in flight, with
  no bound, and with the bound but the scheduler on another loop (a LocalCluster the
  backend starts runs its scheduler on the caller's loop).

Run alone: ``python -m asynctrain.bench._dask [--quick] [startup|task_cost|epoch|loop_lag]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from asynctrain import optim
from asynctrain._modes import MODES
from asynctrain._runtime import run as run_loop
from asynctrain._trainer import Trainer
from asynctrain.backends import Backend, get_backend
from asynctrain.bench._figure import Figure, Spread, ratio_figure
from asynctrain.data import Dataset, synthetic
from asynctrain.models import MLP

WORKERS = 2
HEARTBEAT = 0.001


def command(quick: bool) -> str:
    """The command that reproduces this suite's figures."""
    return "python -m asynctrain.bench._dask" + (" --quick" if quick else "")


def reference_backend() -> str:
    """``"process"`` when the process backend is installed, else ``"thread"``."""
    return "process" if importlib.util.find_spec("asynctrain.backends._process") else "thread"


def nothing() -> None:
    """A task with no work: what remains is the backend's own cost."""


def _dask(address: str | None = None, **options: Any) -> Backend:
    from asynctrain.backends import DaskBackend  # distributed: only when this suite runs

    return DaskBackend(address, workers=WORKERS, **options)


def _backend(name: str) -> Backend:
    return _dask() if name == "dask" else get_backend(name, workers=WORKERS)[0]


async def _startup_seconds(name: str) -> float:
    began = time.perf_counter()
    async with _backend(name) as backend:
        await backend.run(nothing)
    return time.perf_counter() - began


async def startup(quick: bool, reference: str) -> Figure:
    """Seconds to start, use once and stop a Dask backend; the reference's in details."""
    repeats = 2 if quick else 5
    dask = [await _startup_seconds("dask") for _ in range(repeats)]
    other = [await _startup_seconds(reference) for _ in range(repeats)]
    spread = Spread.of(dask)
    return Figure(
        "dask/startup",
        spread.median,
        spread.low,
        spread.high,
        "s",
        f"open + one task + close, {WORKERS} workers",
        spread.n,
        command(quick),
        details={f"{reference}_median_s": statistics.median(other)},
    )


async def _per_task(backend: Backend, batch: int, tasks: int) -> float:
    began = time.perf_counter()
    for _ in range(tasks // batch):
        await asyncio.gather(*(backend.run(nothing) for _ in range(batch)))
    return (time.perf_counter() - began) / (tasks // batch * batch) * 1e3


async def task_costs(quick: bool, reference: str) -> list[Figure]:
    """Milliseconds per trivial task awaited singly, per step of 4, and 64 in flight."""
    tasks, repeats = (128, 3) if quick else (512, 5)
    figures = []
    async with _backend("dask") as dask, _backend(reference) as other:
        await dask.run(nothing)
        await other.run(nothing)
        for label, batch in (("single", 1), ("step", 4), ("in_flight", 64)):
            ours = [await _per_task(dask, batch, tasks) for _ in range(repeats)]
            theirs = [await _per_task(other, batch, tasks) for _ in range(repeats)]
            spread = Spread.of(ours)
            figures.append(
                Figure(
                    f"dask/task_cost/{label}",
                    spread.median,
                    spread.low,
                    spread.high,
                    "ms",
                    f"a task that does nothing, {batch} awaited together",
                    spread.n,
                    command(quick),
                    details={f"{reference}_median_ms": statistics.median(theirs)},
                )
            )
    return figures


def mlp_data(quick: bool) -> Dataset:
    """The ``"mlp"`` reference problem (200,000 samples; 20,000 with ``quick``)."""
    return synthetic("mlp", n=20_000 if quick else 200_000, seed=0)


async def epoch_seconds(backend: Backend, data: Dataset, mode: str, batch: int) -> float:
    """Seconds of one epoch of the reference MLP on ``backend``."""
    model = MLP((data.n_features, 256, int(data.y.max()) + 1))
    trainer = Trainer(
        model, optim.adam(1e-3), backend=backend, batch_size=batch, shards=4, mode=mode
    )
    began = time.perf_counter()
    await trainer.fit(data, epochs=1)
    return time.perf_counter() - began


async def epochs(quick: bool, reference: str) -> list[Figure]:
    """Epoch time on Dask as a ratio to the reference backend, per mode and batch size."""
    data, repeats = mlp_data(quick), (2 if quick else 3)
    figures = []
    async with _backend("dask") as dask, _backend(reference) as other:
        for mode in [m for m in ("sync", "local") if m in MODES]:
            for batch in (512, 8192):
                await epoch_seconds(dask, data, mode, batch)  # warm-up: imports, data
                ours, theirs = [], []
                for _ in range(repeats):
                    ours.append(await epoch_seconds(dask, data, mode, batch))
                    theirs.append(await epoch_seconds(other, data, mode, batch))
                figures.append(
                    ratio_figure(
                        f"dask/epoch/mlp/{mode}/b{batch}",
                        ours,
                        theirs,
                        reference=f"{reference} backend, same mode, 4 shards, {len(data)} rows",
                        command=command(quick),
                    )
                )
    return figures


async def _heartbeat(stop: asyncio.Event, lateness: list[float]) -> None:
    while not stop.is_set():
        due = time.perf_counter() + HEARTBEAT
        await asyncio.sleep(HEARTBEAT)
        lateness.append(max(0.0, time.perf_counter() - due))


async def lag_while(work: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    """p50, p99 and max lateness (ms) of a 1 ms heartbeat while ``work()`` runs."""
    stop, lateness = asyncio.Event(), list[float]()
    async with asyncio.TaskGroup() as group:
        group.create_task(_heartbeat(stop, lateness))
        try:
            await work()
        finally:
            stop.set()
    ms = np.asarray(lateness) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def _lag_figure(name: str, runs: list[dict[str, float]], what: str, quick: bool) -> Figure:
    p99 = Spread.of([r["p99_ms"] for r in runs])
    details = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    reference = f"p99 lateness of a 1 ms heartbeat while {what}"
    return Figure(
        name, p99.median, p99.low, p99.high, "ms", reference, p99.n, command(quick), details=details
    )


async def loop_lag(quick: bool) -> list[Figure]:
    """Heartbeat lateness during an MLP epoch on Dask and during 2,000 trivial tasks."""
    data, repeats = mlp_data(quick), (2 if quick else 3)
    figures = []
    async with _backend("dask") as dask:
        await epoch_seconds(dask, data, "sync", 512)
        runs = [
            await lag_while(lambda: epoch_seconds(dask, data, "sync", 512)) for _ in range(repeats)
        ]
        figures.append(_lag_figure("dask/loop_lag/fit", runs, "an MLP epoch trains", quick))
    for label, limit in (("2000_tasks", None), ("2000_tasks_unbounded", 2000)):
        async with _dask(max_in_flight=limit) as backend:
            runs = [await lag_while(_burst(backend)) for _ in range(repeats)]
        what = "2,000 trivial tasks run" + (" with no bound" if limit else "")
        figures.append(_lag_figure(f"dask/loop_lag/{label}", runs, what, quick))
    async with _cluster_in_a_thread() as address, _dask(address) as backend:
        runs = [await lag_while(_burst(backend)) for _ in range(repeats)]
    what = "2,000 trivial tasks run, the scheduler on another thread's loop"
    figures.append(_lag_figure("dask/loop_lag/2000_tasks_scheduler_elsewhere", runs, what, quick))
    return figures


def _burst(backend: Backend) -> Callable[[], Awaitable[Any]]:
    async def burst() -> None:
        await asyncio.gather(*(backend.run(nothing) for _ in range(2000)))

    return burst


@contextlib.asynccontextmanager
async def _cluster_in_a_thread() -> AsyncIterator[str]:
    """A LocalCluster whose scheduler runs on its own loop (Dask's thread), not this one."""
    import distributed

    cluster = await asyncio.to_thread(
        distributed.LocalCluster,
        n_workers=WORKERS,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    try:
        yield str(cluster.scheduler_address)
    finally:
        await asyncio.to_thread(cluster.close)


PARTS = ("startup", "task_cost", "epoch", "loop_lag")


async def run(quick: bool, parts: tuple[str, ...] = PARTS) -> list[Figure]:
    """The figures of ``parts`` (default: all); see the module docstring."""
    reference = reference_backend()
    figures = [await startup(quick, reference)] if "startup" in parts else []
    if "task_cost" in parts:
        figures += await task_costs(quick, reference)
    if "epoch" in parts:
        figures += await epochs(quick, reference)
    if "loop_lag" in parts:
        figures += await loop_lag(quick)
    return figures


def _print(figures: list[Figure]) -> None:
    for figure in figures:
        span = f"[{figure.low:.3g}-{figure.high:.3g}]"
        extra = ", ".join(f"{k}={v:.4g}" for k, v in figure.details.items())
        print(f"{figure.name:<34} {figure.value:9.3f} {figure.unit:<2} {span:<17} {extra}")
    print(f"reference backend: {reference_backend()}; command: {figures[0].command}")


if __name__ == "__main__":  # [--quick] [PART ...] with PART in PARTS
    chosen = tuple(arg for arg in sys.argv[1:] if arg in PARTS) or PARTS
    _print(run_loop(run("--quick" in sys.argv[1:], chosen)))
