"""AsyncEstimator: the scikit-learn machinery every asynctrain estimator shares.

A fit runs in three parts. ``_prepare`` validates the data the scikit-learn way and
builds everything training needs into a :class:`Job`, touching nothing on the estimator.
``_training.train`` runs it on a fresh :class:`~asynctrain.Trainer`. ``_commit`` then sets every
fitted attribute in one step, so a failed or cancelled fit leaves the estimator as it was,
and a reader (``predict`` from another task while ``afit`` runs) sees the old model or the
new one, never a mix. Between fits the estimator holds plain arrays only: it pickles and
clones with no backend, pool or loop inside.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from asynctrain import optim
from asynctrain._checks import check_choice, check_float, check_int
from asynctrain._events import FitResult
from asynctrain._inputs import prepare, prepare_validation, quietly
from asynctrain._offloop import off_loop
from asynctrain._types import Params
from asynctrain.data._frames import batch_as_table, check_table, is_table
from asynctrain.models import Model
from asynctrain.sklearn._params import TrainingParams
from asynctrain.sklearn._policy import plan
from asynctrain.sklearn._runner import run_blocking
from asynctrain.sklearn._state import Resumed, resumed_optimizer, same_structure
from asynctrain.sklearn._training import Job, Trained, train

AUTO_BATCH = 200  # batch_size="auto" is at most this (scikit-learn's MLPs: min(200, n))
AUTO_MIN_BATCH = 16  # and at least this, when it aims at several steps an epoch
_SEED_RANGE = 2**31 - 1

Triple = tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any] | None]
"""Rows, targets and sample weights (None: unweighted)."""


class AsyncEstimator(TrainingParams, BaseEstimator):  # type: ignore[misc]
    """Shared machinery; subclasses define targets, the model and predictions.

    The hyper-parameters (and so ``__init__``) come from :mod:`._params`.
    """

    # batch_size="auto" aims at this many steps an epoch (batches of AUTO_MIN_BATCH to
    # AUTO_BATCH rows), so that small data still takes enough steps to converge.
    _auto_steps = 1

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # scipy.sparse X is trained on as CSR, never densified (every built-in model
        # multiplies it as it is); declaring it makes scikit-learn's checks test it.
        tags.input_tags.sparse = True
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return "params_" in self.__dict__

    # -- fitting ---------------------------------------------------------------------

    def fit(
        self, X: npt.ArrayLike, y: npt.ArrayLike, sample_weight: npt.ArrayLike | None = None
    ) -> Self:
        """Train from scratch for up to ``max_iter`` epochs and return the estimator.

        Blocks until training ends, with or without an event loop running in this
        thread (with one, training runs on a helper thread and the loop waits); on a
        loop, ``await afit(X, y)`` keeps it free instead.

        Args:
            X: (n_samples, n_features) inputs: an array, a data frame or a scipy.sparse
                matrix (any format; trained on as CSR in ``dtype``, never densified).
            y: targets.
            sample_weight: (n_samples,) weights ``>= 0``, not all zero: a weight of k
                counts like k copies of the row (each step's gradient is the weighted
                sum over its batch divided by the batch's sum of weights). Multiplied by
                ``class_weight`` for classifiers. None: every row weighs 1.

        Raises:
            ValueError: bad input (shape, NaN, labels, weights) or hyper-parameters,
                before any training starts.
        """
        job = self._prepare(X, y, partial=False, on_loop=False, sample_weight=sample_weight)
        self._warn_unless_converged(run_blocking(lambda: self._train(job)))
        return self

    async def afit(
        self, X: npt.ArrayLike, y: npt.ArrayLike, sample_weight: npt.ArrayLike | None = None
    ) -> Self:
        """Like :meth:`fit`, on the caller's event loop, which stays responsive.

        Validation and all array math run off the loop (a worker thread), and training
        uses a thread backend even when ``backend="auto"`` would train a small problem
        inline; the result is the same model bit for bit.
        """
        prepare_job = functools.partial(
            self._prepare, X, y, partial=False, on_loop=True, sample_weight=sample_weight
        )
        job = await off_loop(prepare_job)
        self._warn_unless_converged(await self._train(job))
        return self

    def _partial_fit(
        self, X: npt.ArrayLike, y: npt.ArrayLike, classes: Any, sample_weight: Any
    ) -> Self:
        job = self._prepare(
            X, y, partial=True, on_loop=False, classes=classes, sample_weight=sample_weight
        )
        run_blocking(lambda: self._train(job))
        return self

    async def _apartial_fit(
        self, X: npt.ArrayLike, y: npt.ArrayLike, classes: Any, sample_weight: Any
    ) -> Self:
        prepare_job = functools.partial(
            self._prepare,
            X,
            y,
            partial=True,
            on_loop=True,
            classes=classes,
            sample_weight=sample_weight,
        )
        job = await off_loop(prepare_job)
        await self._train(job)
        return self

    # -- preparing ---------------------------------------------------------------------

    def _prepare(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        *,
        partial: bool,
        on_loop: bool,
        classes: Any = None,
        sample_weight: Any = None,
    ) -> Job:
        resume = partial and self.__sklearn_is_fitted__()
        X_arr, y_arr, attrs = self._validate(X, y, reset=not resume)
        weights = None
        if sample_weight is not None:
            weights = _check_sample_weight(
                sample_weight, X_arr, dtype=np.float64, ensure_non_negative=True
            )
        y_arr, target_attrs = self._targets(
            y_arr, partial=partial, resume=resume, classes=classes, weights=weights
        )
        attrs.update(target_attrs)
        seed = self._seed(partial)
        train, held_out = self._split(X_arr, y_arr, weights, partial, seed)
        train = (*train[:2], self._weigh_classes(train[1], train[2], attrs, partial=partial))
        batch_size = self._batch_size(train[0].shape[0])
        model = self._build_model(attrs, batch_size)
        data = prepare(model, train, single_class=partial)
        validation = None if held_out is None else prepare_validation(model, held_out)
        start = self._start(model, attrs, resume=resume, seed=seed)
        return Job(
            data=data,
            validation=validation,
            model=Resumed(model, start, n_classes=None if partial else model.n_classes),
            trained=model,
            optimizer=self._optimizer(start, resume),
            plan=plan(
                self.backend,
                self.workers,
                self.shards,
                batch_size=batch_size,
                n_params=sum(value.size for value in start.values()),
                on_loop=on_loop,
            ),
            batch_size=batch_size,
            seed=seed,
            epochs=1 if partial else check_int("max_iter", self.max_iter),
            mode=self.mode,
            shuffle=self._shuffle(),
            patience=None if partial else check_int("n_iter_no_change", self.n_iter_no_change),
            monitor=_monitor(validation is not None, is_classifier(self)),
            tol=check_float("tol", self.tol),
            resume=resume,
            attrs=attrs,
        )

    def _start(self, model: Model, attrs: dict[str, Any], *, resume: bool, seed: int) -> Params:
        """The parameters training starts from: fresh, or those of the earlier fit."""
        if not resume:
            return self._init_params(model, np.random.default_rng(seed))
        if not same_structure(self.params_, model.init(np.random.default_rng(0))):
            raise ValueError(
                f"{type(self).__name__}: the model's shape changed since the last fit "
                "(a hyper-parameter such as hidden_layer_sizes was set); call fit to start over"
            )
        return self._to_training(self.params_, attrs)

    def _validate(
        self, X: npt.ArrayLike, y: npt.ArrayLike, *, reset: bool
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any], dict[str, Any]]:
        # With reset=True, validate_data records n_features_in_ (and feature names) on the
        # estimator it is given: give it a copy, and commit those with the rest at the end.
        target = copy.copy(self) if reset else self
        X = _checked_frame(X)
        X_arr, y_arr = validate_data(
            target,
            X,
            y,
            reset=reset,
            accept_sparse="csr",
            dtype=(np.float64, np.float32),
            **self._y_checks(),
        )
        if not reset:
            return X_arr, y_arr, {"n_features_in_": self.n_features_in_}
        names = ("n_features_in_", "feature_names_in_")
        return X_arr, y_arr, {k: target.__dict__[k] for k in names if k in target.__dict__}

    def _split(
        self,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        weights: npt.NDArray[Any] | None,
        partial: bool,
        seed: int,
    ) -> tuple[Triple, Triple | None]:
        """``((X, y, w), None)``, or with ``early_stopping`` the training and held-out
        rows (each with their sample weights)."""
        if partial or not self.early_stopping:
            return (X, y, weights), None
        fraction = check_float("validation_fraction", self.validation_fraction, inclusive=False)
        arrays = (X, y) if weights is None else (X, y, weights)
        try:
            parts = train_test_split(
                *arrays,
                test_size=fraction,
                random_state=seed,
                stratify=y if is_classifier(self) else None,
            )
        except ValueError as exc:
            raise ValueError(
                f"early_stopping holds out validation_fraction={fraction} of "
                f"{X.shape[0]} samples, which is too few: {exc}. Raise validation_fraction, "
                "use more data or pass early_stopping=False"
            ) from exc
        w_tr, w_val = (None, None) if weights is None else (parts[4], parts[5])
        return (parts[0], parts[2], w_tr), (parts[1], parts[3], w_val)

    def _shuffle(self) -> str:
        """The trainer's ``shuffle`` for the ``shuffle`` hyper-parameter."""
        if not isinstance(self.shuffle, bool | np.bool_):
            raise ValueError(f"shuffle must be True or False, got {self.shuffle!r}")
        return "global" if self.shuffle else "none"

    def _batch_size(self, n: int) -> int:
        if isinstance(self.batch_size, str) and self.batch_size == "auto":
            if self._auto_steps == 1:
                return min(AUTO_BATCH, n)
            return min(AUTO_BATCH, n, max(AUTO_MIN_BATCH, math.ceil(n / self._auto_steps)))
        return min(check_int("batch_size", self.batch_size), n)

    def _seed(self, partial: bool) -> int:
        state = self.random_state
        if isinstance(state, numbers.Integral) and not isinstance(state, bool) and int(state) >= 0:
            base = int(state)
        else:
            base = int(check_random_state(state).randint(_SEED_RANGE))
        if not partial:
            return base
        # Each partial_fit call shuffles its batch differently, reproducibly.
        seen = int(self.__dict__.get("t_", 0))
        return int(np.random.SeedSequence([base, seen]).generate_state(1)[0])

    def _optimizer(self, start: Params, resume: bool) -> optim.GradientTransformation:
        name = check_choice("optimizer", self.optimizer, optim.names())
        rate = check_float("learning_rate", self.learning_rate, inclusive=False)
        transform = optim.get(name, learning_rate=rate)
        saved = self.__dict__.get("optimizer_state_")
        if resume and same_structure(saved, transform.init(start)):
            return resumed_optimizer(transform, saved)
        return transform  # a new optimizer (another name) starts with a fresh state

    # -- training ----------------------------------------------------------------------

    async def _train(self, job: Job) -> FitResult:
        trained = await train(job)
        self._commit(job, trained)
        return trained.result

    def _commit(self, job: Job, trained: Trained) -> None:
        history = trained.result.history
        attrs = dict(job.attrs)
        attrs.update(
            model_=job.trained,
            params_=self._from_training(trained.params, attrs),
            optimizer_state_=trained.opt_state,
            plan_=trained.plan,
        )
        previous = self.__dict__ if job.resume else {}
        attrs["n_iter_"] = previous.get("n_iter_", 0) + len(history)
        attrs["t_"] = previous.get("t_", 0) + len(job.data) * len(history)
        attrs["loss_curve_"] = [*previous.get("loss_curve_", []), *(e.loss for e in history)]
        if job.validation is not None:
            attrs["validation_loss_curve_"] = [event.val_loss for event in history]
            if is_classifier(self):
                attrs["validation_scores_"] = [event.val_accuracy for event in history]
        if not job.resume:
            for name in [k for k in self.__dict__ if k.endswith("_") and not k.startswith("_")]:
                del self.__dict__[name]
        self.__dict__.update(attrs)

    def _warn_unless_converged(self, result: FitResult) -> None:
        if not result.stopped_early:
            warnings.warn(
                f"{type(self).__name__} stopped after max_iter={result.epochs} epochs "
                f"before the loss stopped improving by tol={self.tol}; raise max_iter or "
                "learning_rate",
                ConvergenceWarning,
                stacklevel=3,
            )

    # -- predicting --------------------------------------------------------------------

    def _predicted(
        self, compute: Callable[[npt.NDArray[Any], Params], npt.NDArray[Any]], X: npt.ArrayLike
    ) -> npt.NDArray[Any]:
        """``compute(rows, params)`` of :meth:`_inputs`, run :func:`~asynctrain._inputs.quietly`
        as ``Trainer.predict`` runs the model: parameters that overflow on ``X`` show in
        the answer (``inf``, ``nan``), not as a ``RuntimeWarning``."""
        return quietly(compute, *self._inputs(X))

    def _inputs(self, X: npt.ArrayLike) -> tuple[npt.NDArray[Any], Params]:
        """Validated ``X`` (float64 or float32; a scipy.sparse ``X`` as CSR, never
        densified: the models multiply it as it is) and the parameters in its dtype."""
        check_is_fitted(self)
        X = _checked_frame(X)
        X_arr = validate_data(
            self, X, reset=False, accept_sparse="csr", dtype=(np.float64, np.float32)
        )
        params = {k: v.astype(X_arr.dtype, copy=False) for k, v in self.params_.items()}
        return X_arr, params

    # -- subclass hooks ----------------------------------------------------------------

    def _y_checks(self) -> dict[str, Any]:
        raise NotImplementedError

    def _targets(
        self,
        y: npt.NDArray[Any],
        *,
        partial: bool,
        resume: bool,
        classes: Any,
        weights: npt.NDArray[Any] | None = None,
    ) -> tuple[npt.NDArray[Any], dict[str, Any]]:
        raise NotImplementedError

    def _build_model(self, attrs: dict[str, Any], batch_size: int) -> Model:
        raise NotImplementedError

    def _weigh_classes(
        self,
        y: npt.NDArray[Any],
        weights: npt.NDArray[Any] | None,
        attrs: dict[str, Any],
        *,
        partial: bool,
    ) -> npt.NDArray[Any] | None:
        """The training rows' weights with ``class_weight`` applied (classifiers)."""
        return weights

    def _init_params(self, model: Model, rng: np.random.Generator) -> Params:
        """Fresh parameters (the model's own initialisation; see the MLPs)."""
        return model.init(rng)

    def _to_training(self, params: Params, attrs: dict[str, Any]) -> Params:
        """Fitted parameters → those training works with (identity; see AsyncRegressor)."""
        return params

    def _from_training(self, params: Params, attrs: dict[str, Any]) -> Params:
        """Trained parameters → fitted ones (identity; see AsyncRegressor)."""
        return params


def _monitor(validating: bool, classifier: bool) -> str:
    """What early stopping watches: as in scikit-learn's MLPs, validation accuracy for a
    classifier (a regressor's validation loss moves with its r2), else the training loss."""
    if not validating:
        return "loss"
    return "val_accuracy" if classifier else "val_loss"


def _checked_frame(X: Any) -> Any:
    """``X``, a data frame refused the way ``Trainer.fit`` refuses it before scikit-learn
    reads it: a non-numeric column by name (DataTypeError, a ValueError), a column name
    used twice. Feature names (``feature_names_in_``) and their check at predict are
    scikit-learn's, which reads a pyarrow Table but not a RecordBatch: one is wrapped."""
    if is_table(X):
        check_table(X, name="X")
    return batch_as_table(X)
