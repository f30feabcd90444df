"""Docstring fragments shared by the estimators' class docstrings (one source of truth)."""

from __future__ import annotations

LINEAR_ALPHA = """
    Args:
        alpha: L2 penalty: the loss minimised is the mean loss plus
            ``0.5 * alpha * ||coef_||**2`` (the intercept is not penalised).
            scikit-learn's ``LogisticRegression(C=C)`` on n samples is ``alpha=1/(C*n)``."""

MLP_ARGS = """
    Args:
        hidden_layer_sizes: widths of the hidden layers, e.g. ``(100,)`` or ``(64, 32)``.
        activation: ``"relu"`` or ``"tanh"``.
        alpha: L2 penalty on the weights (not the biases), as in scikit-learn's MLPs:
            ``0.5 * alpha * sum(W**2) / batch_size`` is added to a batch's mean loss."""

TRAINING_ARGS = """
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"`` or ``"adagrad"``.
        learning_rate: the optimizer's step size.
        batch_size: rows per step; ``"auto"`` is ``min(200, n_samples)`` for the MLPs
            (as in scikit-learn) and about a tenth of the data for the linear models
            (16 to 200 rows), so an epoch of small data still takes several steps.
        max_iter: most epochs of :meth:`fit`.
        tol, n_iter_no_change: :meth:`fit` stops once the monitored value has not beaten
            its best by ``tol`` for more than ``n_iter_no_change`` epochs in a row, as
            scikit-learn's MLPs do (``ConvergenceWarning`` if ``max_iter`` comes first).
        early_stopping: monitor a held-out ``validation_fraction`` of the data
            (stratified for classifiers) instead of the training loss: its accuracy for a
            classifier, its loss for a regressor; keep the parameters of its best epoch.
        validation_fraction: share of the data held out by ``early_stopping``.
        random_state: seed of initialisation, shuffling and the validation split (an int
            gives the same model on every backend and worker count); None draws one.
        backend: ``"auto"``, ``"inline"``, ``"thread"`` or another backend name; see
            :mod:`asynctrain.sklearn` for what ``"auto"`` picks.
        workers: workers of a thread or process backend; None: the cores, or 1 inside a
            joblib worker.
        shards: shards per step; ``"auto"``: 1 for small steps, else 4.
        mode: the training mode: ``"sync"`` (bit-reproducible), or another mode name
            the :class:`~asynctrain.Trainer` accepts.
        dtype: compute dtype of training, ``np.float32`` or ``np.float64``; predictions
            are computed in the dtype of their input (float32 or float64).
"""

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


def linear_doc(doc: str | None) -> str:
    """Fill ``{args}`` and ``{fitted}`` of a linear estimator's docstring."""
    return (doc or "").format(args=LINEAR_ALPHA + TRAINING_ARGS, fitted=FITTED)


def mlp_doc(doc: str | None) -> str:
    """Fill ``{args}`` and ``{fitted}`` of an MLP estimator's docstring."""
    return (doc or "").format(args=MLP_ARGS + TRAINING_ARGS, fitted=FITTED)
