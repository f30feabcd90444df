"""asynctrain.fit: the one-call form of a Trainer fit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asynctrain._checkpoint import PathLike
from asynctrain._checkpoint._session import Resume
from asynctrain._events import Callback, FitResult
from asynctrain._inputs import ClassWeight
from asynctrain._trainer import DataLike, Trainer
from asynctrain.backends import Backend
from asynctrain.models import Model
from asynctrain.optim import GradientTransformation


async def fit(
    model: Model,
    data: DataLike,
    *,
    optimizer: GradientTransformation | None = None,
    epochs: int = 1,
    backend: str | Backend = "thread",
    validation: DataLike | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: PathLike | None = None,
    checkpoint_every: int | None = None,
    keep: int | None = 3,
    resume: Resume = False,
    monitor_lag: bool = False,
    metrics: Sequence[str] = (),
    class_weight: ClassWeight = None,
    **options: Any,
) -> FitResult:
    """Train ``model`` on ``data`` with a fresh :class:`~asynctrain.Trainer` and close it.

    ``options`` are the Trainer's other keyword arguments (``workers``, ``shards``,
    ``batch_size``, ``seed``, ``nonfinite``, ``shuffle``, ``mode``, ``local_steps``,
    ``staleness``);
    ``monitor_lag``, ``metrics``, ``class_weight`` and the checkpoint arguments are
    :meth:`Trainer.fit`'s; ``data`` may carry sample weights (a weighted Dataset or an
    ``(X, y, sample_weight)`` triple).

    Example:
        >>> import asynctrain as at
        >>> data = at.data.synthetic("logreg", n=4000)
        >>> model = at.models.LogisticRegression(64)
        >>> result = at.run(at.fit(model, data, optimizer=at.optim.adam(1e-2), backend="inline"))
        >>> result.steps
        8
    """
    async with Trainer(model, optimizer, backend=backend, **options) as trainer:
        return await trainer.fit(
            data,
            epochs=epochs,
            validation=validation,
            callbacks=callbacks,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            keep=keep,
            resume=resume,
            monitor_lag=monitor_lag,
            metrics=metrics,
            class_weight=class_weight,
        )
