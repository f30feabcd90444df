"""Benchmark of the scikit-learn estimators: where ``backend="auto"`` should train, and how
they compare with scikit-learn's own estimators on its bundled digits data.

Figures:

* ``sklearn/thread-vs-inline/<work>``: fit time on the thread backend (all cores, 4
  shards) over fit time inline (1 shard, one BLAS thread), for MLPs whose steps hold
  ``<work>`` = rows per step × parameters. Above 1, inline is faster: ``"auto"`` trains
  steps below ``SMALL_STEP`` inline.
* ``sklearn/blas-threads/<hidden>``: inline training time with BLAS at its default thread
  count over the same with one BLAS thread (why inline training limits BLAS to one).
* ``sklearn/vs-scikit-learn/digits-<model>``: fit time of ours over scikit-learn's
  (``MLPClassifier``, ``LogisticRegression``) in a ``StandardScaler`` pipeline; both test
  accuracies are in ``details``.

Needs scikit-learn; without it the suite reports no figures.

Run: ``python -m benchmarks._sklearn [--quick]``
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

import asynctrain as at
from benchmarks._command import run_alone
from benchmarks._figure import Figure, Spread

COMMAND = "python -m benchmarks._sklearn"
HIDDEN = (16, 64, 160, 400, 1000)  # 64 inputs, 2 classes: step work from 2e5 to 1.3e7


def _ratio(
    name: str, measured: list[float], reference: list[float], label: str, **details: Any
) -> Figure:
    """Paired per-repeat ratios ``measured / reference``, with both times in ``details``."""
    spread = Spread.of([m / r for m, r in zip(measured, reference, strict=True)])
    details = {"measured_s": measured, "reference_s": reference, **details}
    return Figure(
        name, spread.median, spread.low, spread.high, "x", label, spread.n, COMMAND, details=details
    )


def _timed_fit(make: Callable[[], Any], X: Any, y: Any) -> tuple[float, Any]:
    """Seconds to fit a fresh estimator (in this thread, no event loop), and the estimator."""
    estimator = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: epochs are fixed on purpose
        started = time.perf_counter()
        estimator.fit(X, y)
        return time.perf_counter() - started, estimator


async def _paired(
    measured: Callable[[], Any], reference: Callable[[], Any], X: Any, y: Any, repeats: int
) -> tuple[list[float], list[float], list[Any]]:
    """Alternate the two fits ``repeats`` times, off the loop; return both times and fits."""
    mine, theirs, fitted = [], [], []
    for _ in range(repeats):
        seconds, estimator = await asyncio.to_thread(_timed_fit, measured, X, y)
        mine.append(seconds)
        seconds, other = await asyncio.to_thread(_timed_fit, reference, X, y)
        theirs.append(seconds)
        fitted.append((estimator, other))
    return mine, theirs, fitted


async def thread_vs_inline(quick: bool) -> list[Figure]:
    """Thread backend over inline for growing step sizes (see the module docstring)."""
    from asynctrain.sklearn import AsyncMLPClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 64)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    figures = []
    for hidden in HIDDEN[1:4] if quick else HIDDEN:
        work = 200 * (64 * hidden + hidden + hidden * 2 + 2)

        def make(backend: str, shards: int, width: int = hidden) -> Callable[[], Any]:
            return lambda: AsyncMLPClassifier(
                (width,), max_iter=5, tol=0.0, random_state=0, backend=backend, shards=shards
            )

        threads, inline, _ = await _paired(
            make("thread", 4), make("inline", 1), X, y, 3 if quick else 7
        )
        figures.append(
            _ratio(
                f"sklearn/thread-vs-inline/{work:.1e}",
                threads,
                inline,
                "inline, 1 shard",
                hidden=hidden,
                step_work=work,
                epochs=5,
                rows=2000,
            )
        )
    return figures


async def blas_threads(quick: bool) -> list[Figure]:
    """Inline training with BLAS at its default thread count over one BLAS thread."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    data = at.data.Dataset(rng.normal(size=(2000, 64)).astype(np.float32), rng.integers(0, 2, 2000))
    figures = []
    for hidden in (64, 160, 400):
        model = at.models.MLP((64, hidden, 2))

        def fit(limit: int | None, mlp: at.models.MLP = model) -> float:
            with threadpool_limits(limits=limit, user_api="blas"):
                started = time.perf_counter()
                at.run(at.fit(mlp, data, epochs=3, backend="inline", batch_size=200, shards=1))
                return time.perf_counter() - started

        default, single = [], []
        for _ in range(3 if quick else 7):
            default.append(await asyncio.to_thread(fit, None))
            single.append(await asyncio.to_thread(fit, 1))
        figures.append(
            _ratio(
                f"sklearn/blas-threads/{hidden}", default, single, "one BLAS thread", hidden=hidden
            )
        )
    return figures


async def versus_scikit_learn(quick: bool) -> list[Figure]:
    """Our estimators over scikit-learn's on digits, time and accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from asynctrain.sklearn import AsyncLogisticRegression, AsyncMLPClassifier

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y
    )
    alpha = 1.0 / len(y_train)  # the objective of LogisticRegression(C=1)
    pairs = {
        "mlp": (AsyncMLPClassifier(random_state=0), MLPClassifier(random_state=0)),
        "logistic": (
            AsyncLogisticRegression(alpha=alpha, random_state=0),
            LogisticRegression(max_iter=1000),
        ),
    }
    figures = []
    for name, (ours, theirs) in pairs.items():
        mine, ref, fitted = await _paired(
            functools.partial(make_pipeline, StandardScaler(), ours),
            functools.partial(make_pipeline, StandardScaler(), theirs),
            X_train,
            y_train,
            2 if quick else 5,
        )
        accuracy = [float(est.score(X_test, y_test)) for est in fitted[-1]]
        figures.append(
            _ratio(
                f"sklearn/vs-scikit-learn/digits-{name}",
                mine,
                ref,
                type(theirs).__name__,
                accuracy_ours=accuracy[0],
                accuracy_scikit_learn=accuracy[1],
            )
        )
    return figures


async def run(quick: bool) -> list[Figure]:
    """Every figure of this suite; none without scikit-learn."""
    if importlib.util.find_spec("sklearn") is None:
        return []
    return [
        *await thread_vs_inline(quick),
        *await blas_threads(quick),
        *await versus_scikit_learn(quick),
    ]


if __name__ == "__main__":
    sys.exit(run_alone("sklearn"))
