"""Accuracy against scikit-learn's own estimators of the same kind, on the same split.

Each comparison trains both estimators inside ``Pipeline(StandardScaler(), estimator)`` on
the same 75/25 split and asks ours to score within 1 point of scikit-learn's (r2 within
0.02 for regression). Logistic regressions minimise the same objective on both sides:
scikit-learn's ``LogisticRegression(C=1)`` on n samples is ``alpha=1/n`` here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import asynctrain as at
from asynctrain.sklearn import AsyncLinearRegression, AsyncLogisticRegression, AsyncMLPClassifier

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

Loader = Callable[[], tuple[npt.NDArray[Any], npt.NDArray[Any]]]


@pytest.fixture(autouse=True)
def one_blas_thread() -> Iterator[None]:
    # scikit-learn's side computes in float64 with BLAS on every core; on a busy shared
    # machine that oversubscribes the cores and runs many times slower.
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(autouse=True)
def no_asyncio_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    # As in test_sklearn_checks.py: these test what training reaches, not what the loop
    # does (test_sklearn.py does, in debug mode), and debug mode makes them 2.5x slower.
    monkeypatch.delenv("PYTHONASYNCIODEBUG", raising=False)


def bundled(load: Callable[..., Any]) -> Loader:
    return lambda: load(return_X_y=True)


def reference(problem: str, n: int) -> Loader:
    def load() -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        data = at.data.synthetic(problem, n=n, seed=0)
        return np.asarray(data.X), np.asarray(data.y)

    return load


def scores(ours: Any, theirs: Any, X: Any, y: Any, *, classify: bool = True) -> tuple[float, ...]:
    split = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y if classify else None)
    X_train, X_test, y_train, y_test = split
    return tuple(
        make_pipeline(StandardScaler(), est).fit(X_train, y_train).score(X_test, y_test)
        for est in (ours, theirs)
    )


@pytest.mark.parametrize(
    "load",
    [
        bundled(load_breast_cancer),
        bundled(load_digits),
        reference("logreg", 2000),
        reference("softmax", 3000),
    ],
    ids=["breast_cancer", "digits", "logreg", "softmax"],
)
def test_logistic_regression_within_a_point_of_scikit_learn(load: Loader) -> None:
    X, y = load()
    n_train = len(y) - round(0.25 * len(y))
    ours = AsyncLogisticRegression(alpha=1.0 / n_train, random_state=0)
    mine, theirs = scores(ours, LogisticRegression(C=1.0, max_iter=1000), X, y)
    assert mine >= theirs - 0.01, (mine, theirs)


@pytest.mark.parametrize(
    "load",
    [bundled(load_breast_cancer), bundled(load_digits)],
    ids=["breast_cancer", "digits"],
)
def test_mlp_classifier_within_a_point_of_scikit_learn(load: Loader) -> None:
    X, y = load()
    mine, theirs = scores(AsyncMLPClassifier(random_state=0), MLPClassifier(random_state=0), X, y)
    assert mine >= theirs - 0.01, (mine, theirs)


def test_mlp_classifier_on_the_reference_problem() -> None:
    # A hard problem at this size (a random ReLU teacher, 5% label noise): one seed swings
    # by about a point, so compare the means of three seeds, 10 epochs each.
    X, y = reference("mlp", 6000)()
    pairs = [
        scores(
            AsyncMLPClassifier(random_state=seed, max_iter=10),
            MLPClassifier(random_state=seed, max_iter=10),
            X,
            y,
        )
        for seed in range(3)
    ]
    mine, theirs = np.mean(pairs, axis=0)
    assert mine >= theirs - 0.01, pairs


def test_linear_regression_r2_close_to_scikit_learn() -> None:
    X, y = load_diabetes(return_X_y=True)
    ours = AsyncLinearRegression(random_state=0)
    mine, theirs = scores(ours, LinearRegression(), X, y, classify=False)
    assert mine >= theirs - 0.02, (mine, theirs)
