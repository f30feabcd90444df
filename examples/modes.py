"""Train one problem in each mode, with a straggling shard, and compare speed and staleness.

Run: python examples/modes.py [n_samples]
"""

from __future__ import annotations

import sys
from typing import Any

import asynctrain as at
from asynctrain.backends import StragglerBackend

SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("sync", {}),
    ("local", {"local_steps": 4}),
    ("ssp", {"staleness": 2}),
    ("async", {}),
]


async def main(n: int = 20_000) -> dict[str, at.FitResult]:
    train, val = at.data.synthetic("softmax", n=n, seed=0).split(0.2, seed=0)
    results = {}
    async with at.backends.ThreadBackend(workers=2) as threads:
        # Every task of shard 0 sleeps 2 ms on its worker, like a slow machine would.
        backend = StragglerBackend(threads, shard=0, delay=0.002)
        for mode, options in SETTINGS:
            model = at.models.SoftmaxRegression(train.n_features, 10)
            trainer = at.Trainer(
                model, at.optim.adam(1e-2), backend=backend, batch_size=256, mode=mode, **options
            )
            async with trainer:
                result = await trainer.fit(train, epochs=2, validation=val)
            results[mode] = result
            print(
                f"{mode:>5}: val_acc {result.val_accuracy:.3f}  "
                f"{result.samples_per_s:9.0f} samples/s  "
                f"staleness mean {result.staleness_mean:.2f} max {result.staleness_max}"
            )
    return results


if __name__ == "__main__":
    at.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
