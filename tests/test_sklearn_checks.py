"""scikit-learn's own estimator checks, run on every asynctrain estimator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from asynctrain.sklearn import (
    AsyncLinearRegression,
    AsyncLogisticRegression,
    AsyncMLPClassifier,
    AsyncMLPRegressor,
)

# The estimators with their default hyper-parameters (random_state is set by the checks).
ESTIMATORS = [
    AsyncLogisticRegression(),
    AsyncLinearRegression(),
    AsyncMLPClassifier(),
    AsyncMLPRegressor(),
]

# Checks an estimator is known to fail, with the reason, by estimator class name.
# Every check passes today, so none is listed; a check that starts failing must be fixed
# or listed here with a written justification.
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {}


def expected_failed_checks(estimator: Any) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS.get(type(estimator).__name__, {})


@pytest.fixture(autouse=True)
def no_asyncio_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run these checks' event loops out of asyncio debug mode (see conftest.py).

    Debug mode records a stack trace for every task; the checks fit ~200 models of
    ~200 tiny steps each, which it makes 2.5x slower. What the loops do is tested in
    debug mode by test_sklearn.py; these checks test the scikit-learn interface.
    """
    monkeypatch.delenv("PYTHONASYNCIODEBUG", raising=False)


# The checks train on tiny random data for the default max_iter, where the loss keeps
# improving slowly: like scikit-learn's own MLPs, ours warn that they did not converge.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks)
def test_scikit_learn_estimator_checks(estimator: Any, check: Callable[[Any], None]) -> None:
    check(estimator)
