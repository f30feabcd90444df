"""Parameter-shaped dicts whose arrays are consecutive views of one flat buffer.

A step's element-wise work (Adam's dozen passes, momentum, the learning rate, adding the
updates to the parameters, the finiteness checks and the optimizer-state backup) costs a
numpy call per parameter array, and for small models those calls, not the arithmetic,
are the cost. When every array of a dict is a view of one buffer, in order, the work runs
once over the buffer instead: each element gets exactly the same operations, so the bits
are those of the per-array loop.

:class:`FlatArrays` is such a dict. It is built only by :func:`flat_zeros` and
:func:`flat_empty`; any change to its entries forgets the buffer (``flat`` becomes None)
and it is then an ordinary dict, which every function here still accepts.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

Layout = tuple[tuple[str, tuple[int, ...], int], ...]
"""The keys, shapes and sizes of a :class:`FlatArrays`, in buffer order."""


class FlatArrays(dict[str, npt.NDArray[Any]]):
    """A dict of arrays that are consecutive views of ``flat`` (a 1-D buffer) in key order.

    Reads, iteration and ``==`` are those of a dict. Any change to its entries (setting,
    deleting, ``update``...) sets ``flat`` to None: the views no longer tell the whole
    story. It pickles and copies as a plain dict.

    Example:
        >>> arrays = flat_zeros({"w": np.ones((2, 2)), "b": np.ones(3)})
        >>> arrays.flat.shape, np.shares_memory(arrays["b"], arrays.flat)
        ((7,), True)
        >>> arrays["b"] = np.ones(3); arrays.flat is None
        True
    """

    __slots__ = ("flat", "layout")
    flat: npt.NDArray[Any] | None
    layout: Layout

    def __init__(self, flat: npt.NDArray[Any], layout: Layout) -> None:
        start, views = 0, {}
        for key, shape, size in layout:  # built for every new parameter version
            view = flat[start : start + size]
            views[key] = view if len(shape) == 1 else view.reshape(shape)  # 1-D: as sliced
            start += size
        super().__init__(views)
        self.flat, self.layout = flat, layout

    def _forget(self) -> None:
        self.flat = None

    def __setitem__(self, key: str, value: npt.NDArray[Any]) -> None:
        self._forget()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._forget()
        super().__delitem__(key)

    def __ior__(self, other: Any) -> FlatArrays:  # type: ignore[override,misc]
        self._forget()
        return super().__ior__(other)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """As ``dict.update``; forgets the buffer."""
        self._forget()
        super().update(*args, **kwargs)

    def pop(self, *args: Any) -> Any:
        """As ``dict.pop``; forgets the buffer."""
        self._forget()
        return super().pop(*args)

    def popitem(self) -> tuple[str, npt.NDArray[Any]]:
        """As ``dict.popitem``; forgets the buffer."""
        self._forget()
        return super().popitem()

    def setdefault(self, *args: Any) -> Any:
        """As ``dict.setdefault``; forgets the buffer."""
        self._forget()
        return super().setdefault(*args)

    def clear(self) -> None:
        """As ``dict.clear``; forgets the buffer."""
        self._forget()
        super().clear()

    def __reduce__(self) -> Any:
        return dict, (dict(self),)


def layout_of(arrays: Mapping[str, Any]) -> tuple[Layout, np.dtype[Any]] | None:
    """The layout and the one dtype of ``arrays``, or None when they cannot share a buffer
    (not all numpy arrays of one dtype, or none at all)."""
    if isinstance(arrays, FlatArrays) and arrays.flat is not None:
        return arrays.layout, arrays.flat.dtype
    values = list(arrays.values())
    # C order only: a view of the buffer is C-contiguous, as np.empty_like of these is.
    if not values or not all(type(v) is np.ndarray and v.flags.c_contiguous for v in values):
        return None
    dtype = values[0].dtype
    if any(v.dtype != dtype for v in values):
        return None
    return tuple((k, v.shape, v.size) for k, v in arrays.items()), dtype


def one_buffer_layout(
    a: Mapping[str, Any], b: Mapping[str, Any]
) -> tuple[Layout, npt.NDArray[Any], npt.NDArray[Any]] | None:
    """The layout and the buffers of ``a`` and ``b`` when both are :class:`FlatArrays`
    whose buffers are live, of one layout and one dtype (element ``i`` of one buffer is
    element ``i`` of the other's parameter); else None.

    Example:
        >>> like = {"w": np.ones(2), "b": np.ones(1)}
        >>> a, b = flat_zeros(like), flat_zeros(like)
        >>> one_buffer_layout(a, b)[0]
        (('w', (2,), 2), ('b', (1,), 1))
        >>> one_buffer_layout(a, dict(b)) is None
        True
    """
    if (
        type(a) is FlatArrays
        and type(b) is FlatArrays
        and a.flat is not None
        and b.flat is not None
        and (a.layout is b.layout or a.layout == b.layout)
        and a.flat.dtype == b.flat.dtype
    ):
        return a.layout, a.flat, b.flat
    return None


def flat_empty(like: Mapping[str, Any]) -> dict[str, npt.NDArray[Any]]:
    """Uninitialised arrays shaped like ``like``: a :class:`FlatArrays` when they can
    share a buffer, else a dict of separate arrays."""
    if type(like) is FlatArrays and like.flat is not None:  # every step's new parameters
        return FlatArrays(np.empty_like(like.flat), like.layout)
    found = layout_of(like)
    if found is None:
        return {k: np.empty_like(v) for k, v in like.items()}
    layout, dtype = found
    return FlatArrays(np.empty(sum(size for _, _, size in layout), dtype), layout)


def flat_zeros(like: Mapping[str, Any], value: float = 0.0) -> dict[str, npt.NDArray[Any]]:
    """Arrays shaped like ``like`` filled with ``value``, sharing a buffer when they can."""
    arrays = flat_empty(like)
    flat = arrays.flat if isinstance(arrays, FlatArrays) else None
    if flat is not None:
        flat.fill(value)
    else:
        for array in arrays.values():
            array.fill(value)
    return arrays


BLOCK_BYTES = 128 << 10
"""Bytes of each array that an element-wise pass (:func:`buffers`) works on at a time.
Adam makes a dozen passes over the gradient and its two moments; over a whole buffer of
millions of parameters every pass reads and writes memory, while over blocks this size
the three arrays' blocks stay in the core's L2 cache for all twelve. Each element gets the
same operations either way, so the bits are the same. Adam on 6,300,000 float32
parameters (one thread, median of 29 steps): 20.0 ms over the whole buffer, 14.1 ms in
blocks of 128 KiB (14.1 at 256 KiB, 15.4 at 64 KiB, 18.0 at 32 KiB: there the numpy calls
cost more than the cache saves)."""


def buffers(*dicts: Mapping[str, npt.NDArray[Any]]) -> list[tuple[npt.NDArray[Any], ...]]:
    """The arrays to work on element by element, matched across ``dicts`` (which have
    the same keys and shapes): tuples of whole buffers when every dict is a
    :class:`FlatArrays` of one layout, else of each key's arrays (in the first dict's
    order); an array larger than :data:`BLOCK_BYTES` comes in consecutive blocks, one
    tuple each (views: writes to them are writes to the arrays).

    Example:
        >>> like = {"w": np.ones(2), "b": np.ones(1)}
        >>> a, b = flat_zeros(like), flat_zeros(like)
        >>> [len(t[0]) for t in buffers(a, b)]
        [3]
        >>> [len(t[0]) for t in buffers(a, dict(b))]
        [2, 1]
        >>> big = flat_zeros({"w": np.ones(100_000, np.float32)})
        >>> [len(t[0]) for t in buffers(big, big)]
        [32768, 32768, 32768, 1696]
    """
    flats = shared_buffers(*dicts)
    if flats is not None:
        return blocks_of(flats)
    found: list[tuple[npt.NDArray[Any], ...]] = []
    for key in dicts[0]:
        found += blocks_of(tuple([d[key] for d in dicts]))  # sized: no tuple resize
    return found


def shared_buffers(*dicts: Mapping[str, npt.NDArray[Any]]) -> tuple[npt.NDArray[Any], ...] | None:
    """The buffers of ``dicts`` when every one is a :class:`FlatArrays` whose buffer is
    live, all of one layout and dtype (so of the same keys and shapes), else None."""
    first = dicts[0]
    if type(first) is not FlatArrays or first.flat is None:
        return None
    flats = [first.flat]
    for other in dicts[1:]:
        shared = one_buffer_layout(first, other)
        if shared is None:
            return None
        flats.append(shared[2])
    return tuple(flats)


def blocks_of(arrays: tuple[npt.NDArray[Any], ...]) -> list[tuple[npt.NDArray[Any], ...]]:
    """``arrays`` (of one shape) as consecutive blocks of :data:`BLOCK_BYTES` of the
    first one, or whole when that is one block or one is not C-contiguous (asked once a
    pass for every model: a small one pays one comparison)."""
    first = arrays[0]
    size, step = first.size, BLOCK_BYTES // first.itemsize
    if size <= step or not all(a.flags.c_contiguous for a in arrays):
        return [arrays]
    rows = [a.reshape(-1) for a in arrays]  # views: C-contiguous
    return [tuple([r[start : start + step] for r in rows]) for start in range(0, size, step)]


def constants(dtype: np.dtype[Any], *values: float) -> tuple[npt.NDArray[Any], ...]:
    """Hyper-parameters ``values`` as read-only 0-d arrays of ``dtype`` (cached), the
    operands of element-wise passes over arrays of ``dtype``; a value that changes every
    step (a bias correction, a scheduled learning rate) takes ``np.array(value, dtype)``.

    The same bits as passing the Python floats: numpy 2 casts a Python scalar to the
    array's dtype (NEP 50), as ``np.array(value, dtype)`` does. Numpy takes a 0-d array
    of the right dtype in about half the time of a Python float (0.62 against 1.02 µs a
    multiply of 65 float32 values, interleaved in one run). Values with a zero among them
    are made afresh: ``0.0`` and ``-0.0`` are one key of a cache, and the sign of a zero
    factor shows in the bits.

    Example:
        >>> [(a.dtype, a.shape) for a in constants(np.dtype(np.float32), 0.9, 1e-8)]
        [(dtype('float32'), ()), (dtype('float32'), ())]
    """
    if all(values):
        return _constants(dtype, *values)
    return tuple([np.array(value, dtype) for value in values])


@functools.lru_cache(maxsize=64)
def _constants(dtype: np.dtype[Any], *values: float) -> tuple[npt.NDArray[Any], ...]:
    arrays = tuple([np.array(value, dtype) for value in values])
    for array in arrays:
        array.flags.writeable = False
    return arrays


def flat_or_values(arrays: Mapping[str, npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
    """The arrays to work on for one dict: its buffer, or its arrays."""
    if type(arrays) is FlatArrays and arrays.flat is not None:
        return [arrays.flat]
    return list(arrays.values())


def freeze(arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Make the arrays of ``arrays`` read-only, and its buffer if it has one."""
    for array in arrays.values():
        array.flags.writeable = False
    if type(arrays) is FlatArrays and arrays.flat is not None:
        arrays.flat.flags.writeable = False


def buffers_in(tree: Any) -> list[npt.NDArray[Any]]:
    """The arrays of an optimizer state ``tree`` to back up or check, with each
    :class:`FlatArrays` as its one buffer (its arrays, in :func:`~._tree.leaves`' order,
    otherwise).

    Example:
        >>> state = (3, flat_zeros({"w": np.ones(2), "b": np.ones(1)}), np.ones(4))
        >>> [a.shape for a in buffers_in(state)]
        [(3,), (4,)]
    """
    if not isinstance(tree, _CONTAINERS):
        return [tree] if isinstance(tree, np.ndarray) else []
    found: list[npt.NDArray[Any]] = []
    _collect(tree, found)
    return found


def _collect(tree: Any, found: list[npt.NDArray[Any]]) -> None:
    # Walked every step: leaves and buffers are taken in the loop, and only containers
    # with something in them cost a call (Adam's state in a chain: two calls, not five).
    if type(tree) is FlatArrays and tree.flat is not None:
        found.append(tree.flat)
        return
    for item in tree.values() if isinstance(tree, dict) else tree:
        if isinstance(item, np.ndarray):
            found.append(item)
        elif type(item) is FlatArrays and item.flat is not None:
            found.append(item.flat)
        elif isinstance(item, _CONTAINERS) and item:
            _collect(item, found)


_CONTAINERS = (dict, tuple)
