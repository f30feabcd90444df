"""What the PyTorch and JAX bridges share: loss names, what a loss says about the
outputs, row shapes, numpy views, and the seed of a shard's randomness.

Everything here is plain Python and numpy; the frameworks themselves are imported only
by :mod:`._torch` and :mod:`._jax`, and only when a bridge is built.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_int
from asynctrain._exceptions import ConfigError, ConfigTypeError

LOSSES = ("cross_entropy", "binary_cross_entropy", "mse", "huber")
"""The loss names both bridges accept (or pass a callable ``(outputs, y) -> (n,) losses``)."""

PROBE_ROWS = 2  # rows of zeros a bridge runs at construction to learn its output shape


def import_framework(name: str, extra: str) -> ModuleType:
    """Import ``name`` (torch, jax) or raise ImportError naming the extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"this model needs {name}: pip install 'asynctrain[{extra}]'") from exc


def single_threaded_xla() -> None:
    """Ask XLA for one CPU thread per process, if JAX is not loaded yet.

    Like BLAS threads (one per worker), so workers × threads stay within the cores and a
    result never depends on how many threads split a reduction.
    """
    if "jax" in sys.modules:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        extra = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()


def check_loss(loss: object) -> str | Callable[..., Any]:
    """Return a known loss name or a callable; raise naming the choices otherwise."""
    if callable(loss):
        return loss
    if not isinstance(loss, str):
        raise ConfigTypeError(
            f"loss must be one of {LOSSES} or a callable (outputs, y) -> per-sample losses, "
            f"got {loss!r}"
        )
    if loss not in LOSSES:
        raise ConfigError(
            f"unknown loss {loss!r}; pass one of {', '.join(map(repr, LOSSES))} or a "
            "callable (outputs, y) -> per-sample losses of shape (n,)"
        )
    return loss


def check_input_shape(input_shape: object) -> tuple[int, ...]:
    """Return ``input_shape`` as a tuple of positive ints (the shape of one row)."""
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, str) or not input_shape:
        raise ConfigTypeError(
            f"input_shape must be the shape of one row, such as (64,) or (1, 8, 8), "
            f"got {input_shape!r}"
        )
    return tuple(check_int(f"input_shape[{i}]", size) for i, size in enumerate(input_shape))


class Head(NamedTuple):
    """What a model's outputs and loss make of it: classes, outputs, prediction kind."""

    n_classes: int | None
    n_outputs: int
    kind: str  # "softmax" (argmax of K scores), "sigmoid" (one logit), or "values"


def head_of(loss: str | Callable[..., Any], shape: tuple[int, ...], n_classes: int | None) -> Head:
    """Read the head from the outputs' ``shape`` for ``PROBE_ROWS`` rows.

    Raises:
        ConfigError: the outputs do not suit the loss (cross-entropy needs ``(n, K)``
            scores with K >= 2, binary cross-entropy one logit per row), or ``n_classes``
            contradicts them.
    """
    per_row = shape[1:]
    width = math.prod(per_row)
    if loss == "cross_entropy":
        if len(per_row) != 1 or width < 2:
            raise ConfigError(
                f"loss='cross_entropy' needs outputs of shape (n, n_classes) with n_classes "
                f">= 2; the model gives {_rows(shape)}: end it with a layer of one output "
                "per class, or use loss='binary_cross_entropy' for one logit"
            )
        return Head(_agree(n_classes, width), width, "softmax")
    if loss == "binary_cross_entropy":
        if width != 1 or len(per_row) > 1:
            raise ConfigError(
                f"loss='binary_cross_entropy' needs one logit per row, (n,) or (n, 1); the "
                f"model gives {_rows(shape)}: use loss='cross_entropy' for several classes"
            )
        return Head(_agree(n_classes, 2), 1, "sigmoid")
    if not callable(loss):  # mse, huber
        if n_classes is not None:
            raise ConfigError(
                f"loss={loss!r} is a regression loss, but n_classes={n_classes} was given; "
                "drop n_classes or use loss='cross_entropy'"
            )
        return Head(None, width, "values")
    if n_classes is None:
        return Head(None, width, "values")
    n_classes = check_int("n_classes", n_classes, minimum=2)
    # predict and predict_proba read the outputs as one logit (two classes) or one score
    # per class: other outputs would give probabilities of another width than n_classes
    if width == 1 and len(per_row) <= 1 and n_classes == 2:
        return Head(n_classes, 1, "sigmoid")
    if len(per_row) != 1 or width != n_classes:
        raise ConfigError(
            f"n_classes={n_classes} with a callable loss needs outputs of shape (n, "
            f"{n_classes}), one score per class (or one logit per row for n_classes=2); "
            f"the model gives {_rows(shape)}: change its last layer or n_classes"
        )
    return Head(n_classes, width, "softmax")


def _agree(given: int | None, found: int) -> int:
    if given is None:
        return found
    given = check_int("n_classes", given, minimum=2)
    if given != found:
        raise ConfigError(
            f"n_classes={given} but the model's outputs give {found} classes; "
            f"drop n_classes or pass n_classes={found}"
        )
    return given


def _rows(shape: tuple[int, ...]) -> str:
    return str(("n", *shape[1:])).replace("'", "")


def probe_targets(head: Head, rows: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Targets of the right kind for ``rows`` probe rows: labels 0, or zeros."""
    if head.n_classes is not None:
        return np.zeros(rows, np.int64)
    return np.zeros(rows if head.n_outputs == 1 else (rows, head.n_outputs), dtype)


def check_loss_shape(shape: tuple[int, ...], rows: int) -> None:
    """Raise unless a callable loss returned one loss per row."""
    if shape != (rows,):
        square = len(shape) == 2 and shape[0] == shape[1] == rows
        hint = (
            "; if the outputs are (n, 1) and the targets (n,), they broadcast to (n, n): "
            "reshape one like the other, e.g. outputs[:, 0] - targets"
            if square
            else ""
        )
        raise ConfigError(
            f"the loss function must return per-sample losses of shape ({rows},) for {rows} "
            f"rows, got shape {shape}; reduce over every axis but the first (no mean or sum "
            f"over rows: the model sums, so shards add up){hint}"
        )


def writable(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A writable view of ``array`` (frameworks warn on read-only memory); a copy only
    when its memory is truly read-only (a read-only file map).

    The frameworks never write to it: it is only read by the forward pass.
    """
    if array.flags.writeable:
        return array
    view = array.view()
    try:
        view.flags.writeable = True
    except ValueError:
        return array.copy()
    return view


def shard_seed(key: tuple[int, ...]) -> int:
    """A 63-bit seed for the randomness of ``key = (seed, step, shard)`` (an extra part
    tells apart streams of one shard)."""
    state = np.random.SeedSequence([int(part) for part in key]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class Bridge:
    """What TorchModel and JaxModel share: their shape attributes and predictions.

    A subclass sets ``input_shape``, ``dtype`` and ``_head`` and defines ``_outputs(params,
    X)``, the model's raw outputs as a numpy array (no gradient, eval mode).
    """

    input_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    _head: Head

    @property
    def n_features(self) -> int:
        """Values per row: the product of ``input_shape``."""
        return math.prod(self.input_shape)

    @property
    def n_classes(self) -> int | None:
        """The number of classes, or None for regression."""
        return self._head.n_classes

    @property
    def n_outputs(self) -> int:
        """Output values per row (1 for one logit or one regression target)."""
        return self._head.n_outputs

    def predict(self, params: dict[str, npt.NDArray[Any]], X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return int64 labels (classifiers) or regression values in ``dtype``: (n,) for one
        output, else (n, n_outputs)."""
        return predictions(self._outputs(params, X), self._head)

    def predict_proba(
        self, params: dict[str, npt.NDArray[Any]], X: npt.NDArray[Any]
    ) -> npt.NDArray[Any]:
        """Return (n, n_classes) probabilities (softmax, or ``[1 - p, p]`` for one logit).

        Raises:
            ConfigError: a regression model.
        """
        if self._head.n_classes is None:
            raise ConfigError(
                f"predict_proba needs a classifier; this {type(self).__name__} regresses"
            )
        return probabilities(self._outputs(params, X), self._head, self.dtype)

    def _outputs(
        self, params: dict[str, npt.NDArray[Any]], X: npt.NDArray[Any]
    ) -> npt.NDArray[Any]:
        raise NotImplementedError


def predictions(outputs: npt.NDArray[Any], head: Head) -> npt.NDArray[Any]:
    """int64 labels of a classifier's outputs, or regression values: (n,) for one output,
    else (n, n_outputs)."""
    rows = outputs.shape[0]
    if head.kind == "softmax":
        labels: npt.NDArray[Any] = outputs.argmax(axis=1).astype(np.int64)
        return labels
    if head.kind == "sigmoid":
        return (outputs.reshape(rows) > 0).astype(np.int64)
    return outputs.reshape(rows) if head.n_outputs == 1 else outputs.reshape(rows, -1)


def probabilities(outputs: npt.NDArray[Any], head: Head, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """(n, n_classes) probabilities in ``dtype``: softmax of the scores, or ``[1 - p, p]``
    for one logit; computed in float64.

    For one logit ``z``, ``p = exp(-softplus(-z))`` and ``1 - p = exp(-softplus(z))``:
    no ``exp`` of a large value (``1 / (1 + exp(-z))`` overflowed, with a RuntimeWarning,
    for ``z < -709``), and ``1 - p`` keeps its precision when ``p`` is near 1.
    """
    scores = outputs.astype(np.float64)
    if head.kind == "sigmoid":
        z = scores.reshape(len(scores))
        p = np.exp(-np.logaddexp(0.0, -z))
        return np.stack([np.exp(-np.logaddexp(0.0, z)), p], axis=1).astype(dtype)
    scores -= scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    return scores.astype(dtype)


def qualified_name(obj: object) -> str:
    """``module.QualName`` of a class or function, for checkpoints and reprs."""
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
