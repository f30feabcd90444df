"""Optimizer states as data, the one walker of their trees: to JSON plus arrays and back
into a trusted template (checkpoints), and to flat named arrays and back (local mode's
per-shard states in shared slots).

An optimizer state is a tree of tuples (NamedTuples included), ``dict[str, ...]``,
ndarrays and plain scalars. :func:`encode` turns it into a JSON-ready *spec* plus a list of
arrays; :func:`decode` rebuilds a state by walking the structure of a *template*, the
``optimizer.init(params)`` of whoever resumes, so no type named in a file is ever looked
up or constructed. Every difference between the spec and the template is reported.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigTypeError

Arrays = list[npt.NDArray[Any]]

_SCALARS: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}


def encode(tree: Any, arrays: Arrays, *, where: str = "", name: str = "optimizer state") -> Any:
    """Return the JSON spec of ``tree``, appending its arrays to ``arrays`` in order.

    Floats are stored as ``float.hex`` so that every bit survives, NaN and infinities
    included. A numpy scalar is stored as a 0-d array. ``name`` says what ``tree`` is in
    the error.

    Raises:
        TypeError: a value that is not plain data (a function, an object, ...).

    Example:
        >>> arrays = []
        >>> encode((3, {"w": np.zeros(2)}), arrays)
        {'tuple': [{'int': 3}, {'dict': {'w': {'array': 0}}}], 'type': 'tuple'}
    """
    if isinstance(tree, np.ndarray | np.generic):
        arrays.append(np.asarray(tree))
        return {"array": len(arrays) - 1}
    if tree is None:
        return {"none": None}
    kind = _SCALARS.get(type(tree))
    if kind is not None:
        return {kind: tree.hex() if kind == "float" else tree}
    if isinstance(tree, tuple):
        children = [encode(v, arrays, where=f"{where}[{i}]", name=name) for i, v in enumerate(tree)]
        return {"tuple": children, "type": type(tree).__name__}
    if isinstance(tree, dict) and all(isinstance(k, str) for k in tree):
        return {
            "dict": {
                k: encode(v, arrays, where=f"{where}[{k!r}]", name=name) for k, v in tree.items()
            }
        }
    raise TypeError(
        f"{name}{where} holds a {type(tree).__name__}, which is not plain data "
        "(tuples, dict[str, ...], arrays, int, float, bool, str, None)"
    )


def decode(template: Any, spec: Any, arrays: Arrays, problems: list[str], where: str = "") -> Any:
    """Rebuild a tree shaped like ``template`` from ``spec`` and ``arrays``.

    Each mismatch (structure, length, keys, shape, dtype, scalar type) is appended to
    ``problems`` as one line; the template's value stands in for a mismatched part, so a
    caller checks ``problems`` before using the result.

    Example:
        >>> problems = []
        >>> decode((0,), {"tuple": [{"int": 7}], "type": "tuple"}, [], problems)
        (7,)
    """
    for kind, decoder in _DECODERS:
        if kind(template):
            return decoder(template, spec, arrays, problems, where or "state")
    problems.append(f"{where or 'state'}: this optimizer holds a {type(template).__name__}")
    return template


def _walk(tree: Any) -> list[Any]:
    """Every leaf of ``tree`` (arrays and scalars), depth first, in insertion order."""
    found: list[Any] = []
    _collect(tree, found)
    return found


def _collect(tree: Any, found: list[Any]) -> None:
    # A list filled by plain recursion, not nested generators (``yield from`` chains cost
    # twice as much).
    if isinstance(tree, dict):
        for value in tree.values():
            _collect(value, found)
    elif isinstance(tree, tuple):
        for item in tree:
            _collect(item, found)
    else:
        found.append(tree)


def leaves(tree: Any, where: str = "") -> Iterator[tuple[str, npt.NDArray[Any]]]:
    """Yield ``(path, array)`` for every ndarray in ``tree``, in a fixed order.

    Example:
        >>> [path for path, _ in leaves(({"w": np.zeros(1)}, np.ones(2)))]
        ["[0]['w']", '[1]']
    """
    if isinstance(tree, np.ndarray):
        yield where, tree
    elif isinstance(tree, tuple):
        for i, value in enumerate(tree):
            yield from leaves(value, f"{where}[{i}]")
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, f"{where}[{key!r}]")


def _decode_array(
    template: npt.NDArray[Any], spec: Any, arrays: Arrays, problems: list[str], where: str
) -> npt.NDArray[Any]:
    index = spec.get("array") if isinstance(spec, dict) else None
    if type(index) is not int or not 0 <= index < len(arrays):
        problems.append(f"{where}: an array here, {_describe(spec)} in the checkpoint")
        return template
    array = arrays[index]
    if array.shape != template.shape or array.dtype != template.dtype:
        problems.append(
            f"{where}: {array.dtype}{list(array.shape)} in the checkpoint, "
            f"{template.dtype}{list(template.shape)} here"
        )
        return template
    return array


def _decode_scalar(
    template: Any, spec: Any, arrays: Arrays, problems: list[str], where: str
) -> Any:
    if isinstance(template, np.generic):
        array = _decode_array(np.asarray(template), spec, arrays, problems, where)
        return array[()]
    kind = "none" if template is None else _SCALARS[type(template)]
    if not (isinstance(spec, dict) and kind in spec):
        problems.append(f"{where}: a {kind} here, {_describe(spec)} in the checkpoint")
        return template
    value = spec[kind]
    if kind == "float" and isinstance(value, str):
        try:
            return float.fromhex(value)
        except (ValueError, OverflowError):
            pass
    elif kind == "none" or type(value) is type(template):
        return value
    problems.append(f"{where}: {value!r} is not a valid {kind}")
    return template


def _decode_tuple(template: Any, spec: Any, arrays: Arrays, problems: list[str], where: str) -> Any:
    children = spec.get("tuple") if isinstance(spec, dict) else None
    name = type(template).__name__
    if not isinstance(children, list) or len(children) != len(template):
        got = f"{len(children)} entries" if isinstance(children, list) else _describe(spec)
        problems.append(
            f"{where}: {name} with {len(template)} entries here, {got} in the checkpoint"
        )
        return template
    if spec.get("type") != name:
        problems.append(f"{where}: {spec.get('type')!r} in the checkpoint, {name!r} here")
    values = [
        decode(t, s, arrays, problems, f"{where}[{i}]")
        for i, (t, s) in enumerate(zip(template, children, strict=True))
    ]
    return type(template)(*values) if hasattr(template, "_fields") else tuple(values)


def _decode_dict(template: Any, spec: Any, arrays: Arrays, problems: list[str], where: str) -> Any:
    children = spec.get("dict") if isinstance(spec, dict) else None
    if not isinstance(children, dict) or children.keys() != template.keys():
        got = sorted(children) if isinstance(children, dict) else _describe(spec)
        problems.append(f"{where}: keys {sorted(template)} here, {got} in the checkpoint")
        return template
    return {
        k: decode(v, children[k], arrays, problems, f"{where}[{k!r}]") for k, v in template.items()
    }


def _describe(spec: Any) -> str:
    if isinstance(spec, dict) and len(spec) >= 1:
        kind = next(iter(spec))
        return "an array" if kind == "array" else f"a {kind}"
    return repr(spec)[:40]


def _is_scalar(value: Any) -> bool:
    return value is None or type(value) in _SCALARS or isinstance(value, np.generic)


_DECODERS: list[tuple[Callable[[Any], bool], Callable[..., Any]]] = [
    (lambda t: isinstance(t, np.ndarray), _decode_array),
    (_is_scalar, _decode_scalar),
    (lambda t: isinstance(t, tuple), _decode_tuple),
    (lambda t: isinstance(t, dict), _decode_dict),
]


def decode_plain(spec: Any, arrays: Arrays, problems: list[str], where: str = "state") -> Any:
    """Rebuild plain data from :func:`encode`'s ``spec`` without a template.

    For what has no trusted template (a callback's state): only dicts, plain tuples
    (a NamedTuple comes back as a tuple), arrays, scalars and None are built, so no type
    named in a file is looked up. Each malformed part is appended to ``problems`` and
    comes back as None.

    Example:
        >>> arrays = []
        >>> decode_plain(encode({"best": 0.5, "at": (3, None)}, arrays), arrays, [])
        {'best': 0.5, 'at': (3, None)}
    """
    node = spec if isinstance(spec, dict) else {}
    children = node.get("dict")
    if isinstance(children, dict):
        return {
            str(k): decode_plain(v, arrays, problems, f"{where}[{k!r}]")
            for k, v in children.items()
        }
    items = node.get("tuple")
    if isinstance(items, list):
        return tuple(
            decode_plain(v, arrays, problems, f"{where}[{i}]") for i, v in enumerate(items)
        )
    index = node.get("array")
    if type(index) is int and 0 <= index < len(arrays):
        return arrays[index]
    if "none" in node and node["none"] is None:
        return None
    number = node.get("float")
    if isinstance(number, str):
        try:
            return float.fromhex(number)
        except (ValueError, OverflowError):
            pass
    for kind, cls in ((k, c) for c, k in _SCALARS.items() if k != "float"):
        if type(node.get(kind)) is cls:
            return node[kind]
    problems.append(f"{where}: {_describe(spec)} is not valid data")
    return None


# -- flat named arrays (local mode's per-shard optimizer states) ------------------------


class Leaf(NamedTuple):
    """A leaf's place in a :func:`skeleton`: ``"array"``, ``"int"``, ``"float"`` or ``"bool"``."""

    kind: str


_KINDS = {"int": int, "float": float, "bool": bool}


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
        for i, leaf in enumerate(_walk(tree))
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
        return np.array(value) if node.kind == "array" else _KINDS[node.kind](value[0])
    if isinstance(node, dict):
        return {key: _build(child, values) for key, child in node.items()}
    return _like(node, [_build(child, values) for child in node])


def _like(template: tuple[Any, ...], items: list[Any]) -> tuple[Any, ...]:
    """A tuple of ``items`` of the same kind as ``template`` (a NamedTuple stays one)."""
    if hasattr(template, "_fields"):
        return type(template)(*items)
    return tuple(items)
