"""The optimizer seam: GradientTransformation, chain, apply_updates, global_norm.

An optimizer is a pair of functions ``(init, update)`` whose state is a NamedTuple of
plain data (ints, floats, arrays, dicts of arrays, tuples of states), so a checkpoint can
store it as arrays plus JSON. Hyper-parameters live in the functions, never in the state:
each ``init``/``update`` is a :func:`functools.partial` of a module-level function, so an
optimizer pickles (the process backend sends it to its workers in local mode).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, TypeAlias, TypeVar

import numpy as np

from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain._types import Array, Grads, Params
from asynctrain.optim._flat import blocks_of, buffers, flat_empty, one_buffer_layout, shared_buffers

OptState: TypeAlias = Any
"""An optimizer state: a NamedTuple (or, for :func:`chain`, a tuple) of plain data."""

InitFn: TypeAlias = Callable[[Params], OptState]
"""``init(params) -> state``."""


class UpdateFn(Protocol):
    """``update(grads, state, params=None) -> (updates, new_state)``."""

    def __call__(
        self, grads: Grads, state: OptState, params: Params | None = None, /
    ) -> tuple[Grads, OptState]: ...


class GradientTransformation(NamedTuple):
    """An optimizer, or one building block of one: a pair of pure functions.

    ``init(params)`` returns the initial state; ``update(grads, state, params)`` returns
    ``(updates, new_state)``; :func:`apply_updates` adds the updates to the parameters.

    In-place contract (no allocation per step): update may overwrite `grads` and the
    arrays of `state`; pass copies if you need them afterwards. The returned updates
    are the ``grads`` dict itself with its arrays rewritten in place, and the new state
    shares its arrays with the old one, which is consumed: use only the returned state.
    ``grads`` must hold writable arrays with the keys and shapes of the parameters. Two
    updates must not run on the same state at the same time.

    Attributes:
        init: ``init(params) -> state``; never modifies ``params``.
        update: ``update(grads, state, params=None) -> (updates, new_state)``; its
            ``params`` argument must default to None (only some transforms use it).

    Example:
        >>> import numpy as np
        >>> from asynctrain.optim import apply_updates, sgd
        >>> params = {"w": np.array([1.0, 2.0])}
        >>> opt = sgd(0.5)
        >>> state = opt.init(params)
        >>> updates, state = opt.update({"w": np.array([2.0, 2.0])}, state, params)
        >>> apply_updates(params, updates)["w"].tolist()
        [0.0, 1.0]
    """

    init: InitFn
    update: UpdateFn

    def __repr__(self) -> str:
        label = _label_of(self.update)
        if label is None:
            return f"GradientTransformation(init={self.init!r}, update={self.update!r})"
        return f"<GradientTransformation {label}>"


Schedule: TypeAlias = Callable[[int], float]
"""A learning-rate schedule: a pure function from the step count (0, 1, ...) to a value."""

LearningRate: TypeAlias = float | Schedule
"""A learning rate: a constant, or a :data:`Schedule` evaluated at each step."""


class EmptyState(NamedTuple):
    """The state of a transformation that keeps none (e.g. :func:`scale`)."""


# Human-readable labels ("adam(0.001, b1=0.9, ...)") for reprs, kept as an attribute of
# the update function or schedule (a functools.partial): never in any optimizer state, and
# pickled along with the function.
_LABEL = "_asynctrain_label"

_F = TypeVar("_F", bound=Callable[..., Any])


def _label_of(fn: object) -> str | None:
    """Return the label attached to ``fn``, or None."""
    label = getattr(fn, _LABEL, None)
    return label if isinstance(label, str) else None


def _describe(value: object) -> str:
    """Return the label of a transformation or schedule, or ``repr(value)``.

    A numpy scalar is described as the Python number it holds: numpy 2 writes
    ``np.float64(0.001)``, numpy 1 ``0.001``, and a checkpoint compares these labels,
    so the same learning rate must read the same from a float, a numpy scalar (a
    sweep's ``np.logspace``) and either numpy.
    """
    if isinstance(value, GradientTransformation):
        return _label_of(value.update) or repr(value)
    if isinstance(value, np.generic):
        return repr(value.item())
    return _label_of(value) or getattr(value, "__qualname__", None) or repr(value)


def _call_label(name: str, *args: object, **kwargs: object) -> str:
    """Format ``name(arg, key=value, ...)`` with :func:`_describe` for every value."""
    parts = [_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def _labelled(label: str, transform: GradientTransformation) -> GradientTransformation:
    """Attach ``label`` to ``transform`` for its repr and return ``transform``."""
    setattr(transform.update, _LABEL, label)
    return transform


def _labelled_fn(label: str, fn: _F) -> _F:
    """Attach ``label`` to a schedule (or any function) for reprs and return it."""
    setattr(fn, _LABEL, label)
    return fn


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Compose transformations: each one's updates are the next one's gradients.

    Args:
        *transforms: the transformations, applied in the order given.

    Returns:
        A GradientTransformation whose state is the tuple of the parts' states.

    Raises:
        ConfigTypeError: a part is not a GradientTransformation.

    Example:
        >>> from asynctrain.optim import chain, clip_by_global_norm, scale_by_adam
        >>> from asynctrain.optim import scale_by_learning_rate
        >>> opt = chain(clip_by_global_norm(1.0), scale_by_adam(), scale_by_learning_rate(0.1))
    """
    for i, part in enumerate(transforms):
        if not isinstance(part, GradientTransformation):
            raise ConfigTypeError(
                f"chain part {i} must be a GradientTransformation, got {part!r}; "
                "build one with e.g. scale(...) or sgd(...)"
            )
    init = functools.partial(_chain_init, transforms)
    update = functools.partial(_chain_update, transforms)
    return _labelled(_call_label("chain", *transforms), GradientTransformation(init, update))


def _chain_init(parts: tuple[GradientTransformation, ...], params: Params) -> tuple[OptState, ...]:
    return tuple(t.init(params) for t in parts)


def _chain_update(
    parts: tuple[GradientTransformation, ...],
    grads: Grads,
    state: tuple[OptState, ...],
    params: Params | None = None,
) -> tuple[Grads, tuple[OptState, ...]]:
    new_states = []
    for part, part_state in zip(parts, state, strict=True):
        grads, new_state = part.update(grads, part_state, params)
        new_states.append(new_state)
    return grads, tuple(new_states)


def apply_updates(params: Params, updates: Grads) -> Params:
    """Return new parameters ``params[k] + updates[k]``, in the parameters' dtypes.

    ``params`` is never modified, so each version of the parameters can be published
    as an immutable snapshot.

    Args:
        params: the current parameters.
        updates: the updates returned by ``update``, with the same keys and shapes.

    Returns:
        A new dict of new arrays.

    Raises:
        ConfigError: the keys or shapes of ``updates`` differ from those of ``params``.

    Example:
        >>> import numpy as np
        >>> apply_updates({"b": np.array([1.0])}, {"b": np.array([-0.5])})["b"].tolist()
        [0.5]
    """
    check_same_keys("updates", updates, params)
    for key, value in params.items():
        update = updates[key]
        if update.shape != value.shape:
            raise ConfigError(
                f"update {key!r} has shape {update.shape}, parameter has {value.shape}"
            )
    # New arrays, views of one buffer when they can be: one addition over the buffer
    # when the parameters and the updates are such views too (the same bits as a loop).
    # out=: a 0-d parameter stays an array (np.add alone returns a numpy scalar).
    new = flat_empty(params)
    for out, value, update in buffers(new, params, updates):
        np.add(value, update, out=out, dtype=out.dtype)
    return new


def global_norm(tree: Grads) -> float:
    """Return the L2 norm of all arrays of ``tree`` taken together.

    Args:
        tree: a dict of arrays (gradients, updates or parameters).

    Returns:
        ``sqrt(sum of squares of every element)``, as a Python float.

    Example:
        >>> import numpy as np
        >>> global_norm({"a": np.array([3.0]), "b": np.array([[4.0]])})
        5.0
    """
    total = 0.0
    for x in tree.values():
        # vdot reads a contiguous array in place: no squared temporary is allocated.
        square = float(np.vdot(x, x))
        total += _widened_sum_of_squares(x) if math.isinf(square) else square
    return math.sqrt(total)


def _widened_sum_of_squares(x: Array) -> float:
    """The sum of squares of ``x`` whose own dtype overflowed (float32 near 1.8e19), in
    float64; a float64 sum that overflowed stays infinite."""
    if x.dtype == np.float64:
        return math.inf
    wide = x.astype(np.float64)
    return float(np.vdot(wide, wide))


def check_same_keys(name: str, tree: Mapping[str, Any], reference: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the missing and extra keys if the key sets differ."""
    if tree.keys() == reference.keys():  # compares the views: no set is built
        return
    missing, extra = sorted(reference.keys() - tree.keys()), sorted(tree.keys() - reference.keys())
    raise ConfigError(
        f"{name} keys do not match the parameters: missing {missing}, unexpected {extra}"
    )


def check_same_shapes(name: str, tree: Mapping[str, Any], reference: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first key whose array is not shaped like the
    reference's (after :func:`check_same_keys`).

    A transform works element by element in place: a gradient of another shape fails
    deep in numpy ("operands could not be broadcast"), naming no parameter, and, where
    it broadcasts into a state buffer first, after changing that state. Two buffers of
    one layout need no look at their arrays (the trainer's every step).
    """
    check_same_keys(name, tree, reference)
    if one_buffer_layout(tree, reference) is not None:
        return
    for key, value in reference.items():
        shape = getattr(tree[key], "shape", None)
        if shape != value.shape:
            got = f"has shape {shape}" if shape is not None else f"is a {type(tree[key]).__name__}"
            raise ConfigError(
                f"{name} {key!r} {got}, the parameter has shape {value.shape}; pass "
                "numpy arrays shaped like the parameters"
            )


def checked_buffers(
    name: str, grads: Grads, *states: Mapping[str, Array]
) -> list[tuple[Array, ...]]:
    """:func:`check_same_shapes` of ``grads`` against ``states[0]``, then the arrays to
    work on element by element (:func:`~asynctrain.optim._flat.buffers`) of ``grads`` and
    ``states``: a transform's first lines every step. Buffers of one layout (the
    trainer's every step) are compared once, not once for the check and again for the
    buffers.
    """
    flats = shared_buffers(grads, *states)
    if flats is not None:
        return blocks_of(flats)
    check_same_shapes(name, grads, states[0])
    return buffers(grads, *states)
