"""The reference a user would write instead: a plain numpy training loop.

The same math as asynctrain's models and ``adam`` / ``sgd`` (mean loss over the batch,
Adam with bias correction, SGD with optional momentum as in PyTorch), the same batches
(``epoch_order`` and ``batch_bounds``), float32, in one Python loop with no framework
around it. Like asynctrain, which reports every step's loss, each step computes its loss
too (kept in ``losses``). The overhead figure divides asynctrain's epoch time by this
loop's, and checks that both end on the same parameters; the time-to-accuracy suite races
it as a peer (:func:`benchmarks._peers.numpy_peer`, with :class:`SGD` or :class:`Adam`).
"""

from __future__ import annotations

from collections.abc import Callable
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


class SGD:
    """Minibatch SGD updating ``params`` in place; momentum as in PyTorch (``t = m*t + g``)."""

    def __init__(self, params: Arrays, lr: float, momentum: float = 0.0) -> None:
        self.lr, self.momentum = lr, momentum
        self.trace = {k: np.zeros_like(v) for k, v in params.items()} if momentum else {}

    def step(self, params: Arrays, grads: Arrays) -> None:
        """One update from the mean gradient ``grads`` (overwritten)."""
        for key, g in grads.items():
            if self.momentum:
                t = self.trace[key]
                t *= self.momentum
                t += g
                g[...] = t
            g *= self.lr
            params[key] -= g


def logreg_grads(p: Arrays, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> tuple[float, Arrays]:
    """Mean log-loss and its gradient, binary logistic regression."""
    z = X @ p["w"] + p["b"]
    t = np.where(y != 0, -z, z)  # the loss of a row is softplus(t)
    softplus = np.logaddexp(0, t)
    delta = np.exp(t - softplus)  # sigmoid(t), without overflow
    delta[y != 0] *= -1
    delta /= len(y)
    grads = {"w": X.T @ delta, "b": np.array([delta.sum()], np.float32)}
    return float(softplus.mean()), grads


def softmax_delta(logits: npt.NDArray[Any], y: npt.NDArray[Any]) -> tuple[float, npt.NDArray[Any]]:
    """Mean cross-entropy and ``(softmax(logits) - onehot(y)) / n`` (in place)."""
    rows = np.arange(len(y))
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    loss = -float(np.log(logits[rows, y]).mean())
    logits[rows, y] -= 1
    logits /= len(y)
    return loss, logits


def softmax_grads(p: Arrays, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> tuple[float, Arrays]:
    """Mean cross-entropy and its gradient, softmax regression."""
    loss, delta = softmax_delta(X @ p["W"] + p["b"], y)
    return loss, {"W": X.T @ delta, "b": delta.sum(axis=0)}


def mlp_grads(p: Arrays, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> tuple[float, Arrays]:
    """Mean cross-entropy and its gradient, one-hidden-layer ReLU network."""
    h = X @ p["W0"] + p["b0"]
    np.maximum(h, 0, out=h)
    loss, delta = softmax_delta(h @ p["W1"] + p["b1"], y)
    back = delta @ p["W1"].T
    back *= h > 0
    grads = {"W0": X.T @ back, "b0": back.sum(axis=0), "W1": h.T @ delta, "b1": delta.sum(axis=0)}
    return loss, grads


GRADIENTS: dict[str, Callable[..., tuple[float, Arrays]]] = {
    "logreg": logreg_grads,
    "softmax": softmax_grads,
    "mlp": mlp_grads,
}


def predict(problem: str, p: Arrays, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Class predictions of the problem's model: the sign of the score, or the top logit."""
    if problem == "logreg":
        scores: npt.NDArray[Any] = X @ p["w"] + p["b"]
        return (scores > 0).astype(np.int64)
    if problem == "softmax":
        logits: npt.NDArray[Any] = X @ p["W"] + p["b"]
    else:
        h = np.maximum(X @ p["W0"] + p["b0"], 0)
        logits = h @ p["W1"] + p["b1"]
    classes: npt.NDArray[Any] = np.argmax(logits, axis=1)
    return classes


def train_epochs(
    problem: str,
    params: Arrays,
    data: Dataset,
    *,
    lr: float,
    batch_size: int,
    epochs: int = 1,
    seed: int = 0,
    losses: list[float] | None = None,
    optimizer: Callable[[Arrays], Adam | SGD] | None = None,
) -> Arrays:
    """Train ``params`` (a copy is made) for ``epochs``; return the result.

    The optimizer is ``Adam(params, lr)`` unless ``optimizer(params)`` makes another.
    Each step's mean loss is appended to ``losses`` when given.
    """
    params = {k: np.array(v, copy=True) for k, v in params.items()}
    grads_of, X, y = GRADIENTS[problem], data.X, data.y
    optimizer_ = Adam(params, lr) if optimizer is None else optimizer(params)
    record = [] if losses is None else losses
    for epoch in range(epochs):
        order = epoch_order(len(y), seed=seed, epoch=epoch)
        for start, stop in batch_bounds(len(y), batch_size):
            idx = order[start:stop]
            loss, grads = grads_of(params, X[idx], y[idx])
            record.append(loss)
            optimizer_.step(params, grads)
    return params
