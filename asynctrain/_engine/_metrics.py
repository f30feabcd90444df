"""Validation metrics beyond loss and accuracy, chosen by name: f1, auc, r2, mae.

Each metric has two halves. :func:`chunk_parts` runs on a worker with one chunk's labels
and predictions and returns what the chunk contributes; :func:`combine` runs off the
event loop (on the update thread) with every chunk's part, in chunk order, and returns
the metric.

How chunks combine, and what it costs:

- ``f1`` (macro F1): each chunk returns per class its true positives, predictions and
  labels (3 × classes counts, not a classes × classes confusion matrix: that took 3 GiB
  a chunk for 20,000 classes); the counts add up exactly, so the result is the one of
  the whole data.
- ``r2`` and ``mae``: each chunk returns per output its row count, target mean, sum of
  squared deviations from that mean, sum of squared errors and sum of absolute errors;
  means and deviations merge with Chan et al.'s pairwise formula (no cancellation from
  ``sum(y**2) - n * mean**2``).
- ``auc`` (ROC AUC) is a ranking statistic: it cannot be summed over chunks. Each chunk
  returns its labels and scores (8,192 rows × 1 or ``n_classes`` floats: under a megabyte
  per task); the combination sorts all of them once, off the loop. That holds the
  validation set's scores in memory once (``n × n_classes`` floats of the model's dtype).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigError, ConfigTypeError


class Metric(NamedTuple):
    """A metric's name, which models it applies to and which way is better."""

    name: str
    classifier: bool  # True: for classifiers only; False: for regression models only
    higher_is_better: bool


METRICS = {
    "auc": Metric("auc", classifier=True, higher_is_better=True),
    "f1": Metric("f1", classifier=True, higher_is_better=True),
    "mae": Metric("mae", classifier=False, higher_is_better=False),
    "r2": Metric("r2", classifier=False, higher_is_better=True),
}
"""The metrics ``fit(metrics=[...])`` knows, by name."""


def check_metrics(names: Sequence[str], model: Any, *, validation: bool) -> tuple[str, ...]:
    """``names`` checked against the known metrics and ``model``, without repeats.

    Raises:
        ConfigTypeError: ``names`` is a single string or holds a non-string.
        ConfigError: an unknown name (listing the known ones), a metric for the other
            kind of model, ``auc`` for a model without ``predict_proba``, or metrics
            without validation data.
    """
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigTypeError(f"metrics must be a list of names such as ['f1'], got {names!r}")
    classifier = getattr(model, "n_classes", None) is not None
    for name in names:
        metric = METRICS.get(name)
        if metric is None:
            raise ConfigError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
        if metric.classifier != classifier:
            fits = [m for m, v in METRICS.items() if v.classifier == classifier]
            raise ConfigError(
                f"metric {name!r} is for "
                f"{'classifiers' if metric.classifier else 'regression models'} and "
                f"{model!r} is {'a classifier' if classifier else 'a regression model'}: "
                f"use one of {fits}"
            )
    # Checked now: the scores are first asked for after a whole epoch of training.
    if "auc" in names and not callable(getattr(model, "predict_proba", None)):
        raise ConfigError(
            f"metric 'auc' ranks the scores of predict_proba, which {model!r} does not "
            "have: give the model predict_proba(params, X) returning (n, n_classes) "
            "probabilities (see asynctrain.models.Classifier), or drop 'auc'"
        )
    if names and not validation:
        raise ConfigError(
            f"metrics={list(names)!r} are computed on validation data: pass validation=..."
        )
    return tuple(dict.fromkeys(names))


def chunk_parts(
    names: Sequence[str],
    y: npt.NDArray[Any],
    predicted: npt.NDArray[Any],
    scores: npt.NDArray[Any] | None,
    n_classes: int | None,
) -> dict[str, Any]:
    """What one chunk contributes to each metric of ``names`` (runs on a worker).

    ``predicted`` are labels (classifiers) or values (regression); ``scores`` the
    ``predict_proba`` output, needed for ``auc`` only.
    """
    parts: dict[str, Any] = {}
    for name in names:
        if name == "f1":
            assert n_classes is not None
            parts[name] = class_counts(y, predicted, n_classes)
        elif name == "auc":
            assert scores is not None
            parts[name] = (y, scores[:, 1] if scores.shape[1] == 2 else scores)
        else:
            parts[name] = _regression_sums(y, predicted)
    return parts


def _regression_sums(y: npt.NDArray[Any], predicted: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Per output: rows, target mean, squared deviations, squared and absolute errors."""
    target = y.reshape(len(y), -1).astype(np.float64)
    error = target - predicted.reshape(len(y), -1)
    mean = target.mean(axis=0)
    n = np.full_like(mean, len(y))
    m2 = ((target - mean) ** 2).sum(axis=0)
    return np.stack([n, mean, m2, (error**2).sum(axis=0), np.abs(error).sum(axis=0)])


def combine(name: str, parts: Sequence[Any]) -> float:
    """The metric ``name`` of the whole data from its chunks' ``parts`` (in chunk order)."""
    if name == "f1":
        return macro_f1(sum(parts[1:], parts[0]))
    if name == "auc":
        y = np.concatenate([p[0] for p in parts])
        return roc_auc(y, np.concatenate([p[1] for p in parts]))
    n, _, m2, sse, sae = _merge_sums(parts)
    if name == "mae":
        return float(np.mean(sae / n))
    # scikit-learn's r2_score: a constant target scores 1 if predicted exactly, else 0.
    safe = np.where(m2 > 0, m2, 1.0)
    r2 = np.where(m2 > 0, 1.0 - sse / safe, np.where(sse == 0, 1.0, 0.0))
    return float(np.mean(r2))


def _merge_sums(parts: Sequence[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    n, mean, m2, sse, sae = parts[0].copy()
    for other in parts[1:]:
        n_b, mean_b, m2_b = other[0], other[1], other[2]
        total = n + n_b
        delta = mean_b - mean
        m2 = m2 + m2_b + delta**2 * n * n_b / total
        mean = mean + delta * n_b / total
        n, sse, sae = total, sse + other[3], sae + other[4]
    return np.stack([n, mean, m2, sse, sae])


def class_counts(
    y: npt.NDArray[Any], predicted: npt.NDArray[Any], n_classes: int
) -> npt.NDArray[np.int64]:
    """Per class: true positives, predictions and labels, as a ``(3, n_classes)`` array.

    All macro F1 needs, in ``3 * n_classes`` counts that add up over chunks.

    Example:
        >>> class_counts(np.array([0, 1, 1]), np.array([0, 0, 1]), 3).tolist()
        [[1, 1, 0], [2, 1, 0], [1, 2, 0]]
    """
    labels, guesses = y.astype(np.int64), predicted.astype(np.int64)
    hits = labels[labels == guesses]
    return np.stack([np.bincount(v, minlength=n_classes) for v in (hits, guesses, labels)])


def macro_f1(counts: npt.NDArray[Any]) -> float:
    """Macro F1 from :func:`class_counts` (summed over chunks): per class, true
    positives, predictions and labels.

    Averaged over the classes that occur in the labels or the predictions, as
    scikit-learn's ``f1_score(average="macro")`` does.

    Example:
        >>> macro_f1(class_counts(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), 2))
        0.7333333333333334
    """
    tp, predicted, actual = counts.astype(np.float64)
    fp, fn = predicted - tp, actual - tp
    present = tp + fp + fn > 0
    if not present.any():
        return float("nan")
    return float(np.mean(2 * tp[present] / (2 * tp + fp + fn)[present]))


def roc_auc(y: npt.NDArray[Any], scores: npt.NDArray[Any]) -> float:
    """ROC AUC: binary for 1-D ``scores`` (of class 1), else one-vs-rest macro average.

    Ties count half (the Mann-Whitney statistic). A class absent from ``y`` (or a
    binary ``y`` of one class) has no AUC: it is left out of the average, and the
    result is NaN if no class has one.

    Example:
        >>> roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    if scores.ndim == 1:
        return _binary_auc(y == 1, scores)
    values = [_binary_auc(y == c, scores[:, c]) for c in range(scores.shape[1])]
    found = [v for v in values if not np.isnan(v)]
    return float(np.mean(found)) if found else float("nan")


def _binary_auc(positive: npt.NDArray[np.bool_], scores: npt.NDArray[Any]) -> float:
    n_pos = int(np.count_nonzero(positive))
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # average rank of ties
    rank_sum = float(ranks[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
