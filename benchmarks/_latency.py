"""Event-loop lag while training, and the cost of one task on each backend.

Lag: a heartbeat sleeps 1 ms at a time on the loop and records how late each wake-up is,
first with the loop idle, then while an MLP epoch trains on the thread backend (2 workers)
and on the process backend (its default worker count: all cores). Figures are the p99
lateness in ms (median over repeats); ``details`` hold p50, p99, max, the workers and
``throughput_ratio``: the epoch's time without the heartbeat over its time with it (the
same open backend, alternating), so the cost of watching the loop shows too.

Task cost: ``backend.run`` of a function that does nothing, with 64 tasks in flight and
awaited one at a time, in microseconds per task.

Run alone: ``python -m benchmarks._latency [--quick]``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np

from asynctrain.backends import Backend, get_backend
from asynctrain.data import Dataset
from benchmarks._command import run_alone
from benchmarks._figure import Figure, Spread, skipped_figure
from benchmarks._scale import command, dataset, level, repeats, samples
from benchmarks._workloads import backend_available, head, timed_epochs

T = TypeVar("T")
HEARTBEAT = 0.001
BACKENDS = ("inline", "thread", "process")
_TASKS = {"full": 4000, "quick": 1000, "smoke": 100}
_IN_FLIGHT = 64


def nothing() -> None:
    """A task with no work: what remains is the backend's own cost."""


async def heartbeat(stop: asyncio.Event, lateness: list[float]) -> None:
    """Sleep ``HEARTBEAT`` seconds at a time until ``stop``; record each wake-up's delay."""
    while not stop.is_set():
        due = time.perf_counter() + HEARTBEAT
        await asyncio.sleep(HEARTBEAT)
        lateness.append(max(0.0, time.perf_counter() - due))


def percentiles(lateness: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``lateness``, in milliseconds."""
    ms = np.asarray(lateness) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "beats": len(ms),
    }


async def lag_while(work: Callable[[], Awaitable[T]]) -> tuple[T, dict[str, float]]:
    """``await work()`` with the heartbeat on the loop: its result, and :func:`percentiles`."""
    stop, lateness = asyncio.Event(), list[float]()
    async with asyncio.TaskGroup() as group:
        group.create_task(heartbeat(stop, lateness))
        try:
            result = await work()
        finally:
            stop.set()
    return result, percentiles(lateness)


async def _lag_figure(state: str, quick: bool) -> Figure:
    name, cmd = f"loop_lag/{state}", command("latency", quick)
    reference = "p99 lateness of a 1 ms heartbeat"
    missing = "" if state == "idle" else backend_available(state)
    if missing:
        return skipped_figure(name, missing, unit="ms", reference=reference, command=cmd)
    if state == "idle":
        idle_seconds = {"full": 1.0, "quick": 0.5, "smoke": 0.1}[level(quick)]
        runs = [
            (await lag_while(lambda: asyncio.sleep(idle_seconds)))[1] for _ in range(repeats(quick))
        ]
    else:
        runs = await _training_lag(state, dataset("mlp", samples("mlp", quick)), repeats(quick))
    p99 = Spread.of([r["p99_ms"] for r in runs])
    details = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    target = "<= 2.0" if state == "process" else ""
    return Figure(
        name, p99.median, p99.low, p99.high, "ms", reference, p99.n, cmd, target, details=details
    )


async def _training_lag(state: str, data: Dataset, times: int) -> list[dict[str, float]]:
    """Heartbeat lateness during each of ``times`` MLP epochs on one open ``state`` backend,
    with the throughput of each against an unmonitored epoch run just before it."""
    workers = None if state == "process" else 2  # processes: the default worker count
    spec, _ = get_backend(state, workers=workers)
    async with spec as backend:
        await timed_epochs("mlp", head(data), backend=backend, shards=2)  # warm-up
        runs = []
        for _ in range(times):
            plain, _ = await timed_epochs("mlp", data, backend=backend, shards=2)
            (watched, _), lag = await lag_while(
                lambda: timed_epochs("mlp", data, backend=backend, shards=2)
            )
            runs.append({**lag, "throughput_ratio": plain / watched, "workers": backend.workers})
        return runs


async def _task_cost(backend: Backend, tasks: int) -> tuple[float, float]:
    """Microseconds per task with ``_IN_FLIGHT`` in flight, and awaited one at a time."""
    await backend.run(nothing)
    began = time.perf_counter()
    for _ in range(tasks // _IN_FLIGHT):
        await asyncio.gather(*(backend.run(nothing) for _ in range(_IN_FLIGHT)))
    batched = (time.perf_counter() - began) / (tasks // _IN_FLIGHT * _IN_FLIGHT)
    began = time.perf_counter()
    for _ in range(tasks // 4):
        await backend.run(nothing)
    single = (time.perf_counter() - began) / (tasks // 4)
    return batched * 1e6, single * 1e6


async def _cost_figures(name: str, quick: bool) -> list[Figure]:
    cmd = command("latency", quick)
    missing = backend_available(name)
    labels = (f"task_cost/{name}/in_flight", f"task_cost/{name}/single")
    if missing:
        return [
            skipped_figure(
                label, missing, unit="us", reference="a task that does nothing", command=cmd
            )
            for label in labels
        ]
    backend, _ = get_backend(name, workers=None if name == "inline" else 2)
    results = []
    async with backend:
        for _ in range(repeats(quick)):
            results.append(await _task_cost(backend, _TASKS[level(quick)]))
    figures = []
    for label, values in zip(labels, zip(*results, strict=True), strict=True):
        spread = Spread.of(values)
        how = f"{_IN_FLIGHT} in flight" if label.endswith("in_flight") else "awaited singly"
        figures.append(
            Figure(
                label,
                spread.median,
                spread.low,
                spread.high,
                "us",
                f"a task that does nothing, {how}",
                spread.n,
                cmd,
            )
        )
    return figures


async def run(quick: bool) -> list[Figure]:
    """Loop lag (idle, thread, process) and per-task cost of every backend."""
    figures = [await _lag_figure(state, quick) for state in ("idle", "thread", "process")]
    for name in BACKENDS:
        figures += await _cost_figures(name, quick)
    return figures


if __name__ == "__main__":
    sys.exit(run_alone("latency"))
