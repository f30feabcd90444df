"""Checkpoint a training job, cancel it midway, resume it, and get the same bits.

A service cancels a job (here: after 12 steps, mid-epoch); the job had been saving a
checkpoint every 5 steps. Resuming with ``resume=True`` continues from the latest
checkpoint exactly where it left off, so the final parameters equal those of a run that
was never interrupted. Inspect a checkpoint with ``asynctrain inspect DIRECTORY``.

Run: python examples/checkpoint_resume.py
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile

import numpy as np

import asynctrain as at

EPOCHS = 3


def make_trainer() -> at.Trainer:
    model = at.models.SoftmaxRegression(128, 10)
    return at.Trainer(model, at.optim.adam(1e-2), backend="thread", batch_size=256, seed=0)


class CancelJobAfter(at.Callback):
    """Stands in for whoever cancels the job (a request handler, an operator, a timeout)."""

    def __init__(self, steps: int, job: asyncio.Task[at.FitResult]) -> None:
        self.steps, self.job = steps, job

    def on_step(self, event: at.StepEvent) -> None:
        if event.step + 1 == self.steps:
            self.job.cancel()


async def main(n: int = 4000) -> bool:
    data = at.data.synthetic("softmax", n=n, seed=0)
    with tempfile.TemporaryDirectory() as directory:
        options = {"epochs": EPOCHS, "checkpoint_dir": directory, "checkpoint_every": 5}
        interrupted = make_trainer()
        callbacks: list[at.Callback] = []
        job = asyncio.create_task(interrupted.fit(data, callbacks=callbacks, **options))
        callbacks.append(CancelJobAfter(12, job))
        with contextlib.suppress(asyncio.CancelledError):
            await job
        print(f"job cancelled after step {interrupted.state.step}")

        resumed = make_trainer()  # a fresh trainer, as in a new process
        result = await resumed.fit(data, resume=True, **options)
        start = resumed.state.step - result.steps
        print(f"resumed from the checkpoint of step {start}: {result.steps} more steps")

    reference = make_trainer()
    await reference.fit(data, epochs=EPOCHS)
    same = all(np.array_equal(resumed.params[k], reference.params[k]) for k in reference.params)
    print(f"parameters bit-identical to an uninterrupted run: {same}")
    return same


if __name__ == "__main__":
    at.run(main())
