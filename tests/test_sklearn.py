"""asynctrain.sklearn: loops, pickling, partial_fit, parallel model selection, errors."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import pickle
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from joblib import Parallel, delayed
from joblib.externals.loky import get_reusable_executor
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import (
    GridSearchCV,
    cross_validate,
    train_test_split,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import asynctrain as at
import asynctrain.sklearn as ask
from asynctrain.sklearn._policy import SMALL_STEP, Plan, in_joblib_worker, plan

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

Arrays = tuple[npt.NDArray[Any], npt.NDArray[Any]]


def blobs(n: int = 200, centers: int = 3, seed: int = 0) -> Arrays:
    X, y = make_blobs(n_samples=n, centers=centers, n_features=4, random_state=seed)
    return StandardScaler().fit_transform(X), y


def same_params(a: Any, b: Any) -> bool:
    return a.params_.keys() == b.params_.keys() and all(
        np.array_equal(a.params_[k], b.params_[k]) for k in a.params_
    )


def test_importing_asynctrain_does_not_import_scikit_learn() -> None:
    code = (
        "import sys, asynctrain as at\n"
        "assert 'sklearn' not in sys.modules\n"
        "assert at.sklearn.AsyncLogisticRegression\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_public_names_and_methods_are_documented() -> None:
    for name in ask.__all__:
        cls = getattr(ask, name)
        assert "Args:" in (inspect.getdoc(cls) or ""), name
        for method in ("fit", "afit", "partial_fit", "apartial_fit", "predict", "score"):
            assert inspect.getdoc(getattr(cls, method)), f"{name}.{method}"


def test_coef_and_intercept_shapes_match_scikit_learn() -> None:
    for centers in (2, 3):
        X, y = blobs(centers=centers)
        ours = ask.AsyncLogisticRegression(random_state=0, max_iter=5).fit(X, y)
        ref = LogisticRegression().fit(X, y)
        assert ours.coef_.shape == ref.coef_.shape
        assert ours.intercept_.shape == ref.intercept_.shape
        assert ours.decision_function(X).shape == ref.decision_function(X).shape
    X, y = blobs()
    target = X @ [1.0, 2.0, 0.0, -1.0]
    reg = ask.AsyncLinearRegression(random_state=0, max_iter=5).fit(X, target)
    ref_reg = LinearRegression().fit(X, target)
    assert reg.coef_.shape == ref_reg.coef_.shape
    assert isinstance(reg.intercept_, float)


def test_labels_of_any_kind_come_back_as_they_went_in() -> None:
    X, y = blobs()
    names = np.array(["eel", "cat", "dog"])[y]
    clf = ask.AsyncLogisticRegression(random_state=0, max_iter=30).fit(X, names)
    assert clf.classes_.tolist() == ["cat", "dog", "eel"]
    assert (clf.predict(X) == names).mean() > 0.9


def test_predictions_follow_the_input_dtype() -> None:
    X, y = blobs()
    clf = ask.AsyncMLPClassifier((8,), random_state=0, max_iter=5).fit(X, y)
    assert clf.predict_proba(X).dtype == np.float64
    assert clf.predict_proba(X.astype(np.float32)).dtype == np.float32
    assert clf.params_["W0"].dtype == np.float32


def test_regression_targets_of_any_scale() -> None:
    # Targets are standardised for training and the output layer rescaled afterwards: the
    # units of y change nothing but the units of the answer, which params_ are in.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    small = X @ [3.0, -2.0, 0.5] + 0.1 * rng.normal(size=400)
    big = 5000.0 + 100.0 * small
    reg = ask.AsyncLinearRegression(random_state=0).fit(X, big)
    ref = ask.AsyncLinearRegression(random_state=0).fit(X, small)
    np.testing.assert_allclose(reg.coef_, 100.0 * ref.coef_, rtol=1e-5)
    assert reg.intercept_ == pytest.approx(5000.0 + 100.0 * ref.intercept_, rel=1e-6)
    assert reg.score(X, big) > 0.99
    np.testing.assert_allclose(reg.model_.predict(reg.params_, X), reg.predict(X), rtol=1e-5)
    reg.partial_fit(X, big)  # resumes in the standardised space, comes back in y's units
    assert reg.score(X, big) > 0.99


def test_mlp_regressor_outputs() -> None:
    X, _ = blobs()
    two = np.column_stack([X[:, 0], X[:, 1] * 2])
    reg = ask.AsyncMLPRegressor((16,), random_state=0, max_iter=5)
    assert reg.fit(X, two).predict(X).shape == (len(X), 2)
    assert reg.fit(X, two[:, :1]).predict(X).shape == (len(X),)


def _overflowing(est: Any, X: npt.NDArray[Any], y: npt.NDArray[Any]) -> Any:
    """``est`` fitted on ``(X, y)``, its parameters then scaled until they overflow."""
    est.fit(X, y)
    est.params_ = {key: value * np.float32(1e37) for key, value in est.params_.items()}
    return est


@pytest.mark.parametrize("centers", [2, 3])
def test_classifiers_predict_on_overflowing_parameters_without_warnings(centers: int) -> None:
    # Trainer.predict and Job.predict call the model with numpy's warnings off; the
    # estimators warned ("overflow encountered in matmul", an error here). The oracles,
    # computed with the warnings ignored: the logits, sigmoid and softmax by hand; the
    # MLP's network.
    X, y = blobs(centers=centers)
    X32 = X.astype(np.float32) * np.float32(100)
    logreg = _overflowing(ask.AsyncLogisticRegression(random_state=0, max_iter=2), X, y)
    mlp = _overflowing(ask.AsyncMLPClassifier((8,), random_state=0, max_iter=2), X, y)
    with np.errstate(all="ignore"):
        params = logreg.params_
        scores = X32 @ params["w" if centers == 2 else "W"] + params["b"]
        if centers == 2:
            index, positive = (scores > 0).astype(int), 1 / (1 + np.exp(-scores))
            proba = np.column_stack([1 - positive, positive])
        else:
            index, shifted = scores.argmax(axis=1), np.exp(scores - scores.max(axis=1)[:, None])
            proba = shifted / shifted.sum(axis=1)[:, None]
        mlp_proba = mlp.model_.predict_proba(mlp.params_, X32)
    assert not np.isfinite(scores).all()  # they do overflow
    assert not np.isfinite(mlp_proba).all()
    np.testing.assert_array_equal(logreg.decision_function(X32), scores)
    np.testing.assert_allclose(logreg.predict_proba(X32), proba, rtol=1e-6)
    for est, labels in ((logreg, logreg.classes_[index]), (mlp, mlp_proba.argmax(axis=1))):
        np.testing.assert_array_equal(est.predict(X32), labels)
        assert est.score(X32, y) == np.mean(labels == y)
    np.testing.assert_array_equal(mlp.predict_proba(X32), mlp_proba)


def test_regressors_predict_and_score_on_overflowing_values_without_warnings() -> None:
    # As above for the regressors (oracle: the model's own predict), and their score
    # squared finite predictions past float64's range ("overflow encountered in square").
    X, _ = blobs()
    y = X @ [1.0, 2.0, 0.0, -1.0]
    X32 = X.astype(np.float32) * np.float32(100)
    for est in (
        ask.AsyncLinearRegression(random_state=0, max_iter=2),
        ask.AsyncMLPRegressor((8,), random_state=0, max_iter=2),
    ):
        big = est.fit(X, y).predict(X * 1e300)
        with np.errstate(all="ignore"):
            r2 = 1 - np.sum((y - big) ** 2) / np.sum((y - y.mean()) ** 2)
        assert np.isfinite(big).all()
        assert r2 == -np.inf
        assert est.score(X * 1e300, y) == r2
        est = _overflowing(est, X, y)
        with np.errstate(all="ignore"):
            expected = est.model_.predict(est.params_, X32)
        assert not np.isfinite(expected).all()  # they do overflow
        np.testing.assert_array_equal(est.predict(X32), expected)


# -- event loops --------------------------------------------------------------------


async def test_sync_fit_works_inside_a_running_loop_and_equals_afit() -> None:
    X, y = blobs()
    blocking = ask.AsyncLogisticRegression(random_state=0, max_iter=20).fit(X, y)
    awaited = await ask.AsyncLogisticRegression(random_state=0, max_iter=20).afit(X, y)
    assert blocking.plan_.backend == "inline"  # on a helper thread's own loop
    assert awaited.plan_ == Plan("thread", at.backends.default_workers(), 1)  # same shards
    assert same_params(blocking, awaited)


async def test_afit_keeps_the_loop_responsive() -> None:
    X, y = blobs(n=2000)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    clf = ask.AsyncMLPClassifier((32,), random_state=0, max_iter=20, batch_size=50)
    async with asyncio.TaskGroup() as group:
        ticker = group.create_task(tick())
        await clf.afit(X, y)
        ticker.cancel()
    assert clf.plan_.backend == "thread"  # small, but off the loop
    assert ticks >= clf.n_iter_  # the loop ran other tasks all along


HAS_PROCESS = importlib.util.find_spec("asynctrain.backends._process") is not None


@pytest.mark.parametrize(
    "backend",
    [
        "thread",
        pytest.param(
            "process", marks=pytest.mark.skipif(not HAS_PROCESS, reason="no process backend")
        ),
    ],
)
def test_every_backend_gives_the_same_bits(backend: str) -> None:
    X, y = blobs()
    models = [
        ask.AsyncMLPClassifier((8,), random_state=3, max_iter=5, backend=b, shards=2).fit(X, y)
        for b in ("inline", backend)
    ]
    assert models[1].plan_.backend == backend
    assert same_params(*models)
    for model in models:
        model.partial_fit(X, y)
    assert same_params(*models)


@pytest.mark.parametrize("kind", ["AsyncLogisticRegression", "AsyncMLPClassifier"])
def test_shuffle_false_trains_the_rows_in_the_order_given(kind: str) -> None:
    """The oracle: a shuffled epoch reads the rows in ``epoch_order``'s order (the seed is
    ``random_state``); put in that order first, they train to the same bits unshuffled.
    Unshuffled, every epoch and every ``partial_fit`` reads them in the order given."""
    X, y = blobs()
    estimator = getattr(ask, kind)
    settings = {"random_state": 4, "backend": "inline", "batch_size": 32}
    order = at.data.epoch_order(len(y), seed=4, epoch=0)
    shuffled = estimator(max_iter=1, **settings).fit(X, y)
    ordered = estimator(max_iter=1, shuffle=False, **settings).fit(X[order], y[order])
    assert same_params(shuffled, ordered)
    assert not same_params(shuffled, estimator(max_iter=1, **settings).fit(X[order], y[order]))
    twice = estimator(max_iter=2, shuffle=False, n_iter_no_change=5, **settings).fit(X, y)
    again = estimator(max_iter=1, shuffle=False, **settings).fit(X, y).partial_fit(X, y)
    assert same_params(twice, again)


def test_interrupting_a_blocking_fit_cancels_it() -> None:
    # A sync fit called from a running loop waits on a helper thread; Ctrl-C while it waits
    # cancels the training, and nothing is left running.
    code = """
import asyncio, os, signal, threading, time
import numpy as np
from asynctrain.sklearn import AsyncMLPClassifier

async def main():
    X = np.random.default_rng(0).normal(size=(4000, 20)); y = (X[:, 0] > 0).astype(int)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.perf_counter()
    try:
        AsyncMLPClassifier(max_iter=10_000, tol=0.0).fit(X, y)
    except KeyboardInterrupt:
        print("interrupted after", round(time.perf_counter() - started, 1))
    left = [t.name for t in threading.enumerate() if t.name.startswith("asynctrain")]
    assert not left, left

loop = asyncio.new_event_loop()  # a plain loop, as in a notebook: no SIGINT handler
loop.run_until_complete(main())
loop.close()
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_default_sigint,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 10


# -- state: pickling, cloning, failures ---------------------------------------------------


def test_partial_fit_pickled_midway_continues_bit_for_bit() -> None:
    X, y = blobs(n=300)
    batches = np.array_split(np.arange(300), 6)
    whole = ask.AsyncMLPClassifier((8,), random_state=0)
    for part in batches:
        whole.partial_fit(X[part], y[part], classes=[0, 1, 2])
    resumed = ask.AsyncMLPClassifier((8,), random_state=0)
    for i, part in enumerate(batches):
        if i == 3:
            resumed = pickle.loads(pickle.dumps(resumed))
        resumed.partial_fit(X[part], y[part], classes=[0, 1, 2])
    assert same_params(whole, resumed)
    assert (whole.n_iter_, whole.t_) == (resumed.n_iter_, resumed.t_) == (6, 300)


def test_partial_fit_learns_online_from_single_class_batches() -> None:
    X, y = blobs(n=600, centers=2)
    clf = ask.AsyncLogisticRegression(random_state=0, learning_rate=0.05)
    for label in (0, 1, 0, 1, 0, 1):  # every batch holds one class only
        rows = np.flatnonzero(y == label)[:50]
        clf.partial_fit(X[rows], y[rows], classes=[0, 1])
    assert clf.score(X, y) > 0.9


def test_partial_fit_checks_its_classes() -> None:
    X, y = blobs()
    clf = ask.AsyncLogisticRegression()
    with pytest.raises(ValueError, match="classes= on its first call"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[y < 2], y[y < 2], classes=[0, 1])
    with pytest.raises(ValueError, match=r"labels \[2\] that are not among the classes"):
        clf.partial_fit(X, y)
    with pytest.raises(ValueError, match="differs from classes_"):
        clf.partial_fit(X, y, classes=[0, 1, 2])


@pytest.mark.parametrize("estimator", [ask.AsyncLogisticRegression, ask.AsyncMLPClassifier])
@pytest.mark.parametrize(
    ("labels", "named"), [(["cat", "dog"], "class 'dog'"), ([3, 7], "class 7")]
)
def test_one_class_left_by_the_weights_is_named_by_the_users_label(
    estimator: Any, labels: list[Any], named: str
) -> None:
    """The message named the encoded class ("only class 1"), which the user never gave."""
    X, encoded = blobs(n=200, centers=2)
    y = np.asarray(labels)[encoded]
    weights = (encoded == 1).astype(float)  # only the second label keeps a weight
    with pytest.raises(at.DataError, match=rf"positive sample_weight hold only {named};"):
        estimator(max_iter=2).fit(X, y, sample_weight=weights)
    first = {labels[0]: 0.0}
    with pytest.raises(at.DataError, match=rf"\(sample_weight × class_weight\) hold only {named};"):
        estimator(max_iter=2, class_weight=first).fit(X, y)


def test_partial_fit_refuses_a_changed_architecture() -> None:
    X, y = blobs()
    clf = ask.AsyncMLPClassifier((8,), random_state=0, max_iter=2).fit(X, y)
    clf.set_params(hidden_layer_sizes=(4,))
    with pytest.raises(ValueError, match="call fit to start over"):
        clf.partial_fit(X, y)


def test_hidden_layer_sizes_may_be_an_array_as_in_scikit_learn() -> None:
    # MLPClassifier takes any array-like; a numpy array was a ConfigTypeError
    X, y = blobs()
    clf = ask.AsyncMLPClassifier(np.array([5, 4]), random_state=0, max_iter=2).fit(X, y)
    assert [w.shape for w in clf.coefs_] == [(4, 5), (5, 4), (4, 3)]
    reference = ask.AsyncMLPClassifier((5, 4), random_state=0, max_iter=2).fit(X, y)
    assert same_params(clf, reference)


def test_pickle_and_clone_hold_no_live_objects() -> None:
    X, y = blobs()
    clf = ask.AsyncMLPClassifier((8,), random_state=0, max_iter=5, backend="thread").fit(X, y)
    copy = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(copy.predict_proba(X), clf.predict_proba(X))
    fresh = clone(clf)
    assert fresh.get_params() == clf.get_params()
    assert not hasattr(fresh, "params_")


async def test_pickling_while_afit_runs_sees_the_previous_model() -> None:
    X, y = blobs(n=2000)
    clf = ask.AsyncMLPClassifier((32,), random_state=0, max_iter=2, batch_size=50).fit(X, y)
    before = clf.predict_proba(X)
    clf.set_params(max_iter=15, random_state=1)
    training = asyncio.ensure_future(clf.afit(X, y))
    snapshots = []
    while not training.done():
        snapshots.append(pickle.dumps(clf))  # no trainer, pool or loop inside
        await asyncio.sleep(0.005)
    await training
    assert len(snapshots) > 1
    np.testing.assert_array_equal(pickle.loads(snapshots[0]).predict_proba(X), before)
    assert not np.array_equal(clf.predict_proba(X), before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to inf
def test_a_failed_fit_leaves_the_estimator_as_it_was() -> None:
    X, _ = blobs()
    reg = ask.AsyncLinearRegression(random_state=0, max_iter=5).fit(X, X[:, 0])
    params, n_iter = reg.params_, reg.n_iter_
    reg.set_params(optimizer="sgd", learning_rate=1e38)  # overflows float32 in a step or two
    with pytest.raises(at.NonFiniteError):
        reg.fit(X, X[:, 0] * 1e3)
    assert reg.params_ is params
    assert reg.n_iter_ == n_iter


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_early_stopping_keeps_the_best_epoch(kind: str) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 20))
    signal = X[:, 0] + 2 * rng.normal(size=300)  # noisy: a big network overfits
    options = {"random_state": 0, "early_stopping": True, "n_iter_no_change": 5}
    if kind == "classifier":
        y = (signal > 0).astype(int)
        est: Any = ask.AsyncMLPClassifier((256,), learning_rate=0.02, **options).fit(X, y)
        curve = [-score for score in est.validation_scores_]  # accuracy: higher is better
    else:
        y = signal
        est = ask.AsyncMLPRegressor((256,), learning_rate=0.02, **options).fit(X, y)
        curve = est.validation_loss_curve_
    assert len(curve) == est.n_iter_ < est.max_iter
    assert np.argmin(curve) < len(curve) - 1  # the last epoch was not the best
    # The validation split is train_test_split's with the random_state (stratified for
    # classifiers): the parameters kept are those of the best epoch on it.
    stratify = y if kind == "classifier" else None
    _, X_val, _, y_val = train_test_split(X, y, test_size=0.1, random_state=0, stratify=stratify)
    if kind == "classifier":
        assert -est.score(X_val, y_val) == min(curve)
    else:  # the loss is the mean squared error of standardised targets (+ a tiny penalty)
        mse = np.mean((est.predict(X_val) - y_val) ** 2) / est.target_scale_**2
        assert mse == pytest.approx(min(curve), rel=1e-3)


def test_convergence_is_reported_like_scikit_learn() -> None:
    X, y = blobs()
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        ask.AsyncLogisticRegression(max_iter=3).fit(X, y)


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"optimizer": "lbfgs"}, ValueError, "optimizer must be one of"),
        ({"backend": None}, TypeError, "backend must be a backend name"),
        ({"backend": "gpu"}, ValueError, "unknown backend 'gpu'"),
        ({"shards": "many"}, ValueError, "shards must be 'auto'"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        ({"learning_rate": -1.0}, ValueError, "learning_rate must be in"),
        ({"hidden_layer_sizes": "64"}, TypeError, "hidden_layer_sizes must be a tuple"),
        ({"hidden_layer_sizes": (0,)}, ValueError, r"hidden_layer_sizes must be widths >= 1"),
        ({"hidden_layer_sizes": (8, 2.5)}, TypeError, "hidden_layer_sizes must be integer"),
        ({"activation": "sigmoid"}, ValueError, "activation must be one of"),
        ({"dtype": np.int32}, ValueError, "dtype must be float32 or float64"),
        ({"shuffle": "yes"}, ValueError, "shuffle must be True or False"),
    ],
)
def test_bad_hyper_parameters_fail_before_training(
    params: dict[str, Any], error: type[Exception], match: str
) -> None:
    X, y = blobs()
    with pytest.raises(error, match=match):
        ask.AsyncMLPClassifier(**params).fit(X, y)


# -- parallel model selection -------------------------------------------------------------


@pytest.fixture(scope="module")
def loky() -> Iterator[None]:
    """joblib's process pool (what n_jobs uses), started before the tests that use it and
    shut down after them: it outlives a test, so the leak check must see it start first."""
    assert Parallel(n_jobs=2)(delayed(abs)(i) for i in range(-2, 0)) == [2, 1]
    yield
    get_reusable_executor().shutdown(wait=True)


@pytest.mark.usefixtures("loky")
def test_grid_search_n_jobs_2_matches_n_jobs_1() -> None:
    X, y = blobs(n=300)
    pipe = make_pipeline(StandardScaler(), ask.AsyncLogisticRegression(max_iter=30, random_state=0))
    grid = {"asynclogisticregression__alpha": [1e-4, 1e-1]}
    scores = [
        GridSearchCV(pipe, grid, cv=3, n_jobs=n_jobs).fit(X, y).cv_results_["mean_test_score"]
        for n_jobs in (1, 2)
    ]
    np.testing.assert_array_equal(*scores)


@pytest.mark.usefixtures("loky")
def test_estimators_in_joblib_workers_start_no_threads() -> None:
    X, y = blobs(n=400)
    X = np.hstack([X] * 30)  # 120 features, 400 hidden: steps large enough for threads
    clf = ask.AsyncMLPClassifier((400,), random_state=0, max_iter=1)
    assert clf.fit(X, y).plan_ == Plan("thread", at.backends.default_workers(), 4)
    fitted = cross_validate(clf, X, y, cv=2, n_jobs=2, return_estimator=True)["estimator"]
    assert [est.plan_ for est in fitted] == [Plan("inline", 1, 4)] * 2
    threaded = clone(clf).set_params(backend="thread")
    fitted = cross_validate(threaded, X, y, cv=2, n_jobs=2, return_estimator=True)["estimator"]
    assert [est.plan_ for est in fitted] == [Plan("thread", 1, 4)] * 2


@pytest.mark.usefixtures("loky")
def test_the_process_backend_runs_inside_joblib_workers() -> None:
    """A joblib worker's default start method is loky's, which the workers it starts
    cannot set: they died at start and every fit failed after its retries."""
    X, y = blobs(n=200)
    clf = ask.AsyncLogisticRegression(backend="process", workers=1, max_iter=3, random_state=0)
    fitted = cross_validate(clf, X, y, cv=2, n_jobs=2, return_estimator=True)["estimator"]
    assert [est.plan_.backend for est in fitted] == ["process"] * 2
    inline = clone(clf).set_params(backend="inline")
    expected = cross_validate(inline, X, y, cv=2, n_jobs=1, return_estimator=True)["estimator"]
    for est, reference in zip(fitted, expected, strict=True):
        np.testing.assert_array_equal(est.coef_, reference.coef_)


def test_joblib_workers_are_detected() -> None:
    assert not in_joblib_worker()
    inside = Parallel(n_jobs=2, backend="threading")(delayed(in_joblib_worker)() for _ in "ab")
    assert inside == [True, True]


SMALL, LARGE = 100, SMALL_STEP  # parameters: steps of 200 rows are small / large


@pytest.mark.parametrize(
    ("args", "n_params", "on_loop", "top_level", "in_worker"),
    [
        (("auto", None, "auto"), SMALL, False, Plan("inline", None, 1), Plan("inline", None, 1)),
        (("auto", None, "auto"), LARGE, False, Plan("thread", None, 4), Plan("inline", None, 4)),
        (("auto", None, "auto"), SMALL, True, Plan("thread", None, 1), Plan("thread", 1, 1)),
        (("auto", 3, 2), LARGE, False, Plan("thread", 3, 2), Plan("inline", None, 2)),
        (("thread", None, 300), SMALL, False, Plan("thread", None, 200), Plan("thread", 1, 200)),
        (("inline", 3, 1), LARGE, True, Plan("inline", None, 1), Plan("inline", None, 1)),
    ],
)
def test_plan_policy(
    args: tuple[Any, ...], n_params: int, on_loop: bool, top_level: Plan, in_worker: Plan
) -> None:
    def decide() -> Plan:
        return plan(*args, batch_size=200, n_params=n_params, on_loop=on_loop)

    assert decide() == top_level
    assert (
        Parallel(n_jobs=2, backend="threading")(delayed(decide)() for _ in "ab") == [in_worker] * 2
    )


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C as a terminal delivers it, even when this test run
    inherited SIGINT ignored (a background job of a shell without job control)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_older_scikit_learn_is_one_import_error_naming_the_floor() -> None:
    """scikit-learn 1.4 and 1.5 satisfied the extra's floor, and `import asynctrain.sklearn`
    failed deep inside: "cannot import name 'validate_data'" (it came in 1.6)."""
    code = "import sklearn; sklearn.__version__ = '1.5.2'; import asynctrain.sklearn"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: asynctrain.sklearn needs scikit-learn 1.6 or later, found 1.5.2: "
        "pip install --upgrade 'asynctrain[sklearn]'"
    )


def test_every_scikit_learn_requirement_has_the_floor_the_estimators_need() -> None:
    from asynctrain.sklearn import _MIN_SKLEARN

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    found = {
        extra: requirement
        for extra, requirements in extras.items()
        for requirement in requirements
        if requirement.startswith("scikit-learn")
    }
    floor = ".".join(map(str, _MIN_SKLEARN))
    assert set(found) == {"sklearn", "bench", "test"}
    assert all(r.startswith(f"scikit-learn>={floor},") for r in found.values()), found
