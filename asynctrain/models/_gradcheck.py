"""An independent oracle for gradients: central finite differences."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_float, check_int
from asynctrain._exceptions import ConfigError
from asynctrain._types import Params
from asynctrain.models._protocol import Model, supports_sample_weight


class GradientCheck(NamedTuple):
    """The outcome of :func:`check_gradients`.

    Attributes:
        ok: every checked coordinate satisfied ``|numeric - analytic| <= atol + rtol *
            max(|numeric|, |analytic|)``, and every gradient had its parameter's shape.
        max_abs_error: largest ``|numeric - analytic|`` over all checked coordinates.
        max_rel_error: largest ``|numeric - analytic| / max(|numeric|, |analytic|)``.
        errors: largest absolute error per parameter name (``inf`` for a gradient that
            is missing or has the wrong shape).
    """

    ok: bool
    max_abs_error: float
    max_rel_error: float
    errors: dict[str, float]

    def __repr__(self) -> str:
        errors = ", ".join(f"{name!r}: {error:.3g}" for name, error in self.errors.items())
        return (
            f"GradientCheck(ok={self.ok}, max_abs_error={self.max_abs_error:.3g}, "
            f"max_rel_error={self.max_rel_error:.3g}, errors={{{errors}}})"
        )


def _coordinates(size: int, max_checks: int, rng: np.random.Generator) -> npt.NDArray[np.intp]:
    """Return every flat index of a small parameter, or a sorted seeded sample."""
    if size <= max_checks:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_checks, replace=False))


def _numeric(
    model: Model,
    point: Params,
    name: str,
    coordinates: npt.NDArray[np.intp],
    data: tuple[npt.NDArray[Any], npt.NDArray[Any]],
    eps: float,
    options: dict[str, Any],
) -> npt.NDArray[np.float64]:
    """Return central differences of the loss along the given coordinates of ``name``."""
    flat = point[name].reshape(-1)  # a view: ``point`` holds our own contiguous copies
    slopes = np.empty(len(coordinates))
    for j, index in enumerate(coordinates):
        saved = flat[index]
        flat[index] = saved + eps
        up = model.loss_and_grad(point, *data, **options)[0]
        flat[index] = saved - eps
        down = model.loss_and_grad(point, *data, **options)[0]
        slopes[j] = (up - down) / ((saved + eps) - (saved - eps))
        flat[index] = saved
    return slopes


def check_gradients(
    model: Model,
    params: Params,
    X: npt.NDArray[Any],
    y: npt.NDArray[Any],
    *,
    sample_weight: npt.ArrayLike | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    max_checks: int = 200,
    seed: int = 0,
) -> GradientCheck:
    """Compare ``model.loss_and_grad``'s gradient with central finite differences.

    The parameters are copied to float64 and both the analytic gradient and the
    differences ``(L(p + eps) - L(p - eps)) / 2 eps`` are taken at that copy. Every
    coordinate of a parameter with at most ``max_checks`` entries is checked; larger ones
    are checked on a sample of ``max_checks`` coordinates drawn with ``seed``.

    The check is meaningful only when the model computes in float64 given float64
    params: the built-in models do (they keep the params' dtype), but a model that casts
    params to float32 turns the differences into rounding noise. Check a float64 model
    (``dtype=np.float64``) with small data; the float32 one shares its code.

    Args:
        model: any object following :class:`Model`.
        params: where to check (not modified), e.g. ``model.init(rng)``.
        X: inputs, e.g. a handful of rows.
        y: targets for ``X``.
        sample_weight: row weights to check the weighted loss's gradient with (passed
            as ``loss_and_grad(..., sample_weight=)``, in float64); the model must
            declare ``supports_sample_weight``.
        eps: finite-difference step, > 0.
        rtol: relative tolerance, >= 0.
        atol: absolute tolerance, >= 0.
        max_checks: coordinates checked per parameter, at least 1.
        seed: seed of the coordinate sample.

    Returns:
        A :class:`GradientCheck`.

    Raises:
        ConfigError: an option is out of range, or ``sample_weight`` is given for a
            model that does not declare ``supports_sample_weight``.

    Example:
        >>> import numpy as np
        >>> from asynctrain.models import SoftmaxRegression, check_gradients
        >>> rng = np.random.default_rng(0)
        >>> model = SoftmaxRegression(3, 4, l2=0.1, dtype=np.float64)
        >>> X, y = rng.standard_normal((5, 3)), rng.integers(0, 4, size=5)
        >>> check_gradients(model, model.init(rng), X, y).ok
        True
        >>> check_gradients(model, model.init(rng), X, y, sample_weight=[1, 0, 2, 0.5, 3]).ok
        True
    """
    eps = check_float("eps", eps, inclusive=False)
    tolerances = (check_float("rtol", rtol), check_float("atol", atol))
    max_checks = check_int("max_checks", max_checks)
    options = _weight_option(model, sample_weight)
    point: Params = {name: np.array(value, dtype=np.float64) for name, value in params.items()}
    grads = model.loss_and_grad(point, X, y, **options)[1]
    rng = np.random.default_rng(seed)
    errors: dict[str, float] = {}
    ok, max_rel = True, 0.0
    for name, value in point.items():
        analytic = grads.get(name)
        if analytic is None or np.shape(analytic) != value.shape:
            ok, errors[name] = False, float("inf")
            continue
        coordinates = _coordinates(value.size, max_checks, rng)
        numeric = _numeric(model, point, name, coordinates, (X, y), eps, options)
        picked = np.asarray(analytic, dtype=np.float64).reshape(-1)[coordinates]
        passed, abs_error, rel_error = _compare(numeric, picked, *tolerances)
        ok, errors[name], max_rel = ok and passed, abs_error, max(max_rel, rel_error)
    max_abs = max(errors.values(), default=0.0)
    return GradientCheck(ok, max_abs, max_rel if np.isfinite(max_abs) else max_abs, errors)


def _weight_option(model: Model, sample_weight: npt.ArrayLike | None) -> dict[str, Any]:
    if sample_weight is None:
        return {}
    if not supports_sample_weight(model):
        raise ConfigError(
            f"sample_weight was given, but {model!r} does not declare "
            "supports_sample_weight = True (see asynctrain.models.Model)"
        )
    return {"sample_weight": np.asarray(sample_weight, dtype=np.float64)}


def _compare(
    numeric: npt.NDArray[np.float64], analytic: npt.NDArray[np.float64], rtol: float, atol: float
) -> tuple[bool, float, float]:
    """Return (all within tolerance, max absolute error, max relative error)."""
    if numeric.size == 0:
        return True, 0.0, 0.0
    difference = np.nan_to_num(np.abs(numeric - analytic), nan=np.inf)
    scale = np.maximum(np.abs(numeric), np.abs(analytic))
    passed = bool(np.all(difference <= atol + rtol * scale))
    relative = difference / np.where(scale > 0, scale, 1.0)
    return passed, float(difference.max()), float(relative.max())
