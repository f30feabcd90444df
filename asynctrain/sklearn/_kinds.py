"""Classifier and regressor bases: targets, ``partial_fit`` and shared predictions."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import numpy.typing as npt
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets

from asynctrain._exceptions import DataError
from asynctrain._inputs import quietly
from asynctrain._types import Params
from asynctrain.data._weights import class_weight_rows
from asynctrain.sklearn._base import AsyncEstimator


class AsyncClassifier(ClassifierMixin, AsyncEstimator):  # type: ignore[misc]
    """Labels of any kind (strings, ints, ...) mapped to ``0 .. K-1`` through ``classes_``."""

    class_weight: Any  # a hyper-parameter of each classifier (see _params.CLASS_WEIGHT)

    def partial_fit(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        classes: Any = None,
        sample_weight: npt.ArrayLike | None = None,
    ) -> Self:
        """Train one epoch over ``(X, y)``, continuing from the current state.

        The first call (on an unfitted estimator) needs ``classes``, every label that
        will ever be seen; a batch may hold any subset of them, even a single class.
        Parameters and optimizer state carry over between calls, so a sequence of calls
        is online learning; a call after :meth:`fit` continues that fit.
        ``sample_weight`` weighs the rows as in :meth:`fit`; a dict ``class_weight``
        applies, ``"balanced"`` does not (as in scikit-learn's ``SGDClassifier``).

        Raises:
            ValueError: ``classes`` missing on the first call or different later, a
                label of ``y`` not among ``classes_``, bad weights, or
                ``class_weight="balanced"``.
        """
        return self._partial_fit(X, y, classes, sample_weight)

    async def apartial_fit(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        classes: Any = None,
        sample_weight: npt.ArrayLike | None = None,
    ) -> Self:
        """Like :meth:`partial_fit`, on the caller's event loop (see :meth:`afit`)."""
        return await self._apartial_fit(X, y, classes, sample_weight)

    def _weigh_classes(
        self,
        y: npt.NDArray[Any],
        weights: npt.NDArray[Any] | None,
        attrs: dict[str, Any],
        *,
        partial: bool,
    ) -> npt.NDArray[Any] | None:
        """``weights`` (ones if None) times each row's ``class_weight``; ``y`` holds the
        encoded labels ``0 .. K-1``.

        Raises:
            DataError: (a fit) the rows of positive weight hold one class, named by the
                user's label (the trainer's check would name its encoded index).
        """
        known = attrs["classes_"]
        weighted = self._class_weights(y, weights, known, partial=partial)
        if weighted is not None and not partial:
            kept = np.unique(y[weighted > 0])
            if len(kept) == 1:  # none at all: the trainer's check says so
                label = known[kept].tolist()[0]
                by = "sample_weight" if self.class_weight is None else "weight"
                also = "" if self.class_weight is None else " (sample_weight × class_weight)"
                raise DataError(
                    f"the rows with a positive {by}{also} hold only class {label!r}; a "
                    "classifier needs at least two classes with weight in its training data"
                )
        return weighted

    def _class_weights(
        self,
        y: npt.NDArray[Any],
        weights: npt.NDArray[Any] | None,
        known: npt.NDArray[Any],
        *,
        partial: bool,
    ) -> npt.NDArray[Any] | None:
        class_weight = self.class_weight
        if class_weight is None:
            return weights
        if isinstance(class_weight, str) and class_weight == "balanced":
            if partial:
                raise ValueError(
                    "class_weight='balanced' is not supported by partial_fit: one call does "
                    "not see the label counts of all the data. Pass "
                    "class_weight=dict(zip(classes, compute_class_weight('balanced', "
                    "classes=classes, y=y_all))) instead"
                )
            encoded: str | dict[int, float] = class_weight
        elif isinstance(class_weight, dict):
            encoded = {_index(known, label): value for label, value in class_weight.items()}
        else:
            raise ValueError(
                f"class_weight must be 'balanced', a dict {{label: weight}} or None, got "
                f"{class_weight!r}"
            )
        rows = class_weight_rows(encoded, y, len(known), weights)
        return rows if weights is None else rows * weights

    def predict_proba(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        raise NotImplementedError

    def predict_log_proba(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        """Logarithm of :meth:`predict_proba` (``-inf`` where a probability is 0)."""
        with np.errstate(divide="ignore"):
            log_proba: npt.NDArray[Any] = np.log(self.predict_proba(X))
        return log_proba

    def _y_checks(self) -> dict[str, Any]:
        return {}

    def _targets(
        self,
        y: npt.NDArray[Any],
        *,
        partial: bool,
        resume: bool,
        classes: Any,
        weights: npt.NDArray[Any] | None = None,
    ) -> tuple[npt.NDArray[Any], dict[str, Any]]:
        check_classification_targets(y)
        known = self._classes(y, partial=partial, resume=resume, classes=classes)
        unseen = np.setdiff1d(y, known)
        if len(unseen):
            raise ValueError(
                f"y holds labels {unseen.tolist()[:5]} that are not among the classes "
                f"{known.tolist()}; pass every label in classes= on the first partial_fit"
            )
        return np.searchsorted(known, y).astype(np.int64), {"classes_": known}

    def _classes(
        self, y: npt.NDArray[Any], *, partial: bool, resume: bool, classes: Any
    ) -> npt.NDArray[Any]:
        name = type(self).__name__
        if resume:
            if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                raise ValueError(
                    f"classes={list(classes)} differs from classes_={self.classes_.tolist()} "
                    "of the earlier fit; call fit to start over with new classes"
                )
            known: npt.NDArray[Any] = self.classes_
            return known
        if partial and classes is None:
            raise ValueError(
                f"{name}.partial_fit needs classes= on its first call: every label the "
                "data will hold, e.g. classes=np.unique(y_all)"
            )
        known = np.unique(y if classes is None else np.asarray(classes))
        if len(known) < 2:
            raise ValueError(
                f"{name} needs samples of at least 2 classes, but y holds only one class: "
                f"{known.tolist()}; check the labels"
            )
        return known


def _moments(y: npt.NDArray[Any], weights: npt.NDArray[Any] | None) -> tuple[Any, Any]:
    """Mean and standard deviation of the targets, weighted like the loss (a weight of k
    counts like k copies of the row)."""
    if weights is None:
        return y.mean(axis=0), y.std(axis=0)
    mean = np.average(y, axis=0, weights=weights)
    return mean, np.sqrt(np.average((y - mean) ** 2, axis=0, weights=weights))


def _index(known: npt.NDArray[Any], label: Any) -> int:
    """The position of ``label`` in ``classes_``; ValueError naming it if absent."""
    found = np.flatnonzero(known == label) if np.ndim(label) == 0 else np.empty(0, np.intp)
    if len(found) == 0:
        raise ValueError(
            f"class_weight names the label {label!r}, which is not among the classes "
            f"{known.tolist()}; key class_weight by labels of y"
        )
    return int(found[0])


class AsyncRegressor(RegressorMixin, AsyncEstimator):  # type: ignore[misc]
    """Float targets, one column or (when the model allows) several."""

    _multi_output = False

    def partial_fit(
        self, X: npt.ArrayLike, y: npt.ArrayLike, sample_weight: npt.ArrayLike | None = None
    ) -> Self:
        """Train one epoch over ``(X, y)``, continuing from the current state.

        Parameters and optimizer state carry over between calls, so a sequence of calls
        is online learning; a call after :meth:`fit` continues that fit.
        ``sample_weight`` weighs the rows as in :meth:`fit`.
        """
        return self._partial_fit(X, y, None, sample_weight)

    async def apartial_fit(
        self, X: npt.ArrayLike, y: npt.ArrayLike, sample_weight: npt.ArrayLike | None = None
    ) -> Self:
        """Like :meth:`partial_fit`, on the caller's event loop (see :meth:`afit`)."""
        return await self._apartial_fit(X, y, None, sample_weight)

    def score(
        self, X: npt.ArrayLike, y: npt.ArrayLike, sample_weight: npt.ArrayLike | None = None
    ) -> float:
        """The coefficient of determination R² of :meth:`predict` on ``(X, y)``, as
        scikit-learn's ``RegressorMixin.score``, computed
        :func:`~asynctrain._inputs.quietly`: predictions too large to square give
        ``-inf``, not a ``RuntimeWarning``."""
        return float(quietly(super().score, X, y, sample_weight=sample_weight))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = self._multi_output
        return tags

    def _y_checks(self) -> dict[str, Any]:
        return {"y_numeric": True, "multi_output": self._multi_output}

    def _targets(
        self,
        y: npt.NDArray[Any],
        *,
        partial: bool,
        resume: bool,
        classes: Any,
        weights: npt.NDArray[Any] | None = None,
    ) -> tuple[npt.NDArray[Any], dict[str, Any]]:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        outputs = 1 if y.ndim == 1 else int(y.shape[1])
        if not resume:
            mean, scale = _moments(y, weights)
            scale = np.where(scale > 0, scale, 1.0)
            attrs = {"n_outputs_": outputs, "target_mean_": mean, "target_scale_": scale}
        elif outputs != self.n_outputs_:
            raise ValueError(
                f"y has {outputs} output(s) but the earlier fit had {self.n_outputs_}; "
                "call fit to start over"
            )
        else:
            mean, scale = self.target_mean_, self.target_scale_
            attrs = {"n_outputs_": outputs}
        return np.asarray((y - mean) / scale, dtype=self.dtype), attrs

    # Targets are standardised for training, so a step size suits any scale of y; the
    # output layer is rescaled on the way out (and back when partial_fit resumes).

    def _from_training(self, params: Params, attrs: dict[str, Any]) -> Params:
        mean, scale = self._scaling(attrs)
        weight, bias = self._output_keys(params)
        out = dict(params)
        out[weight] = (params[weight] * scale).astype(params[weight].dtype)
        out[bias] = (params[bias] * scale + mean).astype(params[bias].dtype)
        return out

    def _to_training(self, params: Params, attrs: dict[str, Any]) -> Params:
        mean, scale = self._scaling(attrs)
        weight, bias = self._output_keys(params)
        out = dict(params)
        out[weight] = (params[weight] / scale).astype(params[weight].dtype)
        out[bias] = ((params[bias] - mean) / scale).astype(params[bias].dtype)
        return out

    def _scaling(self, attrs: dict[str, Any]) -> tuple[Any, Any]:
        return (
            attrs.get("target_mean_", self.__dict__.get("target_mean_")),
            attrs.get("target_scale_", self.__dict__.get("target_scale_")),
        )

    def _output_keys(self, params: Params) -> tuple[str, str]:
        """Names of the output layer's weight and bias."""
        raise NotImplementedError
