"""Seeded synthetic classification problems: the reference workloads of the benchmarks.

Each problem draws ``X ~ N(0, I)`` in float32 and labels it with a fixed random
*teacher*: the class whose teacher logit is largest. Draws whose two largest teacher
logits differ by less than a margin are redrawn, so that the clean labels have a margin
and a good model can reach the noise ceiling. Then exactly ``round(label_noise * n)``
labels, chosen at random, are changed to a different class (uniformly among the
others): a perfect model is right on ``1 - label_noise`` of the samples.

The teacher depends only on the problem name; ``seed`` picks the samples and the noise.
So ``synthetic(name, seed=1)`` is a fresh sample of the same problem, e.g. a test set
for a model trained on ``seed=0``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_choice, check_int
from asynctrain._types import DEFAULT_DTYPE
from asynctrain.data._dataset import Dataset
from asynctrain.data._shared import empty
from asynctrain.data._validate import resolve_dtype

Teacher = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]

_CHUNK_ROWS = 65_536
_TEACHER_STREAM = 0x7EAC  # spawn key of the teachers' random streams (not seeded by users)
_SAMPLE_STREAM = 0x5A3E  # spawn key of the samples' random streams
_HIDDEN = 64


class ProblemInfo(NamedTuple):
    """What one synthetic problem is: sizes, default length and label noise.

    Example:
        >>> PROBLEMS["softmax"].n_classes
        10
    """

    n_features: int
    n_classes: int
    default_n: int
    label_noise: float
    """Exact fraction of labels changed to a wrong class; accuracy ceiling = 1 - this."""
    description: str


PROBLEMS: Mapping[str, ProblemInfo] = MappingProxyType(
    {
        "logreg": ProblemInfo(
            64, 2, 1_000_000, 0.05, "binary logistic regression: sign of a random linear teacher"
        ),
        "softmax": ProblemInfo(
            128, 10, 200_000, 0.05, "softmax regression: argmax of a random linear teacher"
        ),
        "mlp": ProblemInfo(
            128, 10, 200_000, 0.05, "argmax of a random 128-64-10 ReLU network teacher"
        ),
    }
)
"""Read-only mapping from problem name to :class:`ProblemInfo`."""

# Minimum gap between the two largest teacher logits; redraws ~20 % (logreg),
# ~34 % (softmax) and ~30 % (mlp) of candidate samples.
_MARGINS = {"logreg": 0.25, "softmax": 0.25, "mlp": 0.13}


def synthetic(
    name: str, *, n: int | None = None, seed: int = 0, dtype: npt.DTypeLike = np.float32
) -> Dataset:
    """Generate one of the seeded reference problems listed in :data:`PROBLEMS`.

    ``"logreg"`` (64 features, 2 classes), ``"softmax"`` (128 features, 10 classes,
    linear teacher) and ``"mlp"`` (128 features, 10 classes, 128-64-10 ReLU teacher: a
    linear model stays well below what an MLP reaches). Vectorised and float32
    throughout: the default 1,000,000 x 64 ``"logreg"`` takes about a second.

    Args:
        name: a key of :data:`PROBLEMS`.
        n: number of samples (>= 2); None for the problem's ``default_n``.
        seed: non-negative seed; the same ``(name, n, seed)`` gives bit-identical data.
        dtype: feature dtype, ``np.float32`` or ``np.float64`` (float64 holds the same
            values as float32, upcast).

    Returns:
        A Dataset with int64 labels in ``0 .. n_classes - 1``, generated straight into
        shared memory when large (see :meth:`Dataset.to_shared`).

    Raises:
        ConfigError: unknown ``name`` (the message lists the problems), ``n < 2``,
            negative ``seed`` or a ``dtype`` other than float32/float64.
        ConfigTypeError: ``n`` or ``seed`` is not an int.

    Example:
        >>> ds = synthetic("softmax", n=1000, seed=0)
        >>> ds.X.shape, int(ds.y.max())
        ((1000, 128), 9)
    """
    info = PROBLEMS[check_choice("name", name, tuple(PROBLEMS))]
    n = info.default_n if n is None else check_int("n", n, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    target = resolve_dtype(dtype) or DEFAULT_DTYPE
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SAMPLE_STREAM,)))
    X = empty((n, info.n_features), target)  # float32 draws, upcast exactly for float64
    y = empty((n,), np.int64)
    _draw(rng, X, y, _teacher(name), _MARGINS[name])
    _add_label_noise(rng, y, info.n_classes, info.label_noise)
    return Dataset._trusted(X, y)


def _draw(
    rng: np.random.Generator,
    X: npt.NDArray[np.floating[Any]],
    y: npt.NDArray[np.int64],
    teacher: Teacher,
    margin: float,
) -> None:
    """Fill the rows of ``X`` and ``y`` with candidates whose top-two teacher logits
    differ by ``margin``."""
    n, n_features = X.shape
    rows, filled = min(_CHUNK_ROWS, 2 * n + 16), 0
    while filled < n:
        candidates = rng.standard_normal((rows, n_features), dtype=np.float32)
        logits = teacher(candidates)
        top_two = np.partition(logits, -2, axis=1)[:, -2:]
        keep = np.flatnonzero(top_two[:, 1] - top_two[:, 0] >= margin)[: n - filled]
        X[filled : filled + len(keep)] = candidates[keep]
        y[filled : filled + len(keep)] = np.argmax(logits[keep], axis=1)
        filled += len(keep)


def _add_label_noise(
    rng: np.random.Generator, y: npt.NDArray[np.int64], n_classes: int, fraction: float
) -> None:
    """Move exactly ``round(fraction * len(y))`` labels to a different class, in place."""
    chosen = rng.choice(len(y), size=round(fraction * len(y)), replace=False)
    y[chosen] = (y[chosen] + rng.integers(1, n_classes, size=len(chosen))) % n_classes


def _teacher(name: str) -> Teacher:
    """Return the fixed teacher of problem ``name``: features -> (rows, classes) logits."""
    index = tuple(PROBLEMS).index(name)
    rng = np.random.default_rng(np.random.SeedSequence(index, spawn_key=(_TEACHER_STREAM,)))
    info = PROBLEMS[name]
    if name == "mlp":
        return _relu_teacher(rng, info.n_features, info.n_classes)
    weights = _unit_columns(rng, info.n_features, info.n_classes)
    if info.n_classes == 2:  # one direction w: logits (-w.x / 2, w.x / 2), gap |w.x|
        weights = np.concatenate([-weights[:, :1], weights[:, :1]], axis=1) * np.float32(0.5)
    return lambda X: X @ weights


def _relu_teacher(rng: np.random.Generator, n_features: int, n_classes: int) -> Teacher:
    hidden_w = _unit_columns(rng, n_features, _HIDDEN)
    out_w = _unit_columns(rng, _HIDDEN, n_classes)
    # Each hidden unit is relu(z) with z ~ N(0, 1), whose mean is 1/sqrt(2 pi); removing
    # it from the logits keeps the classes about equally frequent.
    out_b = (-out_w.sum(axis=0) / np.sqrt(2 * np.pi)).astype(np.float32)
    return lambda X: np.maximum(X @ hidden_w, 0) @ out_w + out_b


def _unit_columns(rng: np.random.Generator, rows: int, cols: int) -> npt.NDArray[np.float32]:
    weights = rng.standard_normal((rows, cols))
    unit: npt.NDArray[np.float32] = (weights / np.linalg.norm(weights, axis=0)).astype(np.float32)
    return unit
