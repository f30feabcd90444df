"""What users would pick instead: scikit-learn and PyTorch (CPU), each optional.

Every peer is a function ``(problem, train, test, target, budget) -> Outcome`` following
the rules of :mod:`benchmarks._race`, with settings tuned on these problems (the
grid searched is in docs/benchmarks.md). A peer whose library is not installed raises
:class:`PeerMissing`, which the suite reports as a skipped figure.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from asynctrain.data import Dataset
from benchmarks._race import CHECKS_PER_EPOCH, Outcome, race_batch_solver, race_minibatch
from benchmarks._workloads import MLP_HIDDEN

Peer = Callable[[str, Dataset, Dataset, float, float], Outcome]
LINEAR = ("logreg", "softmax")


class PeerMissing(Exception):
    """The peer's library is not installed."""


def _need(module: str, extra: str = "bench") -> None:
    if importlib.util.find_spec(module) is None:
        raise PeerMissing(f"{module} is not installed (pip install 'asynctrain[{extra}]')")


def _accuracy_of(model: Any, test: Dataset) -> Callable[[], float]:
    return lambda: float(np.mean(model.predict(test.X) == test.y))


def sgd_classifier(
    problem: str, train: Dataset, test: Dataset, target: float, budget: float
) -> Outcome:
    """scikit-learn SGDClassifier (log-loss; one-vs-rest on both cores for 10 classes)."""
    _need("sklearn")
    from sklearn.linear_model import SGDClassifier

    model = SGDClassifier(loss="log_loss", alpha=1e-5, n_jobs=2, random_state=0)
    classes = np.unique(train.y)
    step = lambda idx: model.partial_fit(train.X[idx], train.y[idx], classes=classes)  # noqa: E731
    return race_minibatch(
        step,
        _accuracy_of(model, test),
        n=len(train),
        target=target,
        budget=budget,
        setting="loss=log_loss, alpha=1e-5, n_jobs=2",
    )


def logistic_regression(
    problem: str, train: Dataset, test: Dataset, target: float, budget: float
) -> Outcome:
    """scikit-learn LogisticRegression (lbfgs), with the smallest max_iter that is enough."""
    _need("sklearn")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def fit(max_iter: int) -> Callable[[], float]:
        model = LogisticRegression(max_iter=max_iter, tol=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(train.X, train.y)
        return _accuracy_of(model, test)

    return race_batch_solver(fit, target=target, budget=budget, setting="lbfgs, C=1")


def mlp_classifier(
    problem: str, train: Dataset, test: Dataset, target: float, budget: float
) -> Outcome:
    """scikit-learn MLPClassifier (adam), one hidden layer of 256 like asynctrain's."""
    _need("sklearn")
    from sklearn.neural_network import MLPClassifier

    batch, lr = TORCH_SETTINGS["mlp"]
    batch = min(batch, len(train) // CHECKS_PER_EPOCH)  # partial_fit sees a quarter epoch
    model = MLPClassifier((MLP_HIDDEN,), batch_size=batch, learning_rate_init=lr, random_state=0)
    classes = np.unique(train.y)
    step = lambda idx: model.partial_fit(train.X[idx], train.y[idx], classes=classes)  # noqa: E731
    return race_minibatch(
        step,
        _accuracy_of(model, test),
        n=len(train),
        target=target,
        budget=budget,
        setting=f"adam, lr={lr}, batch {batch}",
    )


def torch_peer(threads: int) -> Peer:
    """PyTorch on the CPU with ``threads`` intra-op threads: Adam, the same architecture."""

    def peer(problem: str, train: Dataset, test: Dataset, target: float, budget: float) -> Outcome:
        _need("torch")
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return _torch_race(torch, problem, train, test, target, budget)
        finally:
            torch.set_num_threads(previous)

    peer.__name__ = f"torch_{threads}"
    peer.__doc__ = f"PyTorch (CPU, {threads} thread{'s' if threads > 1 else ''}), Adam."
    return peer


# Tuned on the same grid as asynctrain's settings (the MLP's serves scikit-learn's too).
TORCH_SETTINGS = {"logreg": (4096, 8e-2), "softmax": (4096, 8e-2), "mlp": (2048, 1e-2)}


def _torch_race(
    torch: Any, problem: str, train: Dataset, test: Dataset, target: float, budget: float
) -> Outcome:
    torch.manual_seed(0)
    # Copies: torch wants writable arrays, and a Dataset's are read-only.
    X, y = torch.from_numpy(np.array(train.X)), torch.from_numpy(np.array(train.y))
    Xt, yt = torch.from_numpy(np.array(test.X)), torch.from_numpy(np.array(test.y))
    n_classes, n_features = int(train.y.max()) + 1, train.n_features
    if problem == "mlp":
        net = torch.nn.Sequential(
            torch.nn.Linear(n_features, MLP_HIDDEN),
            torch.nn.ReLU(),
            torch.nn.Linear(MLP_HIDDEN, n_classes),
        )
    else:
        net = torch.nn.Linear(n_features, n_classes)
    batch, lr = TORCH_SETTINGS[problem]
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(idx: Any) -> None:
        order = torch.from_numpy(idx)
        for start in range(0, len(order), batch):
            rows = order[start : start + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(net(X[rows]), y[rows]).backward()
            opt.step()

    def accuracy() -> float:
        with torch.no_grad():
            return float((net(Xt).argmax(1) == yt).float().mean())

    return race_minibatch(
        step,
        accuracy,
        n=len(train),
        target=target,
        budget=budget,
        setting=f"Adam, lr={lr}, batch {batch}",
    )


def peers_for(problem: str) -> dict[str, Peer]:
    """The peers that train the same kind of model as asynctrain on ``problem``."""
    sklearn: dict[str, Peer] = (
        {"sklearn-sgd": sgd_classifier, "sklearn-logreg": logistic_regression}
        if problem in LINEAR
        else {"sklearn-mlp": mlp_classifier}
    )
    return {**sklearn, "torch-1t": torch_peer(1), "torch-2t": torch_peer(2)}
