"""scikit-learn estimators trained by asynctrain (needs ``pip install 'asynctrain[sklearn]'``).

:class:`AsyncLogisticRegression`, :class:`AsyncLinearRegression`,
:class:`AsyncMLPClassifier` and :class:`AsyncMLPRegressor` follow scikit-learn's
estimator interface (``fit``, ``partial_fit``, ``predict``, ``score``, ``get_params``,
...) and pass its ``check_estimator`` suite, so they work in pipelines, grid searches and
cross-validation. Each also has async twins, ``afit`` and ``apartial_fit``, for code on
an event loop.

Where training runs (``backend="auto"``): a small step (rows per step × parameters below
about eight million) trains on the event loop itself, because handing tens of microseconds
of numpy to a thread costs more than it saves; larger steps use the thread backend on all
cores. Inside a joblib worker (``GridSearchCV(n_jobs=2)``) an estimator starts no threads
of its own, so parallel model selection never oversubscribes the cores. See
``docs/sklearn.md``.

Example:
    >>> from sklearn.datasets import load_wine
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from asynctrain.sklearn import AsyncLogisticRegression
    >>> X, y = load_wine(return_X_y=True)
    >>> clf = make_pipeline(StandardScaler(), AsyncLogisticRegression(random_state=0))
    >>> clf.fit(X, y)[-1].coef_.shape, clf.score(X, y) > 0.95
    ((3, 13), True)
"""

from __future__ import annotations

import re

try:
    import sklearn
except ImportError as exc:  # pragma: no cover - exercised without scikit-learn only
    raise ImportError(
        "asynctrain.sklearn needs scikit-learn: pip install 'asynctrain[sklearn]'"
    ) from exc
else:
    # The oldest scikit-learn these estimators work with (its ``validate_data`` came in
    # 1.6): the floor of the ``sklearn`` extra in pyproject.toml.
    _MIN_SKLEARN = (1, 6)
    _found = re.match(r"(\d+)\.(\d+)", sklearn.__version__)
    if _found is not None and (int(_found[1]), int(_found[2])) < _MIN_SKLEARN:
        raise ImportError(
            f"asynctrain.sklearn needs scikit-learn {'.'.join(map(str, _MIN_SKLEARN))} or "
            f"later, found {sklearn.__version__}: pip install --upgrade 'asynctrain[sklearn]'"
        )

from asynctrain.sklearn._linear import AsyncLinearRegression, AsyncLogisticRegression
from asynctrain.sklearn._mlp import AsyncMLPClassifier, AsyncMLPRegressor

__all__ = [
    "AsyncLinearRegression",
    "AsyncLogisticRegression",
    "AsyncMLPClassifier",
    "AsyncMLPRegressor",
]
