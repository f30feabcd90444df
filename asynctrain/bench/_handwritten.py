"""The reference a user would write instead: a plain numpy training loop.

The same math as asynctrain's models and ``adam`` (mean loss over the batch, Adam with
bias correction), the same batches (``epoch_order`` and ``batch_bounds``), float32, in
one Python loop with no framework around it. The overhead figure divides asynctrain's
epoch time by this loop's, and checks that both end on the same parameters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain.data import Dataset, batch_bounds, epoch_order

Arrays = dict[str, npt.NDArray[np.float32]]


class Adam:
    """Adam updating ``params`` in place: the textbook loop, one parameter at a time."""

    def __init__(self, params: Arrays, lr: float, b1: float = 0.9, b2: float = 0.999) -> None:
        self.lr, self.b1, self.b2, self.eps, self.t = lr, b1, b2, 1e-8, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: Arrays, grads: Arrays) -> None:
        """One update from the mean gradient ``grads`` (overwritten)."""
        self.t += 1
        c1, c2 = 1.0 - self.b1**self.t, 1.0 - self.b2**self.t
        for key, g in grads.items():
            m, v = self.m[key], self.v[key]
            m *= self.b1
            m += (1.0 - self.b1) * g
            v *= self.b2
            v += (1.0 - self.b2) * g * g
            denom = np.sqrt(v / c2)
            denom += self.eps
            params[key] -= (self.lr / c1) * m / denom


def logreg_grads(p: Arrays, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> Arrays:
    """Mean log-loss gradient of binary logistic regression."""
    z = X @ p["w"] + p["b"]
    sign = np.where(y != 0, -1.0, 1.0).astype(np.float32)
    # d/dz softplus(sign * z) = sign * sigmoid(sign * z), computed without overflow.
    delta = sign * np.exp(sign * z - np.logaddexp(0, sign * z))
    delta /= len(y)
    return {"w": X.T @ delta, "b": np.array([delta.sum()], np.float32)}


def softmax_delta(logits: npt.NDArray[Any], y: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``(softmax(logits) - onehot(y)) / n``, in place."""
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    logits[np.arange(len(y)), y] -= 1
    logits /= len(y)
    return logits


def softmax_grads(p: Arrays, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> Arrays:
    """Mean cross-entropy gradient of softmax regression."""
    delta = softmax_delta(X @ p["W"] + p["b"], y)
    return {"W": X.T @ delta, "b": delta.sum(axis=0)}


def mlp_grads(p: Arrays, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> Arrays:
    """Mean cross-entropy gradient of a one-hidden-layer ReLU network."""
    h = X @ p["W0"] + p["b0"]
    np.maximum(h, 0, out=h)
    delta = softmax_delta(h @ p["W1"] + p["b1"], y)
    back = delta @ p["W1"].T
    back *= h > 0
    return {"W0": X.T @ back, "b0": back.sum(axis=0), "W1": h.T @ delta, "b1": delta.sum(axis=0)}


GRADIENTS = {"logreg": logreg_grads, "softmax": softmax_grads, "mlp": mlp_grads}


def train_epochs(
    problem: str,
    params: Arrays,
    data: Dataset,
    *,
    lr: float,
    batch_size: int,
    epochs: int = 1,
    seed: int = 0,
) -> Arrays:
    """Train ``params`` (a copy is made) for ``epochs`` with Adam; return the result."""
    params = {k: np.array(v, copy=True) for k, v in params.items()}
    grads_of, X, y = GRADIENTS[problem], data.X, data.y
    optimizer = Adam(params, lr)
    for epoch in range(epochs):
        order = epoch_order(len(y), seed=seed, epoch=epoch)
        for start, stop in batch_bounds(len(y), batch_size):
            idx = order[start:stop]
            optimizer.step(params, grads_of(params, X[idx], y[idx]))
    return params
