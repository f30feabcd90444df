"""Train from an async generator of batches, then apply online updates from "requests".

The producer stands in for a message queue: batches of uneven sizes arrive over time.
``fit_stream`` re-cuts them into the trainer's batch size, validates each as it arrives,
holds the producer back when training falls behind, and reports every 20 steps. Then
several concurrent ``partial_fit`` calls (as request handlers would make) are applied one
at a time, in call order.

Run: python examples/stream_async_generator.py [n_samples]
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import numpy as np

import asynctrain as at


async def messages(data: at.data.Dataset, seed: int = 0) -> AsyncIterator[tuple[np.ndarray, ...]]:
    """Batches of 50 to 400 rows, as if they arrived from a queue."""
    rng = np.random.default_rng(seed)
    sent = 0
    try:
        while sent < len(data):
            size = int(rng.integers(50, 400))
            await asyncio.sleep(0)  # a real source awaits its broker here
            X, y = data.X[sent : sent + size], data.y[sent : sent + size]
            yield X, y
            sent += len(X)
    finally:
        print(f"producer closed after {sent} rows")  # runs on end, error or cancel


async def main(n: int = 20_000) -> float:
    stream, val = at.data.synthetic("softmax", n=n, seed=0).split(0.1, seed=0)
    model = at.models.SoftmaxRegression(stream.n_features, 10)
    async with at.Trainer(model, at.optim.adam(1e-2), backend="thread", batch_size=256) as trainer:
        result = await trainer.fit_stream(
            messages(stream), validate_every=20, validation=val, buffer=4
        )
        for period in result.history:  # one EpochEvent per 20 steps, and the last few
            print(
                f"period {period.epoch} ({period.steps} steps): loss {period.loss:.3f} "
                f"val_acc {period.val_accuracy:.3f}"
            )
        fresh = at.data.synthetic("softmax", n=300, seed=1)
        requests = [(fresh.X[i : i + 100], fresh.y[i : i + 100]) for i in range(0, 300, 100)]
        updates = await asyncio.gather(*(trainer.partial_fit(X, y) for X, y in requests))
        print(f"{len(updates)} online updates applied, now at step {trainer.state.step}")
        accuracy = float((trainer.predict(val.X) == val.y).mean())
    print(f"accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    at.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
