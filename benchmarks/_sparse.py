"""Sparse logistic regression on an RCV1-shaped problem: asynctrain against scikit-learn's
``SGDClassifier`` at equal test accuracy.

The data is synthetic and shaped like RCV1 (804,414 documents × 47,236 tf-idf features,
0.16 % of them non-zero, rows of unit length): ``full`` trains on 800,000 rows, ``quick``
on 60,000 and ``smoke`` on 6,000, with a tenth as many test rows. Column popularity is
skewed (a few columns are in many rows, most in few, as words are), and the label is a
noisy linear rule, so neither side reaches 100 %.

scikit-learn's ``SGDClassifier(loss="log_loss")`` trains for :data:`SKLEARN_EPOCHS` epochs
on float64 CSR (its own dtype: handing it float32 would add a conversion to its time);
its test accuracy minus :data:`TOLERANCE` is the target. asynctrain trains
``LogisticRegression`` (float32 CSR, Adam, 2 shards) one epoch at a time until its test
accuracy reaches the target (accuracy is checked between epochs, outside the timing).

Figures ``sparse/rcv1-logreg/<backend>-<k>w``: asynctrain's samples/s over
SGDClassifier's, both at equal test accuracy, with ``samples`` = the rows SGDClassifier
went through (``SKLEARN_EPOCHS × n``); that is, SGDClassifier's training time over
asynctrain's time to the same accuracy. Goals: ≥ 1.0 with one worker, ≥ 1.7 with two.
``details`` hold both times, both accuracies, asynctrain's epochs, both samples/s and the
load average. A run that never reaches the target reports NaN with a note.

Needs scikit-learn and scipy; without them the suite reports no figures.

Run: ``asynctrain bench --only sparse [--quick]``
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import sys
import time
import warnings
from typing import Any

import numpy as np

import asynctrain as at
from benchmarks._command import run_alone
from benchmarks._figure import Figure, ratio_figure, skipped_figure
from benchmarks._scale import command, level

N_FEATURES = 47_236
DENSITY = 0.0016
SKLEARN_EPOCHS = 2
TOLERANCE = 0.005  # accuracy points (a fraction) asynctrain may stay below scikit-learn's
MAX_EPOCHS = 8
BATCH_SIZE = 4096
SHARDS = 2
LEARNING_RATE = 0.03
ALPHA = 1e-6  # SGDClassifier's L2 strength (its default is 1e-4, too strong here)
_ROWS = {"full": 800_000, "quick": 60_000, "smoke": 6_000}
_REPEATS = {"full": 3, "quick": 1, "smoke": 1}
GOALS = {1: ">= 1.0", 2: ">= 1.7"}


def rcv1_like(n: int, *, seed: int = 0) -> tuple[Any, np.ndarray]:
    """``n`` rows of the RCV1-shaped problem: float32 CSR with unit rows, 0/1 labels."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    per_row = rng.poisson(DENSITY * N_FEATURES, n).clip(1)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(per_row, out=indptr[1:])
    # u ** 2 puts more mass on low column numbers: popular columns, like frequent words.
    columns = (N_FEATURES * rng.random(int(indptr[-1])) ** 2).astype(np.int32)
    values = rng.exponential(1.0, int(indptr[-1])).astype(np.float32)
    lengths = np.sqrt(np.add.reduceat(values**2, indptr[:-1]))
    values /= np.repeat(lengths, per_row)
    X = sp.csr_array((values, columns, indptr.astype(np.int32)), shape=(n, N_FEATURES))
    truth = np.random.default_rng(seed + 1).standard_normal(N_FEATURES).astype(np.float32) * 3
    scores = X @ truth + rng.logistic(0.0, 0.5, n).astype(np.float32)
    return X, (scores > 0).astype(np.int64)


def _sklearn_fit(X: Any, y: np.ndarray, X_test: Any, y_test: np.ndarray) -> tuple[float, float]:
    """Seconds SGDClassifier takes for its epochs, and its test accuracy."""
    from sklearn.linear_model import SGDClassifier

    model = SGDClassifier(
        loss="log_loss", alpha=ALPHA, max_iter=SKLEARN_EPOCHS, tol=None, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: the epochs are fixed on purpose
        started = time.perf_counter()
        model.fit(X, y)
        seconds = time.perf_counter() - started
    return seconds, float(model.score(X_test, y_test))


async def _ours(
    backend: at.backends.Backend, data: at.data.Dataset, test: tuple[Any, np.ndarray], target: float
) -> tuple[float, float, int]:
    """Seconds of training until the test accuracy reaches ``target`` (NaN if it never
    does within MAX_EPOCHS), the accuracy reached and the epochs taken."""
    X_test, y_test = test
    model = at.models.LogisticRegression(N_FEATURES)
    optimizer = at.optim.adam(LEARNING_RATE)
    async with at.Trainer(
        model, optimizer=optimizer, backend=backend, batch_size=BATCH_SIZE, shards=SHARDS
    ) as trainer:
        seconds, accuracy = 0.0, 0.0
        for epoch in range(1, MAX_EPOCHS + 1):
            started = time.perf_counter()
            await trainer.fit(data, epochs=1)
            seconds += time.perf_counter() - started
            predicted = await asyncio.to_thread(trainer.predict, X_test)
            accuracy = float(np.mean(predicted == y_test))
            if accuracy >= target:
                return seconds, accuracy, epoch
    return math.nan, accuracy, MAX_EPOCHS


def _backends() -> list[tuple[str, int]]:
    return [("thread", 1), ("thread", 2), ("process", 1), ("process", 2)]


async def versus_sgdclassifier(quick: bool) -> list[Figure]:
    """One figure per backend and worker count (see the module docstring)."""
    size = level(quick)
    n = _ROWS[size]
    X, y = await asyncio.to_thread(rcv1_like, n + n // 10)
    data = at.data.Dataset(X[:n], y[:n], dtype=np.float32).to_shared()
    test = (X[n:], y[n:])
    X64, test64 = X[:n].astype(np.float64), (X[n:].astype(np.float64), y[n:])
    runs: dict[tuple[str, int], list[tuple[float, float, int]]] = {}
    reference: list[tuple[float, float]] = []
    for _ in range(_REPEATS[size]):
        reference.append(await asyncio.to_thread(_sklearn_fit, X64, y[:n], *test64))
        target = reference[-1][1] - TOLERANCE
        for name, workers in _backends():
            backend, _ = at.backends.get_backend(name, workers=workers)
            async with backend:
                await _ours(backend, data.subset(np.arange(min(n, 2 * BATCH_SIZE))), test, 0.0)
                runs.setdefault((name, workers), []).append(
                    await _ours(backend, data, test, target)
                )
    return [_figure(key, results, reference, n, quick) for key, results in runs.items()]


def _figure(
    key: tuple[str, int],
    results: list[tuple[float, float, int]],
    reference: list[tuple[float, float]],
    n: int,
    quick: bool,
) -> Figure:
    name, workers = key
    figure_name = f"sparse/rcv1-logreg/{name}-{workers}w"
    label = f"SGDClassifier(log_loss), {SKLEARN_EPOCHS} epochs, same test accuracy"
    fields: dict[str, Any] = {
        "reference": label,
        "command": command("sparse", quick),
        "target": GOALS[workers],
    }
    details = {
        "rows": n,
        "features": N_FEATURES,
        "density": DENSITY,
        "seconds_asynctrain": [r[0] for r in results],
        "seconds_sklearn": [r[0] for r in reference],
        "accuracy_asynctrain": [r[1] for r in results],
        "accuracy_sklearn": [r[1] for r in reference],
        "epochs_asynctrain": [r[2] for r in results],
        "loadavg": os.getloadavg(),
    }
    if any(math.isnan(r[0]) for r in results):
        note = f"asynctrain did not reach SGDClassifier's accuracy in {MAX_EPOCHS} epochs"
        return skipped_figure(figure_name, note, unit="x", details=details, **fields)
    samples = SKLEARN_EPOCHS * n
    ours = [samples / r[0] for r in results]
    theirs = [samples / r[0] for r in reference]
    details["samples_per_s_asynctrain"] = ours
    details["samples_per_s_sklearn"] = theirs
    return ratio_figure(figure_name, ours, theirs, details=details, **fields)


async def run(quick: bool) -> list[Figure]:
    """Every figure of this suite; none without scikit-learn or scipy."""
    if importlib.util.find_spec("sklearn") is None or importlib.util.find_spec("scipy") is None:
        return []
    return await versus_sgdclassifier(quick)


if __name__ == "__main__":
    sys.exit(run_alone("sparse"))
