"""One fit as plain data (:class:`Job`) and the coroutine that runs it on a fresh Trainer."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from asynctrain import optim
from asynctrain._events import Callback, EpochEvent, FitResult
from asynctrain._trainer import Trainer
from asynctrain._types import Params
from asynctrain.data import Dataset
from asynctrain.models import Model
from asynctrain.sklearn._policy import ONE_BLAS_THREAD, Plan


@dataclass(frozen=True)
class Job:
    """Everything one fit needs, built and checked before any training starts.

    Attributes:
        model: what the trainer trains (for ``partial_fit``, resumed from the last state).
        trained: the plain model, kept as the estimator's ``model_``.
        patience: epochs without improvement by ``tol`` before stopping; None never
            stops early (``partial_fit``'s single epoch).
        monitor: what ``patience`` watches: ``"loss"`` (training), or with validation data
            ``"val_accuracy"`` (classifiers) or ``"val_loss"``.
        shuffle: the trainer's ``shuffle``: ``"global"``, or ``"none"`` for the
            estimator's ``shuffle=False``.
        attrs: fitted attributes found while validating (``n_features_in_``, ``classes_``).
    """

    data: Dataset
    validation: Dataset | None
    model: Model
    trained: Model
    optimizer: optim.GradientTransformation
    plan: Plan
    batch_size: int
    seed: int
    epochs: int
    mode: str
    shuffle: str
    patience: int | None
    monitor: str
    tol: float
    resume: bool
    attrs: dict[str, Any] = field(default_factory=dict)


class Trained(NamedTuple):
    """What a fit produced: its result, final (or best) parameters and optimizer state."""

    result: FitResult
    params: Params
    opt_state: Any
    plan: Plan


async def train(job: Job) -> Trained:
    """Run ``job`` on a fresh :class:`~asynctrain.Trainer`, closed before returning."""
    trainer = Trainer(
        job.model,
        job.optimizer,
        backend=job.plan.backend,
        workers=job.plan.workers,
        shards=job.plan.shards,
        batch_size=job.batch_size,
        seed=job.seed,
        mode=job.mode,
        shuffle=job.shuffle,
    )
    stopper = None
    if job.patience is not None:
        stopper = _Stopper(trainer, patience=job.patience, tol=job.tol, monitor=job.monitor)
    inline = job.plan.backend == "inline"
    with ONE_BLAS_THREAD.held() if inline else contextlib.nullcontext():
        async with trainer:
            result = await trainer.fit(
                job.data,
                epochs=job.epochs,
                validation=job.validation,
                callbacks=() if stopper is None else (stopper,),
            )
    best = None if stopper is None else stopper.best_params
    return Trained(
        result,
        trainer.params if best is None else best,
        trainer.state.opt_state,
        job.plan._replace(workers=trainer.workers),
    )


class _Stopper(Callback):
    """scikit-learn's MLP stopping rule, keeping the parameters of the best epoch.

    An epoch counts as stale unless the monitored value beats the best so far by more
    than ``tol``; training stops after more than ``patience`` stale epochs in a row. Any
    improvement, however small, moves the best, so slow steady progress stops too (where
    :class:`~asynctrain.EarlyStopping` moves its best only by ``min_delta`` steps). With
    a validation metric, the parameters of its best epoch are kept: they are
    copy-on-write, so keeping a version costs a reference.
    """

    def __init__(self, trainer: Trainer, *, patience: int, tol: float, monitor: str) -> None:
        self.patience, self.tol, self.monitor = patience, tol, monitor
        self._trainer = trainer
        self._sign = -1.0 if monitor == "val_accuracy" else 1.0
        self._best = math.inf
        self._stale = 0
        self.best_params: Params | None = None

    def on_epoch(self, event: EpochEvent) -> bool:
        value = self._sign * getattr(event, self.monitor)
        self._stale = self._stale + 1 if value > self._best - self.tol else 0
        if value < self._best:
            self._best = value
            if self.monitor != "loss":
                self.best_params = self._trainer.params
        return self._stale > self.patience
