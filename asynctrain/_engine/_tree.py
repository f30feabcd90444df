"""Optimizer states as flat arrays, so local mode can keep one per shard in shared slots.

An optimizer state is plain data: NamedTuples, tuples and dicts of arrays and numbers
(see :mod:`asynctrain.optim`). :func:`skeleton` records its structure once (small and
picklable, it travels with each task); :func:`to_arrays` lists its leaves as named arrays
(numbers as one-element arrays) for a :class:`~asynctrain.backends.SharedArrays` slot;
:func:`rebuild` turns such arrays back into a state of the same structure.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigTypeError


class Leaf(NamedTuple):
    """A leaf's place in a :func:`skeleton`: ``"array"``, ``"int"``, ``"float"`` or ``"bool"``."""

    kind: str


_SCALARS = {"int": int, "float": float, "bool": bool}


def skeleton(tree: Any) -> Any:
    """The structure of ``tree`` with every leaf replaced by a :class:`Leaf`.

    Raises:
        ConfigTypeError: ``tree`` holds something other than tuples, NamedTuples, dicts,
            numpy arrays and numbers.

    Example:
        >>> skeleton((np.zeros(2), {"count": 3}))
        (Leaf(kind='array'), {'count': Leaf(kind='int')})
    """
    if isinstance(tree, np.ndarray):
        return Leaf("array")
    if isinstance(tree, bool | np.bool_):
        return Leaf("bool")
    if isinstance(tree, numbers.Integral):
        return Leaf("int")
    if isinstance(tree, numbers.Real):
        return Leaf("float")
    if isinstance(tree, dict):
        return {key: skeleton(value) for key, value in tree.items()}
    if isinstance(tree, tuple):
        return _like(tree, [skeleton(item) for item in tree])
    raise ConfigTypeError(
        f"local mode keeps one optimizer state per shard and needs states made of tuples, "
        f"NamedTuples, dicts, numpy arrays and numbers; found {type(tree).__name__}"
    )


def to_arrays(tree: Any) -> dict[str, npt.NDArray[Any]]:
    """The leaves of ``tree`` in order, named ``"0"``, ``"1"``, ...; numbers become
    one-element arrays. Arrays are not copied.

    Example:
        >>> to_arrays((np.zeros(2), 3))
        {'0': array([0., 0.]), '1': array([3])}
    """
    return {
        str(i): leaf if isinstance(leaf, np.ndarray) else np.array([leaf])
        for i, leaf in enumerate(_leaves(tree))
    }


def rebuild(skel: Any, arrays: Mapping[str, npt.NDArray[Any]]) -> Any:
    """A state shaped like ``skel`` from ``arrays`` (as made by :func:`to_arrays`).

    Arrays are copied, so the state may be updated in place whatever ``arrays`` are
    (read-only views of a shared slot, say).

    Example:
        >>> rebuild((Leaf("array"), Leaf("int")), {"0": np.ones(2), "1": np.array([3])})
        (array([1., 1.]), 3)
    """
    values = iter(arrays[str(i)] for i in range(len(arrays)))
    return _build(skel, values)


def _build(node: Any, values: Iterator[npt.NDArray[Any]]) -> Any:
    if isinstance(node, Leaf):
        value = next(values)
        return np.array(value) if node.kind == "array" else _SCALARS[node.kind](value[0])
    if isinstance(node, dict):
        return {key: _build(child, values) for key, child in node.items()}
    return _like(node, [_build(child, values) for child in node])


def _leaves(tree: Any) -> Iterator[Any]:
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, tuple):
        for item in tree:
            yield from _leaves(item)
    else:
        yield tree


def _like(template: tuple[Any, ...], items: list[Any]) -> tuple[Any, ...]:
    """A tuple of ``items`` of the same kind as ``template`` (a NamedTuple stays one)."""
    if hasattr(template, "_fields"):
        return type(template)(*items)
    return tuple(items)
