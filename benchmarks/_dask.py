"""The Dask backend against the best local backend, on the same machine, in one run.

Figures (2 workers each; the reference is the process backend when it is installed, else
the thread backend, named in every figure):

* ``dask/startup``: seconds to open a backend (a LocalCluster of 2 processes on the loop)
  and close it again; ``details`` hold the reference backend's time;
* ``dask/task_cost/{single,step,in_flight}``: milliseconds per task that does nothing,
  awaited one at a time, 4 at a time (a step of 4 shards) and 64 at a time;
* ``dask/epoch/mlp/<mode>/b<batch>``: epoch time on the ``"mlp"`` reference problem as a
  ratio to the reference backend (paired repeats), in ``sync`` and ``local`` mode
  (``local_steps=8``), with batches of 512 and 8192 in 4 shards; targets: sync at batch
  512 within 3x, local within 1.5x. Each epoch is a fit of its own on one backend: the
  workers keep the rows from the first fit on (``DaskBackend(keep_bytes=...)``), so the
  first repeat also sends them (its ratio is ``details["first_fit_ratio"]``);
* ``dask/epoch/mlp/<mode>/b512/shard``: the same with ``Trainer(shuffle="shard")`` on
  both backends: each Dask worker is sent only its shards' partitions of the rows;
* ``dask/bytes_per_step/mlp/<mode>/b<batch>[/shard]``: array bytes (MB) that crossed
  between the trainer and the workers per optimizer step in those epochs but the first
  (``DaskBackend.traffic``: parameters out, gradients back);
* ``dask/loop_lag/fit``: p99 lateness (ms) of a 1 ms heartbeat while an MLP epoch trains
  on Dask (``sync``, batch 512). Every epoch above is timed with that heartbeat on the
  loop, on both backends alike, so these are the same epochs (the reference backend's
  lateness is in ``details``);
* ``dask/loop_lag/2000_tasks{,_unbounded,_scheduler_elsewhere}``: the same lateness while
  2,000 trivial tasks go through the backend with its default bound on tasks in flight,
  with no bound, and with the bound but the scheduler on another loop (a LocalCluster the
  backend starts runs its scheduler on the caller's loop).

* ``simulation/...``: step time against N = 2…64 simulated workers (see
  :mod:`benchmarks._simulation`; N = 2 and 8 with ``--quick``).

Every figure but the start-up and the simulation runs on one cluster, started once and
warmed up by a few steps in each mode. ``--quick`` measures smaller and fewer
configurations: 10,000 rows, ``local`` mode only (``dask/loop_lag/fit`` then comes from
its epochs), bursts of 150 tasks (``dask/loop_lag/150_tasks{,_unbounded}``: the name says
how many), and no scheduler elsewhere, which needs a cluster of its own.

Run alone: ``python -m benchmarks._dask [--quick] [startup|task_cost|epoch|loop_lag|simulation]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from asynctrain import Trainer, optim
from asynctrain.backends import Backend, backend_names, get_backend
from asynctrain.data import Dataset
from asynctrain.models import MLP
from benchmarks._command import run_alone
from benchmarks._figure import Figure, Spread, ratio_figure
from benchmarks._latency import lag_while
from benchmarks._scale import dataset
from benchmarks._simulation import measure as simulation
from benchmarks._workloads import head

if TYPE_CHECKING:
    from asynctrain.backends import DaskBackend

WORKERS = 2
BATCHES = (512, 8192)
# Tasks awaited together, and tasks per repeat (quick, full): about a second a repeat.
TASK_COSTS = {"single": (1, 32, 128), "step": (4, 64, 256), "in_flight": (64, 128, 512)}
LOCAL_STEPS = 8
TARGETS = {"sync/b512": "<= 3", "local/b512": "<= 1.5", "local/b8192": "<= 1.5"}
BURST = {True: 150, False: 2000}  # trivial tasks per loop-lag burst, by ``quick``
Timed = tuple[float, dict[str, float]]  # seconds of an epoch, heartbeat lateness meanwhile


def command(quick: bool) -> str:
    """The command that reproduces this suite's figures."""
    return "python -m benchmarks._dask" + (" --quick" if quick else "")


def reference_backend() -> str:
    """``"process"`` when the process backend is installed, else ``"thread"``."""
    return "process" if "process" in backend_names() else "thread"


def nothing() -> None:
    """A task with no work: what remains is the backend's own cost."""


def _dask(address: str | None = None, **options: Any) -> DaskBackend:
    from asynctrain.backends import DaskBackend  # distributed: only when this suite runs

    return DaskBackend(address, workers=WORKERS, **options)


def _backend(name: str) -> Backend:
    return _dask() if name == "dask" else get_backend(name, workers=WORKERS)[0]


async def _startup_seconds(name: str) -> float:
    began = time.perf_counter()
    async with _backend(name) as backend:
        await backend.run(nothing)
    return time.perf_counter() - began


def _figure(
    name: str, values: list[float], unit: str, reference: str, quick: bool, **details: Any
) -> Figure:
    """Median and min-max of ``values``, with this suite's command."""
    spread = Spread.of(values)
    return Figure(
        name,
        spread.median,
        spread.low,
        spread.high,
        unit,
        reference,
        spread.n,
        command(quick),
        details=details,
    )


async def startup(quick: bool, reference: str) -> Figure:
    """Seconds to start, use once and stop a Dask backend; the reference's in details."""
    repeats = 2 if quick else 5
    dask = [await _startup_seconds("dask") for _ in range(repeats)]
    other = [await _startup_seconds(reference) for _ in range(repeats)]
    details = {f"{reference}_median_s": statistics.median(other)}
    return _figure(
        "dask/startup", dask, "s", f"open + one task + close, {WORKERS} workers", quick, **details
    )


async def _per_task(backend: Backend, batch: int, tasks: int) -> float:
    began = time.perf_counter()
    for _ in range(tasks // batch):
        await asyncio.gather(*(backend.run(nothing) for _ in range(batch)))
    return (time.perf_counter() - began) / (tasks // batch * batch) * 1e3


async def task_costs(quick: bool, dask: Backend, other: Backend) -> list[Figure]:
    """Milliseconds per trivial task awaited singly, per step of 4, and 64 in flight."""
    repeats = 2 if quick else 5
    figures = []
    await dask.run(nothing)
    await other.run(nothing)
    for label, (batch, quick_tasks, full_tasks) in TASK_COSTS.items():
        tasks = quick_tasks if quick else full_tasks
        ours = [await _per_task(dask, batch, tasks) for _ in range(repeats)]
        theirs = [await _per_task(other, batch, tasks) for _ in range(repeats)]
        what = f"a task that does nothing, {batch} awaited together"
        details = {f"{other.name}_median_ms": statistics.median(theirs), "tasks": tasks}
        figure = _figure(f"dask/task_cost/{label}", ours, "ms", what, quick, **details)
        target = "<= 1" if label == "in_flight" else ""  # many in flight: the goal
        figures.append(dataclasses.replace(figure, target=target))
    return figures


def mlp_data(quick: bool) -> Dataset:
    """The ``"mlp"`` reference problem (200,000 samples; 10,000 with ``quick``)."""
    return dataset("mlp", 10_000 if quick else 200_000)


async def epoch_seconds(
    backend: Backend, data: Dataset, mode: str, batch: int, shuffle: str = "global"
) -> float:
    """Seconds of one epoch of the reference MLP on ``backend`` (a fit of its own)."""
    model = MLP((data.n_features, 256, int(data.y.max()) + 1))
    trainer = Trainer(
        model,
        optim.adam(1e-3),
        backend=backend,
        batch_size=batch,
        shards=4,
        mode=mode,
        local_steps=LOCAL_STEPS if mode == "local" else None,
        shuffle=shuffle,
    )
    began = time.perf_counter()
    await trainer.fit(data, epochs=1)
    return time.perf_counter() - began


async def epochs(quick: bool, dask: Backend, other: Backend) -> list[Figure]:
    """Epoch time on Dask over the reference backend per mode, batch and shuffle; the
    bytes per step; loop lag meanwhile."""
    data, repeats = mlp_data(quick), (2 if quick else 3)
    modes = ["local"] if quick else ["sync", "local"]
    for mode in modes:  # warm-up: imports on the workers, for each mode's tasks
        await epoch_seconds(dask, head(data), mode, BATCHES[0])
        await epoch_seconds(other, head(data), mode, BATCHES[0])
    configs = [(mode, batch, "global") for mode in modes for batch in BATCHES]
    configs += [(mode, BATCHES[0], "shard") for mode in modes]
    figures: list[Figure] = []
    lags: list[list[Timed]] = []
    for mode, batch, shuffle in configs:
        runs, before = [], _traffic(dask)
        for _ in range(repeats):
            runs.append(
                [
                    await _epoch_and_lag(backend, data, mode, batch, shuffle)
                    for backend in (dask, other)
                ]
            )
            if len(runs) == 1:  # later fits find the rows on the workers: count those
                before = _traffic(dask)
        suffix = "/shard" if shuffle == "shard" else ""
        figures.append(
            ratio_figure(
                f"dask/epoch/mlp/{mode}/b{batch}{suffix}",
                [ours[0] for ours, _ in runs],
                [theirs[0] for _, theirs in runs],
                reference=f"{other.name} backend, same mode and shuffle, 4 shards, "
                f"{len(data)} rows",
                command=command(quick),
                target=TARGETS.get(f"{mode}/b{batch}", ""),
                details={"first_fit_ratio": runs[0][0][0] / runs[0][1][0]},
            )
        )
        if hasattr(dask, "traffic"):  # a backend that counts what it sends
            figures.append(
                _bytes_figure(dask, before, data, f"{mode}/b{batch}{suffix}", repeats - 1, quick)
            )
        if (mode, batch, shuffle) == configs[0]:
            lags = runs
    return [*figures, _fit_lag(lags, modes[0], other.name, quick)]


def _traffic(backend: Backend) -> tuple[int, int]:
    traffic = getattr(backend, "traffic", None)
    return (traffic.sent, traffic.returned) if traffic is not None else (0, 0)


def _bytes_figure(
    dask: Backend, before: tuple[int, int], data: Dataset, config: str, epochs: int, quick: bool
) -> Figure:
    """MB per optimizer step that crossed between the trainer and the workers during the
    last ``epochs`` epochs of ``config`` (``mode/b<batch>[/shard]``): parameters out,
    gradients back. The rows were sent by an earlier fit and kept on the workers."""
    sent, returned = (after - was for after, was in zip(_traffic(dask), before, strict=True))
    batch = int(config.split("/")[1][1:])
    steps = epochs * -(-len(data) // batch)
    details = {
        "sent_MB": sent / steps / 1e6,
        "returned_MB": returned / steps / 1e6,
        "dataset_MB": (data.X.nbytes + data.y.nbytes) / 1e6,
        "steps": steps,
    }
    what = f"array bytes per step, {config}, 4 shards, {dask.workers} workers"
    return _figure(
        f"dask/bytes_per_step/mlp/{config}",
        [(sent + returned) / steps / 1e6],
        "MB",
        what,
        quick,
        **details,
    )


async def _epoch_and_lag(
    backend: Backend, data: Dataset, mode: str, batch: int, shuffle: str = "global"
) -> Timed:
    """:func:`epoch_seconds`, and the lateness of a 1 ms heartbeat on the loop meanwhile."""
    return await lag_while(functools.partial(epoch_seconds, backend, data, mode, batch, shuffle))


def _fit_lag(runs: list[list[Timed]], mode: str, other: str, quick: bool) -> Figure:
    """``dask/loop_lag/fit`` from the paired epochs of ``mode`` at batch 512."""
    ours, theirs = [dask[1] for dask, _ in runs], [reference[1] for _, reference in runs]
    details = {f"{other}_p99_ms": statistics.median(r["p99_ms"] for r in theirs)}
    what = f"an MLP epoch trains ({mode}, batch {BATCHES[0]})"
    return _lag_figure("dask/loop_lag/fit", ours, what, quick, **details)


def _lag_figure(
    name: str, runs: list[dict[str, float]], what: str, quick: bool, **details: Any
) -> Figure:
    details |= {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    reference = f"p99 lateness of a 1 ms heartbeat while {what}"
    return _figure(name, [r["p99_ms"] for r in runs], "ms", reference, quick, **details)


async def loop_lag(quick: bool, dask: DaskBackend) -> list[Figure]:
    """Heartbeat lateness while a burst of trivial tasks goes through Dask, three ways
    (two with ``quick``: not with the scheduler elsewhere, which needs a cluster of its own)."""
    tasks, repeats = BURST[quick], (2 if quick else 3)

    async def runs(backend: Backend) -> list[dict[str, float]]:
        return [(await lag_while(_burst(backend, tasks)))[1] for _ in range(repeats)]

    name, what = f"dask/loop_lag/{tasks}_tasks", f"{tasks:,} trivial tasks run"
    figures = [_lag_figure(name, await runs(dask), what, quick)]
    async with _dask(client=dask.client, max_in_flight=tasks) as unbounded:  # same cluster
        no_bound = await runs(unbounded)
    figures.append(_lag_figure(f"{name}_unbounded", no_bound, f"{what} with no bound", quick))
    if quick:
        return figures
    async with _cluster_in_a_thread() as address, _dask(address) as elsewhere:
        elsewhere_runs = await runs(elsewhere)
    what = f"{what}, the scheduler on another thread's loop"
    return [*figures, _lag_figure(f"{name}_scheduler_elsewhere", elsewhere_runs, what, quick)]


def _burst(backend: Backend, tasks: int) -> Callable[[], Awaitable[Any]]:
    async def burst() -> None:
        await asyncio.gather(*(backend.run(nothing) for _ in range(tasks)))

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


PARTS = ("startup", "task_cost", "epoch", "loop_lag", "simulation")


async def run(quick: bool, parts: tuple[str, ...] = PARTS) -> list[Figure]:
    """The figures of ``parts`` (default: all); see the module docstring."""
    reference = reference_backend()
    figures = [await startup(quick, reference)] if "startup" in parts else []
    if "simulation" in parts:
        figures += await simulation(quick)
    if not set(parts) - {"startup", "simulation"}:
        return figures
    async with _dask() as dask, _backend(reference) as other:
        if "task_cost" in parts:
            figures += await task_costs(quick, dask, other)
        if "epoch" in parts:
            figures += await epochs(quick, dask, other)
        if "loop_lag" in parts:
            figures += await loop_lag(quick, dask)
    return figures


if __name__ == "__main__":  # [--quick] [PART ...] with PART in PARTS
    sys.exit(run_alone("dask", parts=PARTS))
