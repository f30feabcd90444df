"""Shrink and grow a process pool in the middle of a fit; the parameters keep every bit.

A callback resizes the pool between steps (2 -> 1 -> 3 workers); the result is compared,
bit for bit, with the same fit on a pool of 2 throughout.

Run: python examples/elastic_pool.py [n_samples]
"""

from __future__ import annotations

import sys

import numpy as np

import asynctrain as at
from asynctrain.backends import ProcessBackend


class Resize(at.Callback):
    """Resize ``backend`` after the given steps: ``{step: workers}``."""

    def __init__(self, backend: at.backends.Backend, plan: dict[int, int]) -> None:
        self.backend, self.plan = backend, plan

    async def on_step(self, event: at.StepEvent) -> None:
        if event.step in self.plan:
            await self.backend.resize(self.plan[event.step])
            print(f"after step {event.step}: {self.backend.workers} worker(s)")


async def fit(data: at.data.Dataset, plan: dict[int, int]) -> at.FitResult:
    async with ProcessBackend(workers=2, task_timeout=60.0) as backend:
        model = at.models.SoftmaxRegression(data.n_features, 10)
        trainer = at.Trainer(model, at.optim.adam(1e-2), backend=backend, shards=4, seed=0)
        async with trainer:
            return await trainer.fit(data, epochs=2, callbacks=[Resize(backend, plan)])


async def main(n: int = 20_000) -> bool:
    data = at.data.synthetic("softmax", n=n, seed=0)
    elastic = await fit(data, {3: 1, 6: 3})
    fixed = await fit(data, {})
    same = all(np.array_equal(elastic.params[k], fixed.params[k]) for k in fixed.params)
    print(f"loss {elastic.loss:.4f}; bit-identical to the fixed pool of 2: {same}")
    return same


if __name__ == "__main__":
    sys.exit(0 if at.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)) else 1)
