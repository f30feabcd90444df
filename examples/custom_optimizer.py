"""Compose an optimizer from building blocks: clip, momentum, a scheduled learning rate.

An optimizer is an ``(init, update)`` pair; ``chain`` runs transforms in order, each
rewriting the gradient. This one is SGD with momentum whose steps are clipped to a global
norm of 1 and whose learning rate warms up linearly, then decays along a cosine.

Run: python examples/custom_optimizer.py
"""

from __future__ import annotations

import numpy as np

import asynctrain as at
from asynctrain import optim


def make_optimizer(total_steps: int) -> optim.GradientTransformation:
    schedule = optim.warmup_cosine_decay(
        0.05, warmup_steps=total_steps // 10, decay_steps=total_steps
    )
    return optim.chain(
        optim.clip_by_global_norm(1.0),
        optim.trace(0.9),
        optim.scale_by_learning_rate(schedule),
    )


async def main(n: int = 20_000, epochs: int = 3) -> float:
    train, test = at.data.synthetic("softmax", n=n, seed=0).split(0.2, seed=0)
    batch_size = 256
    total = epochs * at.data.steps_per_epoch(len(train), batch_size)
    optimizer = make_optimizer(total)
    print(optimizer)
    model = at.models.SoftmaxRegression(train.n_features, 10)
    async with at.Trainer(model, optimizer, batch_size=batch_size) as trainer:
        result = await trainer.fit(train, epochs=epochs, validation=test)
        accuracy = float(np.mean(trainer.predict(test.X) == test.y))
    for epoch in result.history:
        print(f"epoch {epoch.epoch}: loss {epoch.loss:.4f}  val_accuracy {epoch.val_accuracy:.3f}")
    print(f"{result.steps} steps, test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    at.run(main())
