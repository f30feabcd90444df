"""The estimators' hyper-parameters: one specification of their names, defaults and docs.

scikit-learn reads an estimator's parameters from the signature of its ``__init__``
(``get_params``, ``clone``) and wants each one stored unchanged under its own name. A
dataclass writes exactly such an ``__init__`` from annotated fields, so the shared
parameters are written once here, as fields (:class:`TrainingParams`, and the MLPs'
:class:`MLPParams`), and every estimator is a :func:`hyperparameters` class that adds or
re-defaults the few of its own. The same fields write the ``Args:`` section of each
estimator's docstring.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any, TypeVar, dataclass_transform

import numpy as np

T = TypeVar("T")

_DOC = "doc"  # the key of a field's docstring line in its metadata


def param(*, default: Any, doc: str, kw_only: bool = True) -> Any:
    """A hyper-parameter: its default and its line of the ``Args:`` docs.

    Keyword-only unless ``kw_only=False`` (scikit-learn's MLPs take
    ``hidden_layer_sizes`` positionally).
    """
    return dataclasses.field(default=default, kw_only=kw_only, metadata={_DOC: doc})


@dataclass_transform(kw_only_default=True, field_specifiers=(param,))
def hyperparameters(cls: type[T]) -> type[T]:
    """Give ``cls`` an ``__init__`` of its fields (those of its bases first), each stored
    unchanged, and fill ``{args}`` and ``{fitted}`` of its docstring.

    A dataclass without ``repr`` or ``eq``: scikit-learn's ``__repr__`` (which shows the
    parameters that differ from their defaults) and identity comparison stay.
    """
    cls = dataclasses.dataclass(repr=False, eq=False, kw_only=True)(cls)
    if cls.__doc__ and "{args}" in cls.__doc__:
        cls.__doc__ = cls.__doc__.format(args=args_doc(cls), fitted=FITTED)
    return cls


STEP_SIZE = "the optimizer's step size."


@hyperparameters
class TrainingParams:
    """What every estimator shares: the optimizer, batches, stopping, seed, backend."""

    optimizer: str = param(
        default="adam", doc='``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"`` or ``"adagrad"``.'
    )
    learning_rate: float = param(default=1e-3, doc=STEP_SIZE)
    batch_size: int | str = param(
        default="auto",
        doc='rows per step; ``"auto"`` is ``min(200, n_samples)`` for the MLPs (as in '
        "scikit-learn) and about a tenth of the data for the linear models (16 to 200 "
        "rows), so an epoch of small data still takes several steps.",
    )
    max_iter: int = param(default=200, doc="most epochs of :meth:`fit`.")
    tol: float = param(
        default=1e-4,
        doc=":meth:`fit` stops once the monitored value has not beaten its best by ``tol`` "
        "for more than ``n_iter_no_change`` epochs in a row, as scikit-learn's MLPs do "
        "(``ConvergenceWarning`` if ``max_iter`` comes first).",
    )
    n_iter_no_change: int = param(
        default=10, doc="epochs without improvement by ``tol`` before stopping."
    )
    early_stopping: bool = param(
        default=False,
        doc="monitor a held-out ``validation_fraction`` of the data (stratified for "
        "classifiers) instead of the training loss: its accuracy for a classifier, its "
        "loss for a regressor; keep the parameters of its best epoch.",
    )
    validation_fraction: float = param(
        default=0.1, doc="share of the data held out by ``early_stopping``."
    )
    shuffle: bool = param(
        default=True,
        doc="shuffle the rows every epoch (and each ``partial_fit`` batch); ``False`` takes "
        "them in the order given every time, as scikit-learn's ``shuffle=False``.",
    )
    random_state: Any = param(
        default=None,
        doc="seed of initialisation, shuffling and the validation split (an int gives the "
        "same model on every backend and worker count); None draws one.",
    )
    backend: str = param(
        default="auto",
        doc='``"auto"``, ``"inline"``, ``"thread"`` or another backend name; see '
        ':mod:`asynctrain.sklearn` for what ``"auto"`` picks.',
    )
    workers: int | None = param(
        default=None,
        doc="workers of a thread or process backend; None: the cores, or 1 inside a joblib worker.",
    )
    shards: int | str = param(
        default="auto", doc='shards per step; ``"auto"``: 1 for small steps, else 4.'
    )
    mode: str = param(
        default="sync",
        doc='the training mode: ``"sync"`` (bit-reproducible), or another mode name the '
        ":class:`~asynctrain.Trainer` accepts.",
    )
    dtype: Any = param(
        default=np.float32,
        doc="compute dtype of training, ``np.float32`` or ``np.float64``; predictions are "
        "computed in the dtype of their input (float32 or float64).",
    )


CLASS_WEIGHT = (
    'weights of the classes: ``"balanced"`` (``n_samples / (n_classes * '
    "np.bincount(y))``, with sums of ``sample_weight`` for counts when given, as in "
    "scikit-learn), a dict ``{label: weight}`` (labels left out weigh 1), or None. "
    "Multiplies ``sample_weight``; ``partial_fit`` takes a dict only."
)


LINEAR_ALPHA = (
    "L2 penalty: the loss minimised is the mean loss plus ``0.5 * alpha * ||coef_||**2`` "
    "(the intercept is not penalised). scikit-learn's ``LogisticRegression(C=C)`` on n "
    "samples is ``alpha=1/(C*n)``."
)


@hyperparameters
class LinearParams(TrainingParams):
    """The linear estimators': an L2 penalty, and a larger step than the MLPs'."""

    alpha: float = param(default=1e-4, doc=LINEAR_ALPHA)
    learning_rate: float = param(default=1e-2, doc=STEP_SIZE)


@hyperparameters
class MLPParams(TrainingParams):
    """The MLPs': the layers, their activation and scikit-learn's MLP penalty."""

    hidden_layer_sizes: Any = param(
        default=(100,),
        doc="widths of the hidden layers, e.g. ``(100,)`` or ``(64, 32)``.",
        kw_only=False,
    )
    activation: str = param(default="relu", doc='``"relu"`` or ``"tanh"``.')
    alpha: float = param(
        default=1e-4,
        doc="L2 penalty on the weights (not the biases), as in scikit-learn's MLPs: "
        "``0.5 * alpha * sum(W**2) / batch_size`` is added to a batch's mean loss.",
    )


def args_doc(cls: type) -> str:
    """The ``Args:`` section of ``cls``'s docstring, from its fields (each with its
    default): its own first, then the shared ones in :class:`TrainingParams` order."""
    shared = [field.name for field in dataclasses.fields(TrainingParams)]
    fields = sorted(
        dataclasses.fields(cls),
        key=lambda f: (f.name in shared, shared.index(f.name) if f.name in shared else 0),
    )
    lines = [
        textwrap.fill(
            f"{field.name}: {field.metadata[_DOC]} Default: ``{_shown(field.default)}``.",
            width=88,
            initial_indent=" " * 8,
            subsequent_indent=" " * 12,
            break_on_hyphens=False,
        )
        for field in fields
    ]
    return "\n    Args:\n" + "\n".join(lines) + "\n"


def _shown(default: object) -> str:
    """A default as code: ``np.float32`` for a dtype, else its repr."""
    return f"np.{default.__name__}" if isinstance(default, type) else repr(default)


FITTED = """
    Attributes:
        params_: the asynctrain parameters (``model_.predict(params_, X)`` works too).
        model_: the :mod:`asynctrain.models` model that was trained.
        optimizer_state_: optimizer state carried between ``partial_fit`` calls.
        plan_: the ``(backend, workers, shards)`` the last fit or ``partial_fit`` used.
        n_iter_: epochs trained (summed over ``partial_fit`` calls).
        t_: training samples seen.
        loss_curve_: training loss of each epoch.
        validation_loss_curve_: validation loss of each epoch (``early_stopping`` only).
        validation_scores_: validation accuracy of each epoch (classifiers with
            ``early_stopping`` only).
        n_features_in_, feature_names_in_: as in scikit-learn.
"""
