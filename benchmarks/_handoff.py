"""Hand-off: what a 2-shard sync step costs on a backend beyond its math done in place.

``handoff/<backend>`` (``thread``, target ≤ 100 µs; ``process``, target ≤ 200 µs; issue
20, goals 3 and 4) is, in microseconds::

    median step time, <backend>(workers=2), batch 2n in 2 shards        (A)
  - median step time, inline backend,      batch n in 1 shard           (B)
  - parallel penalty of the machine                                     (P)

on the reference MLP (128-256-10) with n = 512 rows per shard (about 1 ms of math on one
core) and SGD. Each worker computes one shard of n rows while the other computes its
own, so an ideal 2-shard step takes as long as one shard computed in place plus its
update (B). What A adds to B is handing each shard to a worker and its result back to the
loop, the loop's waits for the workers' GIL (threads), pickles and pipes (processes), the
update's hop to the update thread (the inline backend updates on the loop's thread),
summing two gradients instead of one (a few µs), and whatever computing on two cores at
once costs over one on this machine at this moment: the neighbours' load, memory
bandwidth, and on threads the two workers' waits for each other's GIL. That last part is
the machine's and the math's, not the hand-off's, so it is measured without asynctrain
and subtracted: P is the time per shard of 2 bare threads each computing
:data:`PENALTY_SHARDS` shards in a row (``model.loss_and_grad`` on the same rows) minus
the time per shard of the same shards computed on the loop's thread. The bare threads run
at the workers' nice value (+5 on Linux, docs/backends.md), so that a neighbour's load
weighs on P as on the workers; a thread start and join are amortised over the shards.
They are not the workers' kind of thread in two ways (docs/benchmarks.md, "Why the rest
are missed"): they keep the normal scheduling policy where the workers run
``SCHED_BATCH``, and they compute their shards without sleeping, where a worker sleeps
between shards and is woken for each.
Like ``scaling/*``, the figure means something only where two cores are free: under a
load average above the core count, threads that compute without a pause (P's) are starved
more than workers that sleep between shards, P over-corrects and the figure can go
negative (``details`` keeps A, B and P apart; compare ``scaling/ceiling``).
Both sides hold BLAS to one thread per core, as the thread backend's workers do.

``handoff/<backend>/nomath`` (informational) is A - B for a model whose shard math is next
to nothing (:class:`NullModel`, 2 rows per shard, both sides in 2 shards; P is 0): the
mechanics of the hand-off alone.

A step's time is the wall time between consecutive ``StepEvent`` of
:meth:`Trainer.steps <asynctrain.Trainer.steps>` (public API; the consumer stamps each
event as it arrives), with both trainers open for the whole measurement (threads or
worker processes already started). Each fit is :data:`FIT_STEPS` steps long and runs
through a fresh :class:`Fresh` view of the open backend, so every step is in the
placement's warm-up (docs/backends.md: a backend remembers its placements, and the first
8 steps of the first fit of a kind run one task per shard): the step is *spread*, one
task per shard, each on a worker of its own, whatever a later step would choose. The
first interval of a fit is step 1 (step 0 has no predecessor), so a fit gives
``FIT_STEPS - 1`` step times.

A repeat alternates fits of the two sides (``fits`` of each, taking turns going first),
measuring P between them, and takes A - B - P from the medians; the figure is the median
over repeats, with their min and max. ``details`` has the medians of A, B and P.

Run alone: ``python -m benchmarks._handoff [--quick]``.
"""

from __future__ import annotations

import functools
import itertools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from asynctrain import Trainer, optim
from asynctrain.backends import Backend, get_backend
from asynctrain.data import Dataset
from benchmarks._command import run_alone
from benchmarks._figure import Figure, Spread, skipped_figure
from benchmarks._scale import command, dataset, level, repeats
from benchmarks._workloads import backend_available, model_for

TARGETS = {"thread": "<= 100", "process": "<= 200"}
FIT_STEPS = 8
"""Steps per fit: the placement's documented warm-up, in which every step is spread."""
PENALTY_SHARDS = 16
"""Shards each thread computes in a row when P is measured."""
WORKER_NICENESS = 5
"""The nice value the thread and process backends' workers add (docs/backends.md)."""
_FITS = {"full": 30, "quick": 8, "smoke": 1}  # fits of each side per repeat


class NullModel:
    """A model whose shard math is next to nothing: loss 0, a fresh zero gradient.

    One float32 parameter ``w``; it predicts 0. Module-level so the process backend can
    pickle it.
    """

    n_features = 1
    n_classes = None
    dtype = np.dtype(np.float32)

    def init(self, rng: np.random.Generator) -> dict[str, npt.NDArray[Any]]:
        """One zero parameter."""
        return {"w": np.zeros(1, np.float32)}

    def loss_and_grad(
        self, params: dict[str, npt.NDArray[Any]], X: npt.NDArray[Any], y: npt.NDArray[Any]
    ) -> tuple[float, dict[str, npt.NDArray[Any]]]:
        """Loss 0 and a new zero gradient (the trainer keeps a shard's gradient arrays)."""
        return 0.0, {"w": np.zeros(1, np.float32)}

    def predict(self, params: dict[str, npt.NDArray[Any]], X: npt.NDArray[Any]) -> Any:
        """Zeros."""
        return np.zeros(len(X), np.float32)


class Side(NamedTuple):
    """One side of the difference: a model, rows per shard and shards per step."""

    model: Any
    rows: int
    shards: int

    def trainer(self, backend: str | Backend) -> Trainer:
        """A trainer of this side on ``backend`` (SGD; the batch is the step's shards)."""
        batch = self.rows * self.shards
        return Trainer(
            self.model, optim.sgd(1e-3), backend=backend, shards=self.shards, batch_size=batch
        )

    def data(self) -> Dataset:
        """Exactly :data:`FIT_STEPS` batches (the MLP's are reference rows)."""
        rows = FIT_STEPS * self.rows * self.shards
        if isinstance(self.model, NullModel):
            return Dataset(np.zeros((rows, 1), np.float32), np.zeros(rows, np.float32))
        return dataset("mlp", rows)


WORKLOADS: dict[str, tuple[Side, Side]] = {
    "": (Side(model_for("mlp"), 512, 2), Side(model_for("mlp"), 512, 1)),
    "/nomath": (Side(NullModel(), 2, 2), Side(NullModel(), 2, 2)),
}
"""Per figure suffix: the backend's side and the inline side."""


class Fresh:
    """The open backend ``inner`` under an identity of its own: asynctrain remembers where
    steps ran best per backend object, so a fit through a fresh one starts in the
    placement's warm-up. Everything else is ``inner``'s (entering and leaving do nothing:
    ``inner`` stays open)."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def __aenter__(self) -> Fresh:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def _shards_in_a_row(side: Side, data: Dataset, params: Any) -> None:
    order = np.random.default_rng(0).permutation(len(data))  # rows gathered, as in a fit
    for i in range(PENALTY_SHARDS):
        rows = order[i % FIT_STEPS * side.rows :][: side.rows]
        side.model.loss_and_grad(params, data.X[rows], data.y[rows])


def parallel_penalty(side: Side, data: Dataset) -> float:
    """P in seconds: per shard, 2 bare threads at the workers' priority computing shards at
    once, over the same shards computed on this thread."""
    params = side.model.init(np.random.default_rng(0))
    run = functools.partial(_shards_in_a_row, side, data, params)
    began = time.perf_counter()
    run()
    alone = time.perf_counter() - began
    began = time.perf_counter()
    threads = [threading.Thread(target=_as_worker, args=(run,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.perf_counter() - began - alone) / PENALTY_SHARDS


def _as_worker(run: Callable[[], None]) -> None:
    if sys.platform.startswith("linux"):  # a nice value per thread: this thread alone
        os.nice(WORKER_NICENESS)
    run()


async def fresh_step_times(side: Side, backend: Backend, data: Dataset) -> list[float]:
    """:func:`step_times` of one fit of ``side`` on a :class:`Fresh` view of ``backend``."""
    async with side.trainer(Fresh(backend)) as trainer:
        return await step_times(trainer, data)


async def step_times(trainer: Trainer, data: Dataset) -> list[float]:
    """Seconds between consecutive step events of one fit of ``data`` on ``trainer``."""
    stamps = []
    async for event in trainer.steps(data):
        if event.kind == "step":
            stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)]


async def handoff(
    backend_name: str, workload: str = "", *, repeats: int, fits: int
) -> tuple[list[float], dict[str, Any]]:
    """Per repeat, the median step time on ``backend_name`` (2 workers) minus the inline
    backend's, in µs, for ``WORKLOADS[workload]``; and each side's median over repeats."""
    ours, theirs = WORKLOADS[workload]
    data = {ours: ours.data(), theirs: theirs.data()}
    spec, _ = get_backend(backend_name, workers=2)
    medians: dict[Side, list[float]] = {ours: [], theirs: []}
    penalties: list[float] = []
    async with spec, theirs.trainer("inline") as here:

        async def fit(side: Side) -> list[float]:
            if side is theirs:
                return await step_times(here, data[side])
            return await fresh_step_times(side, spec, data[side])

        with threadpool_limits(1, user_api="blas"):  # one core's BLAS, as on each worker
            for side in (ours, theirs):  # warm-up: imports, first touch, workers
                await fit(side)
            for _ in range(repeats):
                times: dict[Side, list[float]] = {ours: [], theirs: []}
                penalty = []
                for i in range(fits):  # take turns going first: drift hits both alike
                    for side in (theirs, ours) if i % 2 else (ours, theirs):
                        times[side] += await fit(side)
                    if ours.shards > theirs.shards:
                        penalty.append(parallel_penalty(theirs, data[theirs]))
                penalties.append(statistics.median(penalty) * 1e6 if penalty else 0.0)
                for side in (ours, theirs):
                    medians[side].append(statistics.median(times[side]) * 1e6)
    pairs = zip(medians[ours], medians[theirs], penalties, strict=True)
    diffs = [a - b - p for a, b, p in pairs]
    details = {
        "step_us": statistics.median(medians[ours]),
        "inline_step_us": statistics.median(medians[theirs]),
        "parallel_penalty_us": statistics.median(penalties),
        "rows_per_shard": ours.rows,
        "shards": ours.shards,
        "inline_shards": theirs.shards,
    }
    return diffs, details


async def _figure(backend_name: str, workload: str, quick: bool) -> Figure:
    name, cmd = f"handoff/{backend_name}{workload}", command("handoff", quick)
    target = "" if workload else TARGETS[backend_name]
    reference = (
        "the same 2-shard step on the inline backend (math ~0)"
        if workload
        else "one 512-row MLP shard's step on the inline backend"
    )
    missing = backend_available(backend_name)
    if missing:
        return skipped_figure(
            name, missing, unit="us", reference=reference, command=cmd, target=target
        )
    fits = _FITS[level(quick)]
    diffs, details = await handoff(backend_name, workload, repeats=repeats(quick), fits=fits)
    spread = Spread.of(diffs)
    details |= {"workers": 2, "fits": fits, "steps_per_fit": FIT_STEPS}
    return Figure(
        name,
        spread.median,
        spread.low,
        spread.high,
        "us",
        reference,
        spread.n,
        cmd,
        target,
        details=details,
    )


async def run(quick: bool) -> list[Figure]:
    """The hand-off of a 2-shard step on threads and on processes."""
    return [
        await _figure(backend, workload, quick) for backend in TARGETS for workload in WORKLOADS
    ]


if __name__ == "__main__":
    sys.exit(run_alone("handoff"))
