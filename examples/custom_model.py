"""Bring your own model: any class with the Model protocol's attributes and methods.

A model holds only configuration; its parameters are a dict of arrays the trainer owns.
``loss_and_grad`` returns the loss SUMMED over the rows (so shard results add up) and its
gradient. ``check_gradients`` compares that gradient with finite differences before you
train: do it in float64 on a few rows.

Run: python examples/custom_model.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import asynctrain as at


@dataclass(frozen=True)
class SquaredHinge:
    """A linear classifier with the squared hinge loss ``max(0, 1 - s * (x.w + b))**2``.

    Labels are 0/1 (``s = 2y - 1``); it predicts 1 where ``x.w + b > 0``.
    """

    n_features: int
    dtype: np.dtype[Any] = field(default=np.dtype(np.float32))
    n_classes: int = 2

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        w = rng.normal(0.0, 0.01, self.n_features).astype(self.dtype)
        return {"w": w, "b": np.zeros(1, self.dtype)}

    def loss_and_grad(
        self, params: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray
    ) -> tuple[float, dict[str, np.ndarray]]:
        sign = 2.0 * y - 1.0
        slack = np.maximum(0.0, 1.0 - sign * (X @ params["w"] + params["b"]))
        dz = (-2.0 * sign * slack).astype(self.dtype)  # d loss / d (x.w + b), per row
        grads = {"w": X.T @ dz, "b": np.array([dz.sum()], self.dtype)}
        return float(np.sum(slack**2)), grads

    def predict(self, params: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
        return (X @ params["w"] + params["b"] > 0).astype(np.int64)


async def main(n: int = 20_000) -> float:
    train, test = at.data.synthetic("logreg", n=n, seed=0).split(0.2, seed=0)

    # 1. Check the gradient against finite differences, in float64, on a few rows.
    exact = SquaredHinge(train.n_features, dtype=np.dtype(np.float64))
    params = exact.init(np.random.default_rng(0))
    X, y = train.X[:32].astype(np.float64), train.y[:32]
    check = at.models.check_gradients(exact, params, X, y)
    print(check)
    assert check.ok, check

    # 2. Train the float32 model like any built-in one.
    model = SquaredHinge(train.n_features)
    assert isinstance(model, at.models.Model)
    result = await at.fit(model, train, optimizer=at.optim.adam(1e-2), epochs=2, batch_size=256)
    accuracy = float(np.mean(model.predict(result.params, test.X) == test.y))
    print(f"{result.steps} steps, test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    at.run(main())
