"""A step of one shard task is awaited directly (no task group, no queue): its promises.

On the inline backend such a step would never suspend, so ``InlineBackend.run`` passes
through the loop once per task and stops a task whose cancellation was requested while it
computed.
These tests hold it to what a step of several shard tasks gives: other tasks run between
steps, and a cancelled fit holds the exact state of its last fully applied step (the
oracle: the same fit, uninterrupted, recorded after every step).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from _reliability import Recorder, state_bits

import asynctrain as at
from asynctrain._engine import _update as update_module
from asynctrain._finite import all_finite
from asynctrain.data import Dataset, synthetic
from asynctrain.models import SoftmaxRegression

BATCH, EPOCHS = 40, 2  # 5 steps an epoch on 200 samples


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic("softmax", n=200, seed=3)


@dataclass
class CancelAt:
    """Softmax regression whose ``call``-th gradient cancels ``task`` while it computes."""

    call: int
    task: asyncio.Task[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    calls: int = 0
    inner: SoftmaxRegression = field(default_factory=lambda: SoftmaxRegression(128, 10))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def loss_and_grad(self, params: Any, X: Any, y: Any) -> Any:
        self.calls += 1
        if self.calls == self.call and self.task is not None and self.loop is not None:
            # Task.cancel is not thread-safe: from a worker thread it goes through the loop
            # (ahead of the shard's result, so the step is still computing when it lands).
            if _on_loop(self.loop):
                self.task.cancel()
            else:
                self.loop.call_soon_threadsafe(self.task.cancel)
        return self.inner.loss_and_grad(params, X, y)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _trainer(model: Any, backend: str) -> at.Trainer:
    return at.Trainer(model, at.optim.adam(1e-2), backend=backend, batch_size=BATCH, shards=1)


async def _reference(data: Dataset) -> dict[int, dict[str, Any]]:
    async with _trainer(SoftmaxRegression(128, 10), "inline") as trainer:
        recorder = Recorder(trainer)
        await trainer.fit(data, epochs=EPOCHS, callbacks=[recorder])
        return recorder.states


async def test_one_shard_steps_let_other_tasks_run(data: Dataset) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with _trainer(SoftmaxRegression(128, 10), "inline") as trainer:
        beside = asyncio.create_task(ticker())
        result = await trainer.fit(data, epochs=EPOCHS)
        beside.cancel()
    assert result.steps == 10
    assert ticks >= result.steps  # the loop ran the ticker at least once per step


@pytest.mark.parametrize("backend", ["inline", "thread", "thread-updates-on-thread"])
@pytest.mark.parametrize("call", [1, 4, 7])
async def test_cancel_while_the_only_shard_computes_skips_its_update(
    data: Dataset, backend: str, call: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also when the step computed on the loop and its update would go to the update
    thread (a loaded machine times updates over the budget): the update thread could
    take the update before the loop delivered the cancel."""
    if backend == "thread-updates-on-thread":
        monkeypatch.setattr(update_module, "UPDATE_BUDGET", 0.0)
        backend = "thread"
    reference = await _reference(data)
    model = CancelAt(call)
    async with _trainer(model, backend) as trainer:
        model.loop = asyncio.get_running_loop()
        model.task = asyncio.create_task(trainer.fit(data, epochs=EPOCHS))
        with pytest.raises(asyncio.CancelledError):
            await model.task
        assert trainer.state.step == call - 1  # the step being computed was not applied
        assert state_bits(trainer.state) == reference[call - 1]
        resumed = await trainer.fit(data, epochs=1)  # still usable
        assert resumed.steps >= 1


@pytest.mark.parametrize(
    "arrays",
    [
        [np.ones(3, np.float32), np.arange(4)],
        [np.array([np.nan], np.float32)],
        [np.zeros((2, 2)), np.array([1.0, -np.inf])],
        [np.full(8, 1e20, np.float32)],  # finite, but its sum of squares overflows float32
        [np.full(8, 1e20, np.float32), np.array([np.inf], np.float32)],
        [np.array([1 + 2j, np.nan])],
        [np.array([True, False])],
        [np.ones((3, 4), np.float32)[:, ::2]],  # not contiguous
        [np.asfortranarray(np.ones((3, 4), np.float32))],  # column-major: read transposed
        [np.asfortranarray(np.where(np.eye(3, 4) > 0, np.nan, 1.0))],
        [np.asfortranarray(np.full((4, 3), 1e20, np.float32))],
    ],
)
def test_all_finite_agrees_with_an_elementwise_scan(arrays: list[np.ndarray[Any, Any]]) -> None:
    assert all_finite(arrays) == all(np.isfinite(a).all() for a in arrays)
