"""Helpers shared by the reliability tests: a model that turns NaN on chosen samples,
a recorder of the trajectory of states, bit-level comparisons, and a backend that fires a
trigger at its k-th call, and a file that runs out of disk space."""

from __future__ import annotations

import errno
import importlib.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import asynctrain as at
from asynctrain._engine._work import ShardTask
from asynctrain.data import Dataset, batch_bounds, epoch_order, shard_bounds
from asynctrain.models import SoftmaxRegression
from asynctrain.optim._tree import leaves


def skip_missing_backend(name: str) -> None:
    """Skip a test parametrized over conftest.BACKENDS for a backend not built yet."""
    if name == "process" and importlib.util.find_spec("asynctrain.backends._process") is None:
        pytest.skip("the process backend is not on this branch yet")


def state_bits(state: at.TrainState) -> dict[str, Any]:
    """Every bit of a TrainState: counters, parameter bytes, optimizer leaves and scalars."""
    return {
        "counters": (state.step, state.version, state.skipped, state.epoch, state.batch),
        "params": {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in state.params.items()},
        "opt": [(p, a.dtype.str, a.shape, a.tobytes()) for p, a in leaves(state.opt_state)],
        "opt_scalars": repr(_scalars(state.opt_state)),
    }


def _scalars(tree: Any) -> Any:
    if isinstance(tree, np.ndarray):
        return "array"
    if isinstance(tree, tuple):
        return tuple(_scalars(v) for v in tree)
    if isinstance(tree, dict):
        return {k: _scalars(v) for k, v in tree.items()}
    return tree


class Recorder(at.Callback):
    """Records ``state_bits`` of the trainer after every step, keyed by steps taken."""

    def __init__(self, trainer: at.Trainer) -> None:
        self.trainer = trainer
        self.states: dict[int, dict[str, Any]] = {trainer.state.step: state_bits(trainer.state)}
        self.events: list[at.StepEvent] = []

    def on_step(self, event: at.StepEvent) -> None:
        self.events.append(event)
        state = self.trainer.state
        self.states[state.step] = state_bits(state)


@dataclass(frozen=True)
class Poisoned:
    """Softmax regression on all columns but the last, which holds each row's sample id.

    Rows whose id is in ``poison`` make ``target`` non-finite: ``"loss"``, a parameter's
    gradient (``"W"`` or ``"b"``: NaN), or ``"huge"`` (a finite 1e30 in ``W``'s gradient,
    whose square overflows an optimizer's float32 moments).
    """

    inner: SoftmaxRegression = field(default_factory=lambda: SoftmaxRegression(128, 10))
    poison: frozenset[int] = frozenset()
    target: str = "W"

    @property
    def n_features(self) -> int:
        return self.inner.n_features + 1

    @property
    def n_classes(self) -> int:
        return self.inner.n_classes

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.inner.dtype

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.inner.init(rng)

    def loss_and_grad(
        self, params: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray
    ) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = self.inner.loss_and_grad(params, X[:, :-1], y)
        if not self.poison.isdisjoint(X[:, -1].astype(np.int64).tolist()):
            if self.target == "loss":
                loss = float("nan")
            else:
                grads[self.target.replace("huge", "W")].flat[0] = (
                    1e30 if self.target == "huge" else np.nan
                )
        return loss, grads

    def predict(self, params: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
        return self.inner.predict(params, X[:, :-1])


def with_ids(data: Dataset) -> Dataset:
    """``data`` with a last column holding each row's index (for :class:`Poisoned`)."""
    ids = np.arange(len(data), dtype=data.X.dtype)[:, None]
    return Dataset(np.hstack([data.X, ids]), data.y)


def sample_of(
    step: int, shard: int, *, n: int, batch_size: int, shards: int, seed: int, epoch: int = 0
) -> int:
    """The first sample id that ``shard`` of ``step`` (within ``epoch``) computes on."""
    order = epoch_order(n, seed=seed, epoch=epoch)
    start, stop = batch_bounds(n, batch_size)[step]
    first, _ = shard_bounds(stop - start, shards)[shard]
    return int(order[start + first])


class Activity:
    """Counts computations on the executor; records those started after the trigger."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.tripped = False
        self.started_after: list[int | None] = []  # the step of each (None: validation)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.lock:
            self.running += 1
            if self.tripped:
                self.started_after.append(
                    args[-1].step if isinstance(args[-1], ShardTask) else None
                )
        try:
            return fn(*args)
        finally:
            with self.lock:
                self.running -= 1


class Tripwire:
    """A backend that delegates to ``inner`` and fires ``trigger`` at its k-th run call.

    On in-process backends every computation goes through an :class:`Activity`; workers
    in other processes cannot share it, so there only the pool's busy count is seen.
    """

    def __init__(self, inner: Any, k: int, when: str, trigger: Callable[[], None]) -> None:
        self.inner, self.k, self.when, self.trigger = inner, k, when, trigger
        self.name, self.workers = inner.name, inner.workers
        self.inline = inner.inline
        self.in_process = inner.name in ("inline", "thread")
        self.calls = 0
        self.activity = Activity()

    async def run(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        self.calls += 1
        mine = self.calls == self.k
        if mine and self.when == "before":
            self._fire()
        if self.in_process:
            result = await self.inner.run(self.activity.run, fn, *args)
        else:
            result = await self.inner.run(fn, *args)
        if mine and self.when == "after":
            self._fire()
        return result

    @property
    def state(self) -> Any:
        return self.inner.state

    def check_picklable(self, *objects: object) -> None:
        self.inner.check_picklable(*objects)

    async def resize(self, workers: int) -> None:
        await self.inner.resize(workers)
        self.workers = self.inner.workers

    def running(self) -> int:
        """Computations running now (for a process pool: workers busy with a task)."""
        if self.in_process:
            return self.activity.running
        return int(getattr(getattr(self.inner, "_pool", None), "busy", 0))

    def _fire(self) -> None:
        self.activity.tripped = True
        self.trigger()

    async def share(self, arrays: Any, *, slots: int = 1) -> Any:
        return await self.inner.share(arrays, slots=slots)

    async def release(self, shared: Any) -> None:
        await self.inner.release(shared)

    async def aclose(self) -> None:
        """The test closes the inner backend itself."""

    async def __aenter__(self) -> Tripwire:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def softmax_trainer(**options: Any) -> at.Trainer:
    """The small inline softmax trainer the checkpoint tests resume (options override)."""
    settings: dict[str, Any] = {"backend": "inline", "batch_size": 100, "shards": 2, "seed": 1}
    model = options.pop("model", SoftmaxRegression(128, 10))
    optimizer = options.pop("optimizer", at.optim.adam(1e-2))
    return at.Trainer(model, optimizer, **(settings | options))


class FullDisk:
    """A file object that fails with ENOSPC once ``budget`` bytes have been written."""

    def __init__(self, inner: Any, budget: int) -> None:
        self.inner, self.budget = inner, budget

    def write(self, data: bytes) -> int:
        self.budget -= len(data)
        if self.budget < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return int(self.inner.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.close()
