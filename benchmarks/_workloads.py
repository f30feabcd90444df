"""The reference workloads as asynctrain runs them: model, optimizer, one timed epoch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from asynctrain import TrainConfig, Trainer, models, optim
from asynctrain.backends import Backend, get_backend
from asynctrain.data import PROBLEMS, Dataset
from benchmarks._figure import Figure

PROBLEM_NAMES = tuple(PROBLEMS)
# A Trainer's defaults, read from the public settings so the benchmarks follow them.
DEFAULT_BATCH_SIZE = TrainConfig().batch_size
DEFAULT_SHARDS = TrainConfig().shards


async def per_problem(
    figures_of: Callable[[str, bool], Awaitable[list[Figure]]], quick: bool
) -> list[Figure]:
    """The figures of ``figures_of(problem, quick)`` for every reference problem, in order."""
    figures: list[Figure] = []
    for problem in PROBLEM_NAMES:
        figures += await figures_of(problem, quick)
    return figures


MLP_HIDDEN = 256
LEARNING_RATE = 1e-3
WARM_UP_ROWS = 4096  # a few steps: enough to start the workers and import what tasks need


def head(data: Dataset, rows: int = WARM_UP_ROWS) -> Dataset:
    """The first ``rows`` samples of ``data``: what a warm-up fit trains on.

    Every fit shares its data with the backend anew, so a warm-up needs no more than a few
    steps to start the workers and import what their tasks need.
    """
    return data if len(data) <= rows else Dataset(data.X[:rows], data.y[:rows])


def model_for(problem: str) -> Any:
    """The model each reference problem is benchmarked with (the MLP is 128-256-10)."""
    info = PROBLEMS[problem]
    if problem == "logreg":
        return models.LogisticRegression(info.n_features)
    if problem == "softmax":
        return models.SoftmaxRegression(info.n_features, info.n_classes)
    # PyTorch's nn.Linear init, as in the PyTorch peer: the race compares the same model.
    return models.MLP((info.n_features, MLP_HIDDEN, info.n_classes), initializer="uniform")


def initial_params(problem: str, seed: int = 0) -> dict[str, Any]:
    """The parameters a Trainer with ``seed`` starts from."""
    return dict(model_for(problem).init(np.random.default_rng(seed)))


def backend_available(name: str) -> str:
    """``""`` if backend ``name`` can be created here, else why not."""
    try:
        get_backend(name, workers=1)
    except ImportError as exc:
        return f"backend {name!r} is not available: {exc}"
    except Exception as exc:
        return f"backend {name!r} cannot start: {type(exc).__name__}: {exc}"
    return ""


async def timed_epochs(
    problem: str,
    data: Dataset,
    *,
    backend: str | Backend = "inline",
    workers: int | None = None,
    shards: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    epochs: int = 1,
) -> tuple[float, dict[str, Any]]:
    """Seconds of ``epochs`` epochs of ``fit`` (backend already open) and the final params."""
    trainer = Trainer(
        model_for(problem),
        optim.adam(LEARNING_RATE),
        backend=backend,
        workers=workers,
        shards=shards,
        batch_size=batch_size,
    )
    async with trainer:
        await asyncio.sleep(0)
        started = time.perf_counter()
        result = await trainer.fit(data, epochs=epochs)
        return time.perf_counter() - started, dict(result.params)
