"""Await a fit inside your own async code, follow its events, then predict.

Run: python examples/quickstart.py [n_samples]
"""

from __future__ import annotations

import sys

import asynctrain as at


async def main(n: int = 20_000) -> float:
    train, val = at.data.synthetic("softmax", n=n, seed=0).split(0.2, seed=0)
    model = at.models.SoftmaxRegression(train.n_features, 10)
    async with at.Trainer(model, at.optim.adam(1e-2), backend="thread", batch_size=256) as trainer:
        async for event in trainer.steps(train, epochs=3, validation=val):
            if event.kind == "epoch":
                print(
                    f"epoch {event.epoch}: loss {event.loss:.3f} val_acc {event.val_accuracy:.3f}"
                )
        accuracy = float((trainer.predict(val.X) == val.y).mean())
    print(f"accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    at.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
