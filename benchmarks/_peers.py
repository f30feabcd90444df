"""What users would pick instead: a hand-written numpy loop, scikit-learn and PyTorch (CPU).

Every peer is a function ``(problem, train, test, target, budget) -> Outcome`` following
the rules of :mod:`benchmarks._race`, with settings tuned on these problems (the
grid searched is in docs/benchmarks.md). The numpy loop and PyTorch train with the same
settings (:data:`PEER_SETTINGS`), each with SGD and with Adam, on 1 and 2 threads. A peer
whose library is not installed raises :class:`PeerMissing`, which the suite reports as a
skipped figure.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from threadpoolctl import threadpool_limits

from asynctrain.data import Dataset
from benchmarks import _handwritten as handwritten
from benchmarks._race import CHECKS_PER_EPOCH, Outcome, race_batch_solver, race_minibatch
from benchmarks._workloads import MLP_HIDDEN, initial_params

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

    adam = PEER_SETTINGS["mlp"]["adam"]
    batch, lr = adam.batch_size, adam.learning_rate
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


class PeerSetting(NamedTuple):
    """One optimizer setting, the same for the numpy loop and PyTorch."""

    optimizer: str  # "sgd" or "adam"
    batch_size: int
    learning_rate: float
    momentum: float = 0.0  # SGD only, PyTorch's form

    def describe(self) -> str:
        """E.g. ``"sgd(0.5, momentum=0.9), batch 1024"``."""
        extra = f", momentum={self.momentum}" if self.momentum else ""
        return f"{self.optimizer}({self.learning_rate}{extra}), batch {self.batch_size}"


# Tuned on the grid in docs/benchmarks.md: each optimizer's best point that reaches every
# problem's target (the MLP's Adam point serves scikit-learn's MLPClassifier too).
PEER_SETTINGS: dict[str, dict[str, PeerSetting]] = {
    "logreg": {
        "sgd": PeerSetting("sgd", 2048, 0.5, momentum=0.9),
        "adam": PeerSetting("adam", 1024, 2e-2),
    },
    "softmax": {
        "sgd": PeerSetting("sgd", 1024, 0.5, momentum=0.9),
        "adam": PeerSetting("adam", 1024, 2e-2),
    },
    "mlp": {
        "sgd": PeerSetting("sgd", 1024, 0.1, momentum=0.9),
        "adam": PeerSetting("adam", 2048, 1e-2),
    },
}
OPTIMIZERS = ("sgd", "adam")


def numpy_peer(optimizer: str, threads: int) -> Peer:
    """The hand-written numpy loop (:mod:`benchmarks._handwritten`) with ``threads`` BLAS
    threads: the same model, initialisation and math as asynctrain's, one Python loop."""

    def peer(problem: str, train: Dataset, test: Dataset, target: float, budget: float) -> Outcome:
        with threadpool_limits(threads, user_api="blas"):
            return _numpy_race(
                problem, PEER_SETTINGS[problem][optimizer], train, test, target, budget
            )

    peer.__name__ = f"numpy_{optimizer}_{threads}"
    peer.__doc__ = f"A numpy loop ({threads} BLAS thread{'s' if threads > 1 else ''}), {optimizer}."
    return peer


def numpy_optimizer(
    setting: PeerSetting, params: handwritten.Arrays
) -> handwritten.Adam | handwritten.SGD:
    """The hand-written optimizer for ``setting``, on ``params``."""
    if setting.optimizer == "adam":
        return handwritten.Adam(params, setting.learning_rate)
    return handwritten.SGD(params, setting.learning_rate, setting.momentum)


def _numpy_race(
    problem: str, setting: PeerSetting, train: Dataset, test: Dataset, target: float, budget: float
) -> Outcome:
    params = {k: np.array(v, copy=True) for k, v in initial_params(problem).items()}
    opt, grads_of = numpy_optimizer(setting, params), handwritten.GRADIENTS[problem]
    X, y, batch = train.X, train.y, setting.batch_size

    def step(idx: Any) -> None:
        for start in range(0, len(idx), batch):
            rows = idx[start : start + batch]
            opt.step(params, grads_of(params, X[rows], y[rows])[1])

    def accuracy() -> float:
        return float(np.mean(handwritten.predict(problem, params, test.X) == test.y))

    return race_minibatch(
        step, accuracy, n=len(train), target=target, budget=budget, setting=setting.describe()
    )


def torch_peer(optimizer: str, threads: int) -> Peer:
    """PyTorch on the CPU with ``threads`` intra-op threads: the same architecture."""

    def peer(problem: str, train: Dataset, test: Dataset, target: float, budget: float) -> Outcome:
        _need("torch")
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            setting = PEER_SETTINGS[problem][optimizer]
            return _torch_race(torch, problem, setting, train, test, target, budget)
        finally:
            torch.set_num_threads(previous)

    peer.__name__ = f"torch_{optimizer}_{threads}"
    peer.__doc__ = f"PyTorch (CPU, {threads} thread{'s' if threads > 1 else ''}), {optimizer}."
    return peer


def _torch_race(
    torch: Any,
    problem: str,
    setting: PeerSetting,
    train: Dataset,
    test: Dataset,
    target: float,
    budget: float,
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
    batch, lr = setting.batch_size, setting.learning_rate
    if setting.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=setting.momentum)
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
        step, accuracy, n=len(train), target=target, budget=budget, setting=setting.describe()
    )


def peers_for(problem: str) -> dict[str, Peer]:
    """The peers that train the same kind of model as asynctrain on ``problem``: the numpy
    loop and PyTorch with each optimizer on 1 and 2 threads, and scikit-learn."""
    sklearn: dict[str, Peer] = (
        {"sklearn-sgd": sgd_classifier, "sklearn-logreg": logistic_regression}
        if problem in LINEAR
        else {"sklearn-mlp": mlp_classifier}
    )
    loops: dict[str, Peer] = {}
    for optimizer in OPTIMIZERS:
        for threads in (1, 2):
            loops[f"numpy-{optimizer}-{threads}t"] = numpy_peer(optimizer, threads)
            loops[f"torch-{optimizer}-{threads}t"] = torch_peer(optimizer, threads)
    return {**loops, **sklearn}
