"""Numerics shared by the built-in models: dtype checks, stable losses, the L2 penalty.

Functions whose names end in ``_`` overwrite their first argument; callers pass only
arrays they created themselves (logits, residuals), never the caller's params or data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain._sparse import as_csr, check_indices, indices_checked, is_sparse, matmul, rmatmul
from asynctrain._types import Grads, Params

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(value: object) -> np.dtype[Any]:
    """Return ``value`` as a numpy dtype if it is float32 or float64.

    Raises:
        ConfigTypeError: ``value`` is not something numpy reads as a dtype.
        ConfigError: ``value`` is a dtype other than float32 or float64.
    """
    if value is None or isinstance(value, bool):
        raise ConfigTypeError(f"dtype must be np.float32 or np.float64, got {value!r}")
    try:
        dtype: np.dtype[Any] = np.dtype(value)  # type: ignore[call-overload]
    except TypeError as exc:
        raise ConfigTypeError(
            f"dtype must be np.float32 or np.float64, got {value!r}; pass dtype=np.float32"
        ) from exc
    if dtype not in _FLOAT_DTYPES:
        raise ConfigError(
            f"dtype must be float32 or float64, got {dtype}; pass dtype=np.float32 (default) "
            "or dtype=np.float64"
        )
    return dtype


def set_fields(obj: object, **values: object) -> None:
    """Set attributes on a frozen dataclass from inside its ``__init__``."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def as_input(X: npt.ArrayLike, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Return ``X`` as an array of ``dtype``, copying only when its dtype differs.

    A scipy.sparse ``X`` stays sparse: CSR of ``dtype`` (see :mod:`asynctrain._sparse`),
    which the models multiply as it is (``X @ W``, ``X.T @ delta``: dense results). Its
    index arrays are checked first (one min and max over them, less than the product
    reads): scipy's products read past the end for an index out of range, and a model
    called directly (``model.predict(params, X)``) has no Dataset that checked them. The
    rows a fit gathers from its Dataset's checked matrix are not checked again.

    Raises:
        DataError: a sparse ``X``'s index arrays do not fit its shape.
    """
    if not isinstance(X, np.ndarray) and is_sparse(X):  # an array is never sparse
        if not indices_checked(X):  # a fit's shards were checked with their Dataset
            check_indices("X", X)  # before as_csr: converting a corrupt CSC crashes
        csr: npt.NDArray[Any] = as_csr("X", X, dtype)
        return csr
    return np.asarray(X, dtype=dtype)


def as_labels(y: npt.ArrayLike) -> npt.NDArray[Any]:
    """Return class labels usable as indices (whole-number floats become ``intp``)."""
    labels = np.asarray(y)
    if labels.dtype.kind in "iu":
        return labels
    return labels.astype(np.intp)


def argmax_rows(scores: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Return the int64 index of the largest score in each row."""
    labels: npt.NDArray[np.int64] = scores.argmax(axis=1).astype(np.int64, copy=False)
    return labels


def as_weights(weight: npt.ArrayLike | None, dtype: np.dtype[Any]) -> npt.NDArray[Any] | None:
    """Row weights as a 1-D array of ``dtype`` (no copy when they already are), or None."""
    return None if weight is None else np.asarray(weight, dtype=dtype).reshape(-1)


def weight_total(weight: npt.NDArray[Any] | None, n: int) -> float:
    """The sum of the row weights (``n`` without weights): what the L2 penalty is charged on."""
    return n if weight is None else float(weight.sum(dtype=np.float64))


def weigh_rows_(delta: npt.NDArray[Any], weight: npt.NDArray[Any] | None) -> None:
    """Multiply each row of ``delta`` by its weight, in place (nothing without weights)."""
    if weight is not None:
        delta *= weight.reshape(-1, *([1] * (delta.ndim - 1)))


def squared_error_(
    residual: npt.NDArray[Any], y: npt.ArrayLike, weight: npt.NDArray[Any] | None = None
) -> float:
    """Turn predictions into ``d loss / d prediction`` in place; return the summed loss.

    The loss of a row is ``sum((prediction - y) ** 2)``, so its gradient is twice the
    residual; with ``weight``, each row's loss and gradient are multiplied by its weight.
    ``y`` may be (n,) when the predictions are (n, 1).
    """
    residual -= np.asarray(y).reshape(residual.shape)
    if weight is None:
        loss = float(np.vdot(residual, residual))
    else:
        per_row = np.square(residual).reshape(len(residual), -1).sum(axis=1)
        loss = float(np.dot(weight, per_row))
    residual *= 2
    if weight is not None:
        weigh_rows_(residual, weight)
    return loss


def logistic_loss_(
    z: npt.NDArray[Any], y: npt.ArrayLike, weight: npt.NDArray[Any] | None = None
) -> float:
    """Turn logits into ``d loss / d logit`` in place; return the summed log-loss.

    With ``t = z`` for label 0 and ``t = -z`` for label 1, a row's loss is
    ``softplus(t)`` and its gradient ``±sigmoid(t)``; softplus is ``logaddexp(0, t)``
    and ``sigmoid(t) = exp(t - softplus(t))``, so nothing overflows for huge logits.
    With ``weight``, each row's loss and gradient are multiplied by its weight.
    """
    # Multiplying by a sign is exact (and keeps a zero's sign, as negating does); it is a
    # third of the time of np.negative(z, out=z, where=...), a masked loop, on 2,048 rows.
    sign = np.where(np.asarray(y) != 0, z.dtype.type(-1), z.dtype.type(1))
    z *= sign
    softplus = np.logaddexp(0, z)
    loss = float(softplus.sum() if weight is None else np.dot(weight, softplus))
    np.subtract(z, softplus, out=z)
    np.exp(z, out=z)
    z *= sign
    if weight is not None:
        weigh_rows_(z, weight)
    return loss


def sigmoid_(z: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Replace logits by their sigmoid in place and return them: ``exp(-log(1 + e^-z))``,
    which overflows nowhere and gives exactly 1 at ``+inf`` and 0 at ``-inf`` (the form
    ``exp(z - log(1 + e^z))`` made ``inf - inf``, NaN, of ``+inf``).

    Example:
        >>> sigmoid_(np.array([-np.inf, 0.0, np.inf])).tolist()
        [0.0, 0.5, 1.0]
    """
    np.negative(z, out=z)
    np.logaddexp(0, z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    return z


def softmax_(logits: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Replace (n, K) logits by row softmax in place; return the row sums before division."""
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    total: npt.NDArray[Any] = logits.sum(axis=1, keepdims=True)
    logits /= total
    return total


def softmax_xent_(
    logits: npt.NDArray[Any], y: npt.ArrayLike, weight: npt.NDArray[Any] | None = None
) -> float:
    """Turn (n, K) logits into ``softmax - onehot(y)`` in place; return the summed loss.

    The loss of a row is ``-log softmax(z)[y] = log(sum(exp(z - max))) - (z[y] - max)``;
    subtracting the row max first keeps every ``exp`` at most 1. With ``weight``, each
    row's loss and gradient are multiplied by its weight.
    """
    labels = as_labels(y)
    # Computed on a (K, n) copy: numpy reduces a thin (n, K) array along its rows about
    # ten times slower than along the columns of its transpose (max and sum of 2,048 x 10:
    # 150 us against 10), and the two transposing copies cost a few microseconds.
    scores = np.ascontiguousarray(logits.T)
    n = scores.shape[1]
    flat, label_at = scores.reshape(-1), labels * n + np.arange(n)  # flat indices of z[y]
    scores -= np.maximum.reduce(scores, axis=0)
    picked = flat[label_at]
    np.exp(scores, out=scores)
    total = np.add.reduce(scores, axis=0)
    if weight is None:
        loss = float(np.log(total).sum()) - float(picked.sum())
    else:
        loss = float(np.dot(weight, np.log(total) - picked))
    scores /= total
    flat[label_at] -= 1
    if weight is not None:
        scores *= weight
    np.copyto(logits, scores.T)
    return loss


def product(a: Any, b: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``a @ b`` as a new array; ``a`` may be CSR (its product is dense)."""
    result: npt.NDArray[Any] = a @ b if isinstance(a, np.ndarray) else matmul(a, b)
    return result


def t_product(a: Any, d: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``a.T @ d`` as a new array; ``a`` may be CSR (its product is dense)."""
    result: npt.NDArray[Any] = a.T @ d if isinstance(a, np.ndarray) else rmatmul(a, d)
    return result


def matmul_into(a: Any, b: npt.NDArray[Any], out: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Write ``a @ b`` to ``out`` and return it; ``a`` may be CSR (its product is dense)."""
    if isinstance(a, np.ndarray):
        return np.matmul(a, b, out=out)
    np.copyto(out, matmul(a, b))
    return out


def add_l2_(
    grads: Grads,
    params: Params,
    names: tuple[str, ...],
    l2: float,
    rows: int,
    weight: npt.NDArray[Any] | None = None,
) -> float:
    """Add ``n * l2 * W`` to the gradient of each named weight; return the penalty.

    The penalty is ``n * 0.5 * l2 * sum(W ** 2)``: charged per sample (``n`` is the row
    count ``rows``, or the sum of the row weights ``weight``; see :func:`weight_total`),
    so the sums of two shards add up to the sum of the whole batch.
    """
    if not l2:
        return 0.0
    scale = weight_total(weight, rows) * l2
    for name in names:
        grads[name] += scale * params[name]
    return _half_penalty(params, names, scale)


def l2_penalty(
    params: Params,
    names: tuple[str, ...],
    l2: float,
    rows: int,
    weight: npt.NDArray[Any] | None = None,
) -> float:
    """The penalty :func:`add_l2_` returns, without a gradient: ``n * 0.5 * l2 *
    sum(W ** 2)`` over the named weights."""
    if not l2:
        return 0.0
    return _half_penalty(params, names, weight_total(weight, rows) * l2)


def _half_penalty(params: Params, names: tuple[str, ...], scale: float) -> float:
    penalty = 0.0
    for name in names:
        penalty += float(np.vdot(params[name], params[name]))
    return 0.5 * scale * penalty
