"""asynctrain.sklearn on scipy.sparse input: kept CSR, equal to the dense fit, in pipelines."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp
from sklearn.base import is_classifier
from sklearn.datasets import load_digits
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

import asynctrain.sklearn as ask
from asynctrain import DataTypeError
from asynctrain.models import Model
from asynctrain.sklearn._base import AsyncEstimator

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N, D = 120, 30


def sparse_problem(seed: int = 0) -> tuple[Any, npt.NDArray[Any], npt.NDArray[Any]]:
    """A 10 %-dense CSR matrix (float64), class labels of 3 classes and real targets."""
    rng = np.random.default_rng(seed)
    X = sp.random_array((N, D), density=0.1, format="csr", rng=rng, dtype=np.float64)
    w = rng.standard_normal((D, 3))
    labels = np.asarray(X @ w).argmax(axis=1)
    targets = np.asarray(X @ w[:, 0]) * 5.0 + 2.0
    return X, labels, targets


def estimators() -> list[Any]:
    small = {"max_iter": 5, "random_state": 0}
    return [
        ask.AsyncLogisticRegression(**small),
        ask.AsyncLinearRegression(**small),
        ask.AsyncMLPClassifier((8,), **small),
        ask.AsyncMLPRegressor((8,), **small),
    ]


def targets_for(est: Any, labels: Any, targets: Any) -> Any:
    return targets if isinstance(est, ask.AsyncLinearRegression | ask.AsyncMLPRegressor) else labels


def close_params(a: Any, b: Any) -> None:
    assert a.params_.keys() == b.params_.keys()
    for key in a.params_:
        np.testing.assert_allclose(a.params_[key], b.params_[key], atol=1e-5, err_msg=key)


def _dense(X: Any) -> npt.NDArray[Any]:
    """``X`` as a dense array, built from its coordinates (``toarray`` may be refused)."""
    coo = X.tocoo()
    out = np.zeros(X.shape, X.dtype)
    out[coo.row, coo.col] = coo.data
    return out


def outputs(est: Any, X: Any) -> dict[str, npt.NDArray[Any]]:
    names = ("predict", "predict_proba", "decision_function")
    return {name: getattr(est, name)(X) for name in names if hasattr(est, name)}


@pytest.fixture
def no_densifying(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to turn a scipy.sparse matrix into a dense array fail the test."""

    def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a {type(self).__name__} was densified")

    for kind in (sp.csr_array, sp.csr_matrix, sp.csc_array, sp.coo_array):
        monkeypatch.setattr(kind, "toarray", refuse)
        monkeypatch.setattr(kind, "todense", refuse)


@pytest.mark.usefixtures("no_densifying")
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("est", estimators(), ids=lambda e: type(e).__name__)
def test_a_sparse_fit_equals_the_dense_fit(est: Any, weighted: bool) -> None:
    X, labels, targets = sparse_problem()
    y = targets_for(est, labels, targets)
    weights = np.random.default_rng(1).uniform(0.0, 3.0, N) if weighted else None
    dense = _dense(X)
    sparse_fit = type(est)(**est.get_params()).fit(X, y, sample_weight=weights)
    dense_fit = type(est)(**est.get_params()).fit(dense, y, sample_weight=weights)
    close_params(sparse_fit, dense_fit)
    for name, value in outputs(sparse_fit, X).items():
        np.testing.assert_allclose(value, outputs(dense_fit, dense)[name], atol=1e-5, err_msg=name)
    assert sparse_fit.score(X, y, sample_weight=weights) == pytest.approx(
        dense_fit.score(dense, y, sample_weight=weights), abs=1e-5
    )


@pytest.mark.usefixtures("no_densifying")
@pytest.mark.parametrize("est", estimators(), ids=lambda e: type(e).__name__)
def test_sparse_partial_fit_equals_the_dense_one(est: Any) -> None:
    X, labels, targets = sparse_problem()
    y = targets_for(est, labels, targets)
    extra = {"classes": np.unique(labels)} if is_classifier(est) else {}
    sparse_fit, dense_fit = type(est)(**est.get_params()), type(est)(**est.get_params())
    for rows in (slice(0, 60), slice(60, N)):
        sparse_fit.partial_fit(X[rows], y[rows], **extra)
        dense_fit.partial_fit(_dense(X[rows]), y[rows], **extra)
    close_params(sparse_fit, dense_fit)


@pytest.mark.parametrize("est", estimators(), ids=lambda e: type(e).__name__)
def test_training_data_stays_csr_in_the_models_dtype(est: Any) -> None:
    X, labels, targets = sparse_problem()
    y = targets_for(est, labels, targets)
    job = est._prepare(X, y, partial=False, on_loop=False)
    assert job.data.sparse
    assert job.data.X.format == "csr"
    assert job.data.X.dtype == np.dtype(est.dtype) == np.float32
    assert job.data.X.nnz == X.nnz
    est.set_params(early_stopping=True)
    job = est._prepare(X, y, partial=False, on_loop=False)
    assert job.data.sparse
    assert job.validation is not None
    assert job.validation.sparse
    assert job.data.X.nnz + job.validation.X.nnz == X.nnz
    assert len(est.fit(X, y).validation_loss_curve_) == est.n_iter_


@pytest.mark.parametrize(
    "convert",
    [
        sp.csr_matrix,
        sp.csc_array,
        sp.coo_array,
        sp.lil_matrix,
        lambda X: X.astype(np.float32),
        lambda X: sp.csr_array(
            (X.data, X.indices.astype(np.int64), X.indptr.astype(np.int64)), shape=X.shape
        ),
    ],
    ids=["csr_matrix", "csc", "coo", "lil", "float32", "int64-indices"],
)
def test_other_sparse_formats_train_like_csr(convert: Any) -> None:
    X, labels, _ = sparse_problem()
    X = X.astype(np.float32)  # the float32 case then converts nothing
    reference = ask.AsyncLogisticRegression(max_iter=3, random_state=0).fit(X, labels)
    other = ask.AsyncLogisticRegression(max_iter=3, random_state=0).fit(convert(X), labels)
    for key in reference.params_:
        np.testing.assert_array_equal(other.params_[key], reference.params_[key])
    np.testing.assert_array_equal(other.predict_proba(convert(X)), reference.predict_proba(X))


@pytest.mark.parametrize(("bad", "match"), [(np.nan, "NaN"), (np.inf, "infinity")])
@pytest.mark.parametrize("est", estimators(), ids=lambda e: type(e).__name__)
def test_a_non_finite_stored_value_is_a_clear_error(est: Any, bad: float, match: str) -> None:
    X, labels, targets = sparse_problem()
    y = targets_for(est, labels, targets)
    poisoned = X.copy()
    poisoned.data[3] = bad
    with pytest.raises(ValueError, match=match):
        est.fit(poisoned, y)
    fitted = type(est)(**est.get_params()).fit(X, y)
    with pytest.raises(ValueError, match=match):
        fitted.predict(poisoned)


def test_an_estimator_whose_model_cannot_take_sparse_input_refuses_it_before_training() -> None:
    from asynctrain.models import LinearRegression

    class DenseOnly(LinearRegression):
        accepts_sparse = False

    class DenseOnlyRegression(ask.AsyncLinearRegression):
        def _build_model(self, attrs: dict[str, Any], batch_size: int) -> Model:
            return DenseOnly(attrs["n_features_in_"], dtype=self.dtype)

    X, _, targets = sparse_problem()
    with pytest.raises(DataTypeError, match=r"sparse.*X\.toarray\(\)"):
        DenseOnlyRegression(max_iter=2).fit(X, targets)
    DenseOnlyRegression(max_iter=2).fit(_dense(X), targets)  # dense input still trains


def test_the_estimators_declare_sparse_input_in_their_tags() -> None:
    for est in estimators():
        assert isinstance(est, AsyncEstimator)
        assert est.__sklearn_tags__().input_tags.sparse


async def test_afit_on_sparse_input_gives_the_fit_bits() -> None:
    X, labels, _ = sparse_problem()
    blocking = ask.AsyncMLPClassifier((8,), max_iter=3, random_state=0).fit(X, labels)
    awaited = await ask.AsyncMLPClassifier((8,), max_iter=3, random_state=0).afit(X, labels)
    for key in blocking.params_:
        np.testing.assert_array_equal(awaited.params_[key], blocking.params_[key])


# A tiny corpus: each class has its own words, shared filler words and some noise.
_TOPICS = {
    "sport": ("match goal team score player coach league win season stadium"),
    "cooking": ("recipe oven flour sugar butter bake salt pepper dinner kitchen"),
    "space": ("rocket orbit planet star moon launch telescope galaxy nasa astronaut"),
}
_FILLER = "the a of and to in is it that was for on with as at this by"


def corpus(n: int, seed: int) -> tuple[list[str], npt.NDArray[Any]]:
    rng = np.random.default_rng(seed)
    names = sorted(_TOPICS)
    labels = rng.integers(0, len(names), n)
    words = {topic: _TOPICS[topic].split() for topic in names}
    every = [word for topic in names for word in words[topic]]
    docs = []
    for label in labels:
        own = rng.choice(words[names[label]], 3)
        noise = rng.choice(every, 4)  # words of any topic, the label's included
        docs.append(" ".join(rng.permutation([*own, *noise, *rng.choice(_FILLER.split(), 6)])))
    return docs, np.array(names)[labels]


@pytest.mark.parametrize(
    "est",
    [
        ask.AsyncLogisticRegression(alpha=1e-4, random_state=0),
        ask.AsyncMLPClassifier((32,), random_state=0),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_tfidf_pipeline_matches_sgdclassifier(est: Any) -> None:
    docs, labels = corpus(600, seed=0)
    train_docs, test_docs, y_train, y_test = train_test_split(
        docs, labels, test_size=0.25, random_state=0, stratify=labels
    )
    ours = make_pipeline(TfidfVectorizer(), est).fit(train_docs, y_train)
    theirs = make_pipeline(TfidfVectorizer(), SGDClassifier(loss="log_loss", random_state=0))
    theirs.fit(train_docs, y_train)
    reference = theirs.score(test_docs, y_test)
    assert reference > 0.8  # the corpus is learnable: the comparison means something
    assert ours.score(test_docs, y_test) >= reference - 0.03


@pytest.mark.parametrize(
    "est",
    [ask.AsyncLogisticRegression(random_state=0), ask.AsyncMLPClassifier((64,), random_state=0)],
    ids=lambda e: type(e).__name__,
)
def test_one_hot_digits_match_logistic_regression(est: Any) -> None:
    """The digits' pixel intensities (0..16) read as categories: 1797 rows, ~1000 sparse
    one-hot columns."""
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y
    )
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=True)
    if isinstance(est, ask.AsyncLogisticRegression):
        est.set_params(alpha=1.0 / len(X_train))  # LogisticRegression(C=1)'s objective
    ours = make_pipeline(encoder, est).fit(X_train, y_train)
    assert sp.issparse(ours[0].transform(X_test[:2]))
    theirs = make_pipeline(
        OneHotEncoder(handle_unknown="ignore"), LogisticRegression(max_iter=1000)
    )
    theirs.fit(X_train, y_train)
    assert ours.score(X_test, y_test) >= theirs.score(X_test, y_test) - 0.03
