"""Benchmark of the training modes: time to accuracy, and throughput with a straggler.

Figures are ratios against sync mode, measured side by side in each repeat, on 2 workers
of the process backend when it is installed, else of the thread backend (the reference
text of each figure names it). Every fit: adam(1e-3), batches of 512 in 4 shards; local
mode with ``local_steps=4``, ssp with ``staleness=2``.

* ``modes/time_to_accuracy/<problem>/<mode>``: training seconds until the validation
  accuracy reaches the target (sync's accuracy after ``SYNC_EPOCHS`` epochs, minus
  ``TOLERANCE``) on the ``"logreg"`` and ``"softmax"`` reference problems, within twice
  sync's epochs (NaN if not). Accuracy is checked every 1/20 epoch off the loop; the
  checks' time is not counted. ``.../sync`` gives sync's own seconds; its first repeat is
  read from the checks of the run that sets the target.
* ``modes/straggler/<mode>``: samples per second when every task of shard 0 (lane 0 in
  async mode) sleeps ``STRAGGLER_DELAY`` on its worker: ssp and async vs sync.

Run on its own: ``python -m benchmarks._modes [--quick]``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sys
import time
from typing import Any

import numpy as np

import asynctrain as at
from asynctrain.backends import StragglerBackend
from asynctrain.data import Dataset, synthetic
from asynctrain.models import LogisticRegression, SoftmaxRegression
from benchmarks._command import run_alone
from benchmarks._figure import Figure, Spread
from benchmarks._scale import dataset
from benchmarks._workloads import head

MODES: dict[str, dict[str, int]] = {
    "sync": {},
    "local": {"local_steps": 4},
    "ssp": {"staleness": 2},
    "async": {},
}
SYNC_EPOCHS = 3
TOLERANCE = 0.01  # the target: sync's accuracy after SYNC_EPOCHS, minus this
STRAGGLER_DELAY = 0.005  # seconds per task of the straggling shard
SIZES = {
    "quick": {"logreg": 200_000, "softmax": 100_000},
    "full": {"logreg": 1_000_000, "softmax": 200_000},
}
REPEATS = {"quick": 2, "full": 5}
COMMAND = "python -m benchmarks._modes"


def backend_name() -> str:
    """``"process"`` when the process backend is installed, else ``"thread"``."""
    try:
        at.backends.get_backend("process", workers=2)
    except (ModuleNotFoundError, at.ConfigError):
        return "thread"
    return "process"


async def run(quick: bool) -> list[Figure]:
    """Measure every figure of this suite; ``quick`` uses smaller data and fewer repeats."""
    name, repeats = backend_name(), REPEATS["quick" if quick else "full"]
    figures: list[Figure] = []
    for problem in ("logreg", "softmax"):
        figures += await time_to_accuracy(problem, name, quick=quick, repeats=repeats)
    figures += await straggler_throughput(name, quick=quick, repeats=repeats)
    command = f"{COMMAND} --quick" if quick else COMMAND
    return [dataclasses.replace(figure, command=command) for figure in figures]


def _model(problem: str) -> Any:
    return LogisticRegression(64) if problem == "logreg" else SoftmaxRegression(128, 10)


def _trainer(problem: str, backend: Any, mode: str) -> at.Trainer:
    return at.Trainer(
        _model(problem),
        at.optim.adam(1e-3),
        backend=backend,
        batch_size=512,
        shards=4,
        mode=mode,
        local_steps=MODES[mode].get("local_steps"),
        staleness=MODES[mode].get("staleness"),
    )


class _Clock(at.Callback):
    """Checks accuracy every ``every`` steps off the loop and stops at ``target``, if any.

    ``history`` holds the training time and accuracy of every check, the time without the
    checks' own (tasks already in flight in ssp and async mode keep running during a check).
    """

    def __init__(
        self, trainer: at.Trainer, val: Dataset, every: int, target: float = math.inf
    ) -> None:
        self.trainer, self.val, self.target, self.every = trainer, val, target, every
        self.started, self.checking = time.perf_counter(), 0.0
        self.history: list[tuple[float, float]] = []

    async def on_step(self, event: at.StepEvent) -> bool:
        if (event.step + 1) % self.every:
            return False
        began = time.perf_counter()
        trained = began - self.started - self.checking
        accuracy = await asyncio.to_thread(_accuracy, self.trainer, self.val)
        self.checking += time.perf_counter() - began
        self.history.append((trained, accuracy))
        return accuracy >= self.target

    def seconds_to(self, target: float) -> float:
        """Training seconds at the first check at or above ``target`` (NaN if none was)."""
        return next((seconds for seconds, accuracy in self.history if accuracy >= target), math.nan)


def _accuracy(trainer: at.Trainer, val: Dataset) -> float:
    return float(np.mean(trainer.predict(val.X) == val.y))


async def time_to_accuracy(problem: str, name: str, *, quick: bool, repeats: int) -> list[Figure]:
    """Seconds to the target accuracy on ``problem``, per mode, as ratios to sync."""
    train, val = dataset(problem, SIZES["quick" if quick else "full"][problem]).split(0.2, seed=0)
    val = Dataset(val.X[:5000], val.y[:5000])
    every = max(1, at.data.steps_per_epoch(len(train), 512) // 20)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    async with at.backends.get_backend(name, workers=2)[0] as backend:
        target, seconds = await _sync_reference(problem, backend, train, val, every)
        times["sync"].append(seconds)  # the first repeat's sync: the reference run itself
        for repeat in range(repeats):
            for mode in MODES if repeat else [m for m in MODES if m != "sync"]:
                times[mode].append(
                    await _seconds_to(problem, backend, mode, train, val, target, every)
                )
    where = f"{name} backend, 2 workers, target accuracy {target:.4f}"
    return [_sync_figure(f"modes/time_to_accuracy/{problem}", times["sync"], where)] + [
        _ratio(
            f"modes/time_to_accuracy/{problem}/{mode}",
            times[mode],
            times["sync"],
            f"sync seconds (lower is faster); {where}",
        )
        for mode in MODES
        if mode != "sync"
    ]


async def _sync_reference(
    problem: str, backend: Any, train: Dataset, val: Dataset, every: int
) -> tuple[float, float]:
    """The target (sync's accuracy after ``SYNC_EPOCHS``, minus ``TOLERANCE``), and sync's
    training seconds to it in that same run (after a warm-up of a few steps)."""
    async with _trainer(problem, backend, "sync") as trainer:
        await trainer.fit(head(train))
    async with _trainer(problem, backend, "sync") as trainer:
        clock = _Clock(trainer, val, every)
        await trainer.fit(train, epochs=SYNC_EPOCHS, callbacks=[clock])
        target = await asyncio.to_thread(_accuracy, trainer, val) - TOLERANCE
    return target, clock.seconds_to(target)


async def _seconds_to(
    problem: str, backend: Any, mode: str, train: Dataset, val: Dataset, target: float, every: int
) -> float:
    """Training seconds until ``target`` (NaN if 2x sync's epochs do not reach it)."""
    async with _trainer(problem, backend, mode) as trainer:
        clock = _Clock(trainer, val, every, target)
        await trainer.fit(train, epochs=2 * SYNC_EPOCHS, callbacks=[clock])
    return clock.seconds_to(target)


async def straggler_throughput(name: str, *, quick: bool, repeats: int) -> list[Figure]:
    """Samples per second with one straggling shard: ssp and async as ratios to sync."""
    train = synthetic("softmax", n=20_000 if quick else 100_000)
    rates: dict[str, list[float]] = {"sync": [], "ssp": [], "async": []}
    stale: dict[str, list[float]] = {mode: [] for mode in rates}
    async with at.backends.get_backend(name, workers=2)[0] as inner:
        slow = StragglerBackend(inner, shard=0, delay=STRAGGLER_DELAY)
        for _ in range(repeats):
            for mode in rates:
                async with _trainer("softmax", slow, mode) as trainer:
                    result = await trainer.fit(train)
                rates[mode].append(result.samples_per_s)
                stale[mode].append(result.staleness_mean)
    where = f"{name} backend, 2 workers, shard 0 sleeps {STRAGGLER_DELAY * 1e3:g} ms per task"
    return [
        _ratio(
            f"modes/straggler/{mode}",
            rates[mode],
            rates["sync"],
            f"sync samples/s (higher is faster); {where}",
            staleness_mean=float(np.median(stale[mode])),
        )
        for mode in ("ssp", "async")
    ]


def _ratio(
    figure: str, measured: list[float], reference: list[float], label: str, **details: Any
) -> Figure:
    """Paired per-repeat ratios ``measured / reference``; NaN if a repeat fell short."""
    details = {"measured": measured, "reference": reference, **details}
    if any(math.isnan(m) for m in measured):
        nan = math.nan
        return Figure(figure, nan, nan, nan, "x", label, len(measured), COMMAND, details=details)
    spread = Spread.of([m / r for m, r in zip(measured, reference, strict=True)])
    return Figure(
        figure,
        spread.median,
        spread.low,
        spread.high,
        "x",
        label,
        spread.n,
        COMMAND,
        details=details,
    )


def _sync_figure(figure: str, seconds: list[float], where: str) -> Figure:
    spread = Spread.of(seconds)
    return Figure(
        f"{figure}/sync", spread.median, spread.low, spread.high, "s", where, spread.n, COMMAND
    )


if __name__ == "__main__":
    sys.exit(run_alone("modes"))
