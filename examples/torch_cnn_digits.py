"""A small PyTorch CNN on scikit-learn's bundled digits (8x8 images), trained by asynctrain.

The module is an ordinary ``torch.nn.Module``; ``TorchModel`` runs it functionally over
the trainer's parameters, so gradients come from autograd and the run is bit-identical on
every backend for a seed and shard count. Rows keep their image shape ``(1, 8, 8)``.

Needs ``pip install 'asynctrain[torch,sklearn]'``.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import asynctrain as at


def digits_cnn() -> nn.Module:
    """Two 3x3 convolutions with GroupNorm (no BatchNorm: its running statistics would
    differ between shards), then one linear layer over the 10 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 16 x 4 x 4
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 32 x 2 x 2
        nn.Flatten(),
        nn.Dropout(0.1),  # seeded per (seed, step, shard): reproducible on every backend
        nn.Linear(128, 10),
    )


def digits() -> tuple[at.data.Dataset, at.data.Dataset]:
    """The 1,797 digits as (n, 1, 8, 8) float32 images in [0, 1], split 75/25."""
    bunch = load_digits()
    X = (bunch.images / 16.0).astype(np.float32)[:, None]
    return at.data.Dataset(X, bunch.target).split(0.25, seed=0)


async def main(epochs: int = 30, backend: str = "thread", workers: int = 2) -> float:
    train, test = digits()
    torch.manual_seed(0)  # fixes the module's initial parameters
    model = at.models.TorchModel(digits_cnn(), input_shape=(1, 8, 8))
    print(model)
    async with at.Trainer(
        model, at.optim.adam(3e-3), backend=backend, workers=workers, batch_size=64, shards=2
    ) as trainer:
        result = await trainer.fit(train, epochs=epochs, validation=test)
        accuracy = float(np.mean(trainer.predict(test.X) == test.y))
    print(f"{result.steps} steps in {result.seconds:.1f} s, test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    at.run(main())
