"""Sample and class weights: their checks, and class weights turned into row weights.

A weight of ``k`` counts like ``k`` copies of its row: a step's gradient is the weighted
sum of its rows' gradients divided by the batch's sum of weights. Every function here
raises before any training work starts, with a message naming the value and the fix;
none modifies its input.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigError, ConfigTypeError, DataError, DataTypeError
from asynctrain.data._validate import plain

ClassWeight = str | Mapping[int, float] | None
"""``"balanced"``, ``{label: weight}`` or None (every class weighs 1)."""


def check_sample_weight(weight: npt.ArrayLike, n: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Return ``weight`` as a new 1-D array of ``n`` weights in ``dtype``.

    Raises:
        DataTypeError: the weights are not real numbers.
        DataError: the shape is not ``(n,)``, or a weight is negative, NaN or Inf, or
            every weight is zero; or the weights are out of scale for ``dtype``: their
            total overflows it, or every positive weight is below its smallest normal
            number (only the ratios of weights matter: rescale them).

    Example:
        >>> check_sample_weight([1, 2, 0], 3, np.dtype(np.float32))
        array([1., 2., 0.], dtype=float32)
    """
    if isinstance(weight, np.ma.MaskedArray):
        weight = plain("sample_weight", weight)
    try:
        values = np.asarray(weight)
    except (ValueError, TypeError) as exc:
        raise DataError(f"sample_weight is not a 1-D array of numbers ({exc})") from exc
    if values.dtype.kind not in "biuf":
        raise DataTypeError(
            f"sample_weight has dtype {values.dtype}; pass real numbers, e.g. "
            "np.asarray(sample_weight, dtype=np.float64)"
        )
    if values.shape != (n,):
        raise DataError(
            f"sample_weight has shape {values.shape} but the data has {n} rows; pass one "
            f"weight per row, shape ({n},)"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        converted = values.astype(dtype)  # always a copy: the caller's array stays theirs
    bad = ~np.isfinite(converted) | (converted < 0)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"sample_weight[{row}] = {values[row]} is "
            f"{'negative' if values[row] < 0 else 'not a finite weight for ' + str(dtype)}; "
            "weights must be finite and >= 0 (0 drops a row)"
        )
    if not converted.any():
        if values.any():  # positive weights that round to 0 in dtype
            _raise_scale(float(values.max()), dtype, f"rounds to 0 in {dtype}")
        raise DataError(
            "sample_weight is zero for every row, so there is nothing to train on; "
            "give at least one row a positive weight"
        )
    _check_scale(converted, dtype)
    return converted


def _check_scale(weights: npt.NDArray[Any], dtype: np.dtype[Any]) -> None:
    """Raise unless ``weights`` (finite, >= 0, some positive) can be summed in ``dtype``
    without overflow and hold a normal number: a step sums its rows' weights and weighted
    losses in the model's dtype, so a total beyond the largest finite value failed at the
    first step (a non-finite loss), and weights that are all subnormal trained nothing
    (their products with the losses and gradients round to 0). Any batch's total is at
    most the whole total, so it is checked once here."""
    info = np.finfo(dtype)
    largest = float(weights.max())
    if largest < info.tiny:
        _raise_scale(largest, dtype, f"is below the smallest normal {dtype} ({info.tiny:.4g})")
    total = float(weights.sum(dtype=np.float64))
    if total > float(info.max):
        raise DataError(
            f"sample_weight sums to {total:.4g}, beyond the largest {dtype} "
            f"({float(info.max):.4g}): a batch's weighted loss and sum of weights would "
            "overflow to inf; rescale the weights (only their ratios matter), e.g. "
            "w / w.max()"
        )


def _raise_scale(largest: float, dtype: np.dtype[Any], what: str) -> NoReturn:
    raise DataError(
        f"the largest sample_weight, {largest:.4g}, {what}: the "
        "weighted losses and gradients would round to 0 and nothing would be trained; "
        "rescale the weights (only their ratios matter), e.g. w / w.max()"
    )


def check_weighted_classes(y: npt.NDArray[Any], weight: npt.NDArray[Any]) -> None:
    """Raise unless the rows of positive weight hold at least two classes.

    Raises:
        DataError: one class is left once rows of weight 0 are dropped.
    """
    kept = np.unique(y[weight > 0])
    if len(kept) < 2:
        raise DataError(
            f"the rows with a positive sample_weight hold only class {kept[0]}; a "
            "classifier needs at least two classes with weight in its training data"
        )


def class_weight_rows(
    class_weight: ClassWeight,
    y: npt.NDArray[Any],
    n_classes: int,
    sample_weight: npt.NDArray[Any] | None = None,
) -> npt.NDArray[np.float64]:
    """The weight of each row's class: ``class_weight[y[i]]``, float64.

    ``"balanced"`` gives class ``c`` the weight ``total / (k * total_c)``, where the totals
    are the summed sample weights (row counts without them) of all rows and of class
    ``c``'s, and ``k`` the number of classes present: as scikit-learn's
    ``compute_class_weight("balanced", ..., sample_weight=...)``. A dict maps labels
    ``0 .. n_classes - 1`` to weights; labels it leaves out weigh 1.

    Raises:
        ConfigError, ConfigTypeError: an unknown string, a label outside the model's
            classes, or a weight that is negative or not a finite number.

    Example:
        >>> class_weight_rows("balanced", np.array([0, 0, 0, 1]), 2).tolist()
        [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
        >>> class_weight_rows({1: 3.0}, np.array([0, 1]), 2).tolist()
        [1.0, 3.0]
    """
    per_class = class_weights(class_weight, y, n_classes, sample_weight)
    rows: npt.NDArray[np.float64] = per_class[_indices(y)]
    return rows


def class_weights(
    class_weight: ClassWeight,
    y: npt.NDArray[Any],
    n_classes: int,
    sample_weight: npt.NDArray[Any] | None = None,
) -> npt.NDArray[np.float64]:
    """The weight of each class ``0 .. n_classes - 1``; see :func:`class_weight_rows`."""
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ConfigError(
                f"class_weight must be 'balanced', a dict {{label: weight}} or None, got "
                f"{class_weight!r}"
            )
        totals = np.bincount(_indices(y), weights=sample_weight, minlength=n_classes)
        totals = totals.astype(np.float64)
        present = totals > 0
        weights = np.ones(n_classes)
        weights[present] = totals.sum() / (np.count_nonzero(present) * totals[present])
        return weights
    if not isinstance(class_weight, Mapping):
        raise ConfigTypeError(
            f"class_weight must be 'balanced', a dict {{label: weight}} or None, got "
            f"{type(class_weight).__name__}"
        )
    weights = np.ones(n_classes)
    for label, value in class_weight.items():
        weights[_label(label, n_classes)] = _weight(label, value)
    return weights


def _indices(y: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Labels ``y`` as integers that index the classes: float labels (``1.0``, which a
    classifier takes once its checks found them whole numbers) cannot index an array."""
    return y if y.dtype.kind in "iu" else y.astype(np.intp)


def _label(label: object, n_classes: int) -> int:
    value = int(label) if isinstance(label, numbers.Integral) else None
    if isinstance(label, bool) or value is None or not 0 <= value < n_classes:
        raise ConfigError(
            f"class_weight names the label {label!r}, which is not a class of this model "
            f"(labels 0..{n_classes - 1}); key the dict by those labels"
        )
    return value


def _weight(label: object, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigTypeError(f"class_weight[{label!r}] must be a number, got {value!r}")
    weight = float(value)
    if not np.isfinite(weight) or weight < 0:
        raise ConfigError(f"class_weight[{label!r}] must be finite and >= 0, got {value!r}")
    return weight
