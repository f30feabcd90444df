"""asynctrain through scikit-learn: a pipeline, a parallel grid search, online learning, afit.

Needs the sklearn extra (pip install 'asynctrain[sklearn]').
Run: python examples/sklearn_pipeline.py
"""

from __future__ import annotations

import asyncio
import pickle
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import asynctrain as at
from asynctrain.sklearn import AsyncLogisticRegression, AsyncMLPClassifier


def grid_search(X: np.ndarray, y: np.ndarray) -> GridSearchCV:
    """Two jobs at once: each trains inline in its joblib worker, no threads of its own."""
    mlp = AsyncMLPClassifier(tol=1e-3, random_state=0)  # stop once the loss flattens
    pipe = make_pipeline(StandardScaler(), mlp)
    grid = {"asyncmlpclassifier__hidden_layer_sizes": [(32,), (64,)]}
    return GridSearchCV(pipe, grid, cv=3, n_jobs=2).fit(X, y)


def online(X: np.ndarray, y: np.ndarray) -> AsyncLogisticRegression:
    """partial_fit over batches of a stream, saved (pickled) and restored between them as a
    long-running job might be: the estimator holds plain arrays only."""
    clf = AsyncLogisticRegression(random_state=0)
    for _ in range(3):
        for batch in np.array_split(np.arange(len(y)), 10):
            clf.partial_fit(X[batch], y[batch], classes=np.arange(10))
            clf = pickle.loads(pickle.dumps(clf))
    return clf


async def in_a_service(X: np.ndarray, y: np.ndarray) -> tuple[AsyncMLPClassifier, int]:
    """``await afit``: training runs on threads while the loop keeps answering."""
    answered = 0

    async def handle_requests() -> None:
        nonlocal answered
        while True:
            await asyncio.sleep(0.005)  # stands for serving a request
            answered += 1

    async with asyncio.TaskGroup() as group:
        server = group.create_task(handle_requests())
        clf = await AsyncMLPClassifier(tol=1e-3, random_state=0).afit(X, y)
        server.cancel()
    return clf, answered


def main() -> dict[str, float]:
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y
    )
    started = time.perf_counter()
    search = grid_search(X_train, y_train)
    print(f"grid search: best {search.best_params_} in {time.perf_counter() - started:.1f}s")
    scaler = StandardScaler().fit(X_train)
    X_train_s, X_test_s = scaler.transform(X_train), scaler.transform(X_test)
    clf = online(X_train_s, y_train)
    service_clf, answered = at.run(in_a_service(X_train_s, y_train))
    scores = {
        "grid_search": search.score(X_test, y_test),
        "partial_fit": clf.score(X_test_s, y_test),
        "afit": service_clf.score(X_test_s, y_test),
    }
    for name, score in scores.items():
        print(f"{name:>12}: test accuracy {score:.3f}")
    print(f"the loop answered {answered} requests while afit trained")
    return scores


if __name__ == "__main__":
    main()
