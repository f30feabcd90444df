"""JaxModel: a JAX function ``apply_fn(params, X)`` as an asynctrain Model, with
``jax.grad``'s gradients.

jax is imported when a JaxModel is built (or unpickled in a worker), never by
``import asynctrain``.
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain._types import DEFAULT_DTYPE, Grads, Params
from asynctrain.models import _bridge

SEPARATOR = "/"
COMPILED = 64
"""Jitted functions kept per process (:func:`_compiled`), the least recently used
dropped first: three per ``apply_fn`` and loss trained or predicted with."""


def _jax() -> Any:
    _bridge.single_threaded_xla()
    return _bridge.import_framework("jax", "jax")


class JaxModel(_bridge.Bridge):
    """Train a JAX model with asynctrain: ``apply_fn(params, X) -> outputs``, the gradient
    of the summed loss by ``jax.grad``, and every guarantee of the numpy models
    (bit-identical results on every backend for a seed and shard count).

    ``params`` is a dict of arrays, nested dicts allowed; asynctrain keeps them flat,
    float32, keyed by their paths joined with ``"/"`` (``{"dense": {"w": ...}}`` becomes
    ``"dense/w"``), and ``apply_fn`` receives them nested again. ``init`` returns copies of
    the given ``params``. The loss and its gradient are compiled with ``jax.jit`` once per
    process and shard shape. XLA is asked for one CPU thread per process when JAX is
    first loaded by asynctrain (``XLA_FLAGS``), like BLAS in asynctrain's workers.

    Args:
        apply_fn: a pure, traceable function ``(params, X) -> outputs``, defined at module
            level for the process and Dask backends.
        params: the initial parameters: a dict (of dicts) of float arrays.
        loss: ``"cross_entropy"``, ``"binary_cross_entropy"``, ``"mse"``, ``"huber"``, or a
            callable ``(outputs, y) -> (n,)`` per-sample losses written with ``jax.numpy``.
        n_classes: for a callable loss, the number of classes (None: regression); for the
            named losses it is read from the outputs (and checked if given).
        input_shape: the shape of one row of ``X``, e.g. ``(64,)`` or ``(1, 8, 8)``.

    Raises:
        ImportError: jax is not installed (``pip install 'asynctrain[jax]'``).
        ConfigError: empty or integer parameters, an unknown loss, a loss returning the
            wrong shape, outputs that do not suit the loss, or an ``apply_fn`` that JAX
            cannot trace on rows of ``input_shape``.

    Example:
        >>> import numpy as np
        >>> from asynctrain.models import JaxModel
        >>> def linear(params, X):
        ...     return X @ params["dense"]["w"] + params["dense"]["b"]
        >>> params = {"dense": {"w": np.zeros((4, 3)), "b": np.zeros(3)}}
        >>> model = JaxModel(linear, params, input_shape=(4,))
        >>> model.n_classes, sorted(model.init(np.random.default_rng(0)))
        (3, ['dense/b', 'dense/w'])
    """

    dtype = DEFAULT_DTYPE
    supports_sample_weight = True  # loss_and_grad takes sample_weight= (see Model)

    def __init__(
        self,
        apply_fn: Callable[..., Any],
        params: Mapping[str, Any],
        loss: str | Callable[..., Any] = "cross_entropy",
        *,
        n_classes: int | None = None,
        input_shape: tuple[int, ...],
    ) -> None:
        _jax()
        if not callable(apply_fn):
            raise ConfigTypeError(
                f"apply_fn must be a function (params, X) -> outputs, got {apply_fn!r}"
            )
        self.apply_fn = apply_fn
        self.loss = _bridge.check_loss(loss)
        self.input_shape = _bridge.check_input_shape(input_shape)
        self.architecture = _bridge.qualified_name(apply_fn)
        # JAX's 64-bit mode where the model is built: every call runs in it, whatever the
        # mode of the thread or process that computes a shard (jax.enable_x64 is a
        # thread's setting, jax.config.update a process's: neither reaches workers).
        self._x64 = _x64_enabled()
        self._params = _flatten(params)
        self._head = self._probe(n_classes)

    def init(self, rng: np.random.Generator) -> Params:
        """Return float32 copies of the parameters given at construction (``rng`` unused:
        initialise them with ``jax.random`` before building the model)."""
        del rng
        return {name: value.copy() for name, value in self._params.items()}

    def loss_and_grad(
        self,
        params: Params,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        sample_weight: npt.NDArray[Any] | None = None,
    ) -> tuple[float, Grads]:
        """Return the loss summed over the rows and its gradient, by ``jax.grad``.

        Args:
            params: flat arrays keyed like ``init``'s.
            X: (n, *input_shape) inputs.
            y: (n,) labels, or (n,) / (n, n_outputs) regression targets.
            sample_weight: (n,) row weights; the loss is ``sum_i w_i * loss_i``.

        Returns:
            ``(loss_sum, grads)``: new numpy arrays keyed like ``params``.
        """
        dtype = np.dtype(params[next(iter(self._params))].dtype)
        inputs = (_unflatten(params), np.asarray(X, dtype), self._targets(y, dtype))
        with _x64_mode(self._x64):
            if sample_weight is None:
                value, grads = self._function("value_and_grad")(*inputs)
            else:
                weight = np.asarray(sample_weight, dtype).reshape(-1)
                value, grads = self._function("weighted_value_and_grad")(*inputs, weight)
        flat = _flatten(grads, dtype=dtype)
        return float(value), {name: flat[name] for name in params}

    def __setstate__(self, state: dict[str, Any]) -> None:
        _jax()
        self.__dict__.update(state)
        self.__dict__.setdefault("_x64", False)  # pickled before it was recorded
        for name in ("apply_fn", "loss"):
            if isinstance(state[name], _Named):
                self.__dict__[name] = state[name].resolve()

    def __repr__(self) -> str:
        loss = self.loss if isinstance(self.loss, str) else _bridge.qualified_name(self.loss)
        return (
            f"JaxModel({self.architecture}, loss={loss!r}, input_shape={self.input_shape}, "
            f"n_classes={self.n_classes})"
        )

    # -- helpers -------------------------------------------------------------------------

    def _targets(self, y: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        return np.asarray(y, np.int32 if self._head.n_classes is not None else dtype)

    def _outputs(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        dtype = np.dtype(params[next(iter(self._params))].dtype)
        with _x64_mode(self._x64):
            outputs = self._function("apply")(_unflatten(params), np.asarray(X, dtype))
        return np.array(outputs, dtype)

    def _function(self, name: str) -> Any:
        """The jitted ``apply``, ``value_and_grad`` or ``weighted_value_and_grad`` of this
        model's ``apply_fn`` and loss: the process's (:func:`_compiled`), or for an
        ``apply_fn`` or loss that cannot be hashed, this model's own."""
        try:
            return _compiled(self.apply_fn, self.loss, name)
        except TypeError:  # unhashable: kept with the model, in this process
            own = self.__dict__.setdefault("_own_compiled", {})
            if name not in own:
                own[name] = _compiled.__wrapped__(self.apply_fn, self.loss, name)
            return own[name]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_own_compiled", None)  # compiled functions stay in their process
        for name in ("apply_fn", "loss"):
            state[name] = _reference(state[name])
        return state

    def _probe(self, n_classes: int | None) -> _bridge.Head:
        """Trace ``apply_fn`` on rows of zeros (no compilation, no math): it must be
        traceable, and its outputs tell the classes; a callable loss is traced on them."""
        jax = _jax()
        rows = _bridge.PROBE_ROWS
        X = jax.ShapeDtypeStruct((rows, *self.input_shape), np.float32)
        try:
            outputs = jax.eval_shape(self.apply_fn, _unflatten(self._params), X)
        except Exception as exc:
            raise ConfigError(
                f"apply_fn {self.architecture} cannot be traced by JAX on rows of shape "
                f"{self.input_shape} ({type(exc).__name__}: {str(exc)[:300]}); it must be a "
                "pure function of (params, X) written with jax.numpy, without Python "
                "branches on array values, and input_shape must be the shape of one row"
            ) from exc
        if not hasattr(outputs, "shape"):
            raise ConfigError(f"apply_fn must return one array of outputs, got {outputs!r}")
        head = _bridge.head_of(self.loss, tuple(outputs.shape), n_classes)
        if callable(self.loss):
            targets = _bridge.probe_targets(head, rows, np.dtype(np.float32))
            try:
                losses = jax.eval_shape(self.loss, outputs, targets)
            except Exception as exc:
                raise ConfigError(f"the loss function cannot be traced by JAX: {exc}") from exc
            _bridge.check_loss_shape(tuple(getattr(losses, "shape", ())), rows)
        return head


class _Named(NamedTuple):
    """A module-level object pickled by its name: a ``@jax.jit`` function, which pickle
    cannot take (it pickles the function it wraps, whose name now gives the wrapper)."""

    module: str
    qualname: str

    def resolve(self) -> Any:
        """The object the name gives once its module is imported."""
        found: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            found = getattr(found, part)
        return found


def _reference(value: Any) -> Any:
    """``value``, or a :class:`_Named` reference to it when it is neither a plain function
    nor a loss name and importing its module by name gives it back."""
    if isinstance(value, str | types.FunctionType) or not callable(value):
        return value
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return value
    named = _Named(module, qualname)
    try:
        found = named.resolve()
    except (ImportError, AttributeError):
        return value
    return named if found is value else value


def _x64_enabled() -> bool:
    """Whether JAX's 64-bit mode is on in this thread (``jax.config.update`` or a
    ``jax.enable_x64`` block)."""
    jax = _jax()
    return bool(jax.dtypes.canonicalize_dtype(np.float64) == np.float64)


def _x64_mode(enabled: bool) -> Any:
    """A context running JAX in 64-bit mode or not, in this thread only."""
    jax = _jax()
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # older jax: only jax.experimental has it
        enable = importlib.import_module("jax.experimental").enable_x64
    return enable(enabled)


@functools.lru_cache(maxsize=COMPILED)
def _compiled(apply_fn: Callable[..., Any], loss: str | Callable[..., Any], name: str) -> Any:
    """The jitted ``apply`` (``name="apply"``), ``value_and_grad`` of the summed loss or
    ``weighted_value_and_grad`` of the weighted one, for ``apply_fn`` and ``loss``; one
    per process for every JaxModel of them.

    Kept by the functions, not by the model: a process worker receives a fit's model
    anew, unpickled, at every fit (and a service builds one per job), and ``jax.jit``
    keeps what it compiled with the function it wraps. Functions made per model compiled
    the gradient again in every worker at every fit: 0.2-0.5 s of the reference MLP's
    epochs, which made 2 process workers slower than 1. ``apply_fn`` and a callable loss
    travel to workers by reference (module-level functions), so they key this cache there
    too; ``jax.jit`` still compiles once per shape and dtype. An entry keeps its functions
    (and what a closure holds) alive until :data:`COMPILED` newer ones push it out.
    """
    jax = _jax()

    def apply(tree: Any, X: Any) -> Any:  # jax.jit needs a hashable function
        return apply_fn(tree, X)

    if name == "apply":
        return jax.jit(apply)

    def summed(tree: Any, X: Any, y: Any) -> Any:
        return _losses(loss, apply_fn(tree, X), y).sum()

    def weighted(tree: Any, X: Any, y: Any, weight: Any) -> Any:
        return (_losses(loss, apply_fn(tree, X), y) * weight).sum()

    return jax.jit(jax.value_and_grad(weighted if name == "weighted_value_and_grad" else summed))


def _losses(loss: str | Callable[..., Any], outputs: Any, y: Any) -> Any:
    """Per-sample losses of ``outputs`` against ``y`` (the same definitions as torch's)."""
    import jax
    import jax.numpy as jnp

    rows = outputs.shape[0]
    if callable(loss):
        return loss(outputs, y)
    if loss == "cross_entropy":
        picked = jnp.take_along_axis(outputs, y[:, None], axis=1)[:, 0]
        return jax.nn.logsumexp(outputs, axis=1) - picked
    if loss == "binary_cross_entropy":
        z = outputs.reshape(rows)
        return jax.nn.softplus(z) - y.astype(z.dtype) * z
    error = outputs - y.reshape(outputs.shape)
    if loss == "mse":
        per_value = error**2
    else:
        size = jnp.abs(error)
        per_value = jnp.where(size <= 1.0, 0.5 * error**2, size - 0.5)
    return per_value.reshape(rows, -1).sum(axis=1)


def _flatten(
    tree: Mapping[str, Any], prefix: str = "", *, dtype: np.dtype[Any] = DEFAULT_DTYPE
) -> Params:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}`` as arrays of ``dtype``, in insertion order.

    A list or tuple of numbers is one array; one of arrays or dicts (a list of layers) is
    refused naming the dict that replaces it, since the tree rebuilt for ``apply_fn``
    holds dicts only.
    """
    if not isinstance(tree, Mapping):
        raise ConfigTypeError(
            f"params must be a dict of arrays (nested dicts allowed), got {type(tree).__name__}"
        )
    flat: Params = {}
    for key, value in tree.items():
        if not isinstance(key, str) or SEPARATOR in key or not key:
            raise ConfigError(
                f"parameter name {key!r} must be a non-empty string without {SEPARATOR!r} "
                "(nested names are joined with it)"
            )
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{path}{SEPARATOR}", dtype=dtype))
            continue
        try:
            array = np.asarray(value)
        except ValueError:  # a list or tuple of arrays of different shapes
            array = np.empty(0, object)
        if array.dtype == object and isinstance(value, list | tuple):
            raise ConfigError(
                f"parameter {path!r} is a {type(value).__name__} of arrays or dicts; params "
                "must be a dict of arrays, nested dicts allowed: key the items by position, "
                f"as in {{{key!r}: {{'0': ..., '1': ...}}}}, and index them by those strings"
            )
        if not _floating(array.dtype):
            raise ConfigError(
                f"parameter {path!r} has dtype {array.dtype}; asynctrain trains floating "
                "point parameters only: keep constants out of params (close over them)"
            )
        flat[path] = np.array(array, dtype)
    if not flat and not prefix:
        raise ConfigError("params holds no arrays: there is nothing to train")
    return flat


def _floating(dtype: np.dtype[Any]) -> bool:
    """Whether ``dtype`` is a float: numpy's, or one JAX adds (bfloat16, float8_*), whose
    numpy kind is ``"V"``."""
    if dtype.kind == "f":
        return True
    jnp = _jax().numpy
    return bool(dtype.kind == "V" and jnp.issubdtype(dtype, jnp.floating))


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b": x}`` -> ``{"a": {"b": x}}``."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(SEPARATOR)
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree
