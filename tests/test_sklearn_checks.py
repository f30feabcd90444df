"""scikit-learn's own estimator checks, run on every asynctrain estimator."""

from __future__ import annotations

import ast
import re
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
# A check that starts failing must be fixed or listed here with a written justification.
#
# check_sample_weight_equivalence_on_dense_data (and its _on_sparse_data twin) fits
# 15 weighted rows and, separately, the same rows repeated by their integer weights
# (about 30 rows), and wants the same predictions to 1e-7. Minibatch SGD cannot give
# that: the two fits cut different batches (15 rows vs 30 shuffled rows, so other rows
# meet in other steps), take a different number of steps per epoch and stop after
# different epochs. What does hold, and is proved in tests/test_weights.py, is the step
# itself: one full-batch step on integer weights equals the step on the repeated rows
# (rtol 1e-5), for every model and for each of these estimators
# (test_estimator_integer_weights_equal_repeated_rows).
_SGD_IS_NOT_REPETITION = (
    "minibatch SGD on weighted rows and on rows repeated by their weights cuts different "
    "batches and epochs, so the fits differ; the weighted step itself equals the repeated "
    "one (tests/test_weights.py::test_estimator_integer_weights_equal_repeated_rows)"
)
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {
    type(estimator).__name__: {
        "check_sample_weight_equivalence_on_dense_data": _SGD_IS_NOT_REPETITION,
        "check_sample_weight_equivalence_on_sparse_data": _SGD_IS_NOT_REPETITION,
    }
    for estimator in ESTIMATORS
}


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


def _documented(estimator: Any) -> dict[str, str]:
    """``name -> default`` as the ``Args:`` section of the class docstring states them."""
    args = type(estimator).__doc__.split("Args:")[1].split("Attributes:")[0]
    entries = re.split(r"\n        (?=\w+: )", args.strip())
    found = [re.match(r"(\w+): .*Default: ``(.+)``\.$", " ".join(e.split()), re.S) for e in entries]
    assert all(found), entries
    return {match[1]: match[2] for match in found if match}


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_every_parameter_is_documented_once_with_its_default(estimator: Any) -> None:
    """The docstring and what scikit-learn reads from ``__init__`` (get_params) agree:
    the same names, each documented once, with the default ``__init__`` really has."""
    documented, params = _documented(estimator), estimator.get_params()
    assert sorted(documented) == sorted(params)
    for name, shown in documented.items():
        value = params[name]
        if isinstance(value, type):
            assert shown == f"np.{value.__name__}", name
        else:
            assert ast.literal_eval(shown) == value, name
