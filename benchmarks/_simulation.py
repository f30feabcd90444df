"""Past one machine, by simulation: N = 2…64 workers whose tasks take a set time.

Each shard task sleeps ``LATENCY`` seconds, plus a jitter drawn uniformly from
``±JITTER`` and keyed by (step, shard) so both backends see the same delays, instead of
computing (local mode's tasks run ``k`` optimizer steps: they sleep ``k`` times as long).
What is left is the cost of coordinating N workers: the figures give the step time against
N, and the share of the wall time the training loop's thread was busy (``loop_share``)
and, on Dask, the cluster's thread (scheduler and workers' comms: ``scheduler_share``).

Two ways to have N workers on a 2-core machine:

* ``thread``: a :class:`~asynctrain.backends.ThreadBackend` of N threads;
* ``dask``: a Dask ``LocalCluster`` of N worker threads (``processes=False``) whose
  scheduler runs on its own thread, driven by a :class:`DaskBackend` from this loop.

Every step has N shards (one per worker); sync, ssp (staleness 2) and local (k=8) modes.
The ideal step time is ``LATENCY`` plus the expected largest of N jitters.

Part of the dask suite (``asynctrain bench --only dask``); run alone, printing the table
of docs/scaling-out.md: ``python -m benchmarks._simulation [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from asynctrain import Callback, StepEvent, Trainer, optim
from asynctrain import run as run_loop
from asynctrain.backends import Backend, StragglerBackend, ThreadBackend
from asynctrain.data import Dataset, synthetic
from asynctrain.models import SoftmaxRegression
from benchmarks._figure import Figure

LATENCY = 0.010  # seconds a task "computes"
JITTER = 0.002  # +- seconds, uniform, keyed by (step, shard)
LOCAL_STEPS = 8
ROWS_PER_SHARD = 8
SIZES = {True: (2, 8), False: (2, 4, 8, 16, 32, 64)}  # N, by ``quick``
STEPS = {True: 16, False: 32}  # optimizer steps per measured fit
MODES = ("sync", "ssp", "local")


def command(quick: bool) -> str:
    """The command that reproduces this suite's figures."""
    return "python -m benchmarks._simulation" + (" --quick" if quick else "")


class Late:
    """Call ``fn`` after sleeping as if it computed: ``latency`` (times ``scale``) plus a
    jitter keyed by the task's (step, shard). Picklable when ``fn`` is."""

    def __init__(self, fn: Callable[..., Any], latency: float, jitter: float, scale: int) -> None:
        self.fn, self.latency, self.jitter, self.scale = fn, latency, jitter, scale

    def __call__(self, *args: Any) -> Any:
        task = args[-1] if args else None
        key = (getattr(task, "step", 0), getattr(task, "shard", 0))
        spread = random.Random(hash(key)).uniform(-self.jitter, self.jitter)
        time.sleep(max(0.0, self.latency + spread) * self.scale)
        return self.fn(*args)


class Simulated(StragglerBackend):
    """A backend whose every task takes ``latency`` ± ``jitter`` seconds (see :class:`Late`);
    the wrapped backend belongs to the caller."""

    def __init__(self, backend: Backend, *, latency: float, jitter: float, scale: int) -> None:
        super().__init__(backend, shard=-1, delay=0.0)
        self.name = f"{backend.name}+simulated"
        self.latency, self.jitter, self.scale = latency, jitter, scale

    async def run(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        """Run ``fn`` late, as if it computed."""
        return await self.backend.run(Late(fn, self.latency, self.jitter, self.scale), *args)


def ideal_ms(n: int) -> float:
    """Step time with no coordination cost: latency plus the expected largest jitter."""
    return (LATENCY + JITTER * (n - 1) / (n + 1)) * 1e3


def _data(n: int, steps: int) -> Dataset:
    return synthetic("softmax", n=n * ROWS_PER_SHARD * steps, seed=0)


class _Clock(Callback):
    """When each step (local mode: each round of ``every`` steps) was applied."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.times: list[float] = []

    def on_step(self, event: StepEvent) -> None:
        if event.step % self.every == self.every - 1:
            self.times.append(time.perf_counter())

    def per_step(self) -> float:
        return (self.times[-1] - self.times[0]) / ((len(self.times) - 1) * self.every)


async def step_time(backend: Backend, n: int, mode: str, steps: int) -> tuple[float, float]:
    """Seconds per optimizer step with ``n`` shards, between the first and the last step
    (round) of a fit of ``steps`` steps, and the loop thread's CPU seconds per step."""
    data = _data(n, steps)
    scale = LOCAL_STEPS if mode == "local" else 1
    late = Simulated(backend, latency=LATENCY, jitter=JITTER, scale=scale)
    options: dict[str, Any] = {"local_steps": LOCAL_STEPS} if mode == "local" else {}
    if mode == "ssp":
        options["staleness"] = 2
    trainer = Trainer(
        SoftmaxRegression(data.n_features, int(data.y.max()) + 1),
        optim.sgd(0.1),
        backend=late,
        batch_size=n * ROWS_PER_SHARD,
        shards=n,
        mode=mode,
        **options,
    )
    clock = _Clock(scale)
    async with trainer:
        began, cpu = time.perf_counter(), time.thread_time()
        await trainer.fit(data, epochs=1, callbacks=[clock])
        wall, used = time.perf_counter() - began, time.thread_time() - cpu
    return clock.per_step(), used / wall * clock.per_step()


@contextlib.asynccontextmanager
async def _thread_cluster(n: int) -> AsyncIterator[tuple[str, int]]:
    """A LocalCluster of ``n`` worker threads on its own loop thread: its address and that
    thread's id."""
    import distributed

    cluster = await asyncio.to_thread(
        distributed.LocalCluster,
        n_workers=n,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",  # comms over TCP, as between machines (not in-process queues)
        memory_limit=0,  # N workers share one process: a per-worker limit would pause them
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    try:
        ident = await asyncio.to_thread(cluster.sync, _loop_thread, cluster)
        yield str(cluster.scheduler_address), ident
    finally:
        await asyncio.to_thread(cluster.close)


async def _loop_thread(cluster: Any) -> int:
    return threading.get_ident()


def _thread_cpu(ident: int) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


async def _measure(
    label: str, backend: Backend, n: int, quick: bool, cluster_thread: int | None
) -> list[Figure]:
    steps = STEPS[quick]
    await step_time(backend, n, "sync", 3)  # warm-up: imports, the workers' first tasks
    figures = []
    for mode in MODES:
        before = _thread_cpu(cluster_thread) if cluster_thread is not None else 0.0
        began = time.perf_counter()
        seconds, loop_cpu = await step_time(backend, n, mode, steps)
        wall = time.perf_counter() - began
        details: dict[str, Any] = {
            "workers": n,
            "ideal_ms": ideal_ms(n),
            "loop_share": loop_cpu / seconds,
            "latency_ms": LATENCY * 1e3,
            "jitter_ms": JITTER * 1e3,
        }
        if cluster_thread is not None:
            details["scheduler_share"] = (_thread_cpu(cluster_thread) - before) / wall
        figures.append(
            Figure(
                f"simulation/{label}/{mode}/n{n}",
                seconds * 1e3,
                seconds * 1e3,
                seconds * 1e3,
                "ms",
                f"step time, {n} simulated workers and shards, tasks of "
                f"{LATENCY * 1e3:g}±{JITTER * 1e3:g} ms; ideal {ideal_ms(n):.1f} ms",
                1,
                command(quick),
                details=details,
            )
        )
    return figures


async def measure(quick: bool) -> list[Figure]:
    """Step time and loop/scheduler shares against N, threads and Dask, three modes."""
    from asynctrain.backends import DaskBackend

    figures: list[Figure] = []
    for n in SIZES[quick]:
        async with ThreadBackend(workers=n) as threads:
            figures += await _measure("thread", threads, n, quick, None)
        async with _thread_cluster(n) as (address, ident), DaskBackend(address) as dask:
            figures += await _measure("dask", dask, n, quick, ident)
    return figures


def table(figures: list[Figure]) -> str:
    """The figures as a Markdown table: one row per N, a column per backend and mode."""
    rows: dict[int, dict[str, str]] = {}
    for figure in figures:
        _, label, mode, _ = figure.name.split("/")
        n = int(figure.details["workers"])
        share = f"{figure.details['loop_share']:.0%}"
        if "scheduler_share" in figure.details:
            share += f" / {figure.details['scheduler_share']:.0%}"
        rows.setdefault(n, {"ideal": f"{figure.details['ideal_ms']:.1f}"})
        rows[n][f"{label} {mode}"] = f"{figure.value:.1f} ({share})"
    columns = ["ideal"] + [f"{b} {m}" for b in ("thread", "dask") for m in MODES]
    lines = [
        "| N | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for n, row in sorted(rows.items()):
        lines.append(f"| {n} | " + " | ".join(row.get(c, "") for c in columns) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(run_loop(measure("--quick" in sys.argv[1:]))))
