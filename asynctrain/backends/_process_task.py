"""A task's wire format: its head (the function and the shared-array handles it starts
with) pickled once and recognised by its bytes, its tail pickled per task.

Every shard task of a fit is ``fn(model, data, params, grads, group)`` where only the last
argument changes: the function pickles as a name and each handle as its layout, so the
first four are the same bytes every time. Pickling them cost the caller about 15 µs a
task and unpickling them the worker as much (building the handles' field tuples anew).
So :class:`TaskEncoder` (the parent's) keeps the head's pickle per function and handle
keys and sends it beside the tail's; :class:`TaskDecoder` (a worker's) keeps what each
head it has seen unpickled to, keyed by its bytes, so it unpickles only the tail.

A head is only what pickles to the same objects every time: a plain function (pickled
by name) and :class:`ProcessShared` handles (a key and a fixed layout; their contents
live in shared memory and are read at run time). Anything else goes in the tail, so a
callable object whose state changes between tasks is pickled anew each time. Nothing
here depends on which worker a task lands on: a new or replacement worker decodes a
head it has not seen, and both caches drop a handle's heads when it is released.

A task's body after its 8-byte id: 8 bytes of head length (little endian), the head's
pickle of ``(fn, handles)``, then the tail's pickle of the remaining arguments. A head
length of 0 means no head: the tail is a pickle of ``(fn, args)``.
"""

from __future__ import annotations

import collections
import pickle
import types
from typing import Any

from asynctrain.backends._process_shared import ProcessShared

KEEP = 64  # heads each side keeps: a few per fit (shard, group and evaluation tasks)
_LENGTH = 8


def _pickle(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class TaskEncoder:
    """The parent's side: encodes ``fn(*args)`` as a task, reusing the pickle of its head.

    Example:
        >>> encoder = TaskEncoder()
        >>> parts = encoder.encode(pow, (2, 10))
        >>> TaskDecoder().decode(memoryview(b"".join(parts)))
        (<built-in function pow>, (2, 10))
    """

    def __init__(self, keep: int = KEEP) -> None:
        self._keep = keep
        self._heads: collections.OrderedDict[tuple[Any, ...], bytes] = collections.OrderedDict()

    def encode(self, fn: Any, args: tuple[Any, ...]) -> tuple[bytes, bytes, bytes]:
        """The parts of the task's body: head length, head, tail (raises if they cannot be
        pickled)."""
        if not _by_name(fn):
            return bytes(_LENGTH), b"", _pickle((fn, args))
        count = _handles(args)
        key = (fn, *(handle.key for handle in args[:count]))
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = _pickle((fn, args[:count]))
            while len(self._heads) > self._keep:
                self._heads.popitem(last=False)
        self._heads.move_to_end(key)
        return len(head).to_bytes(_LENGTH, "little"), head, _pickle(args[count:])

    def forget(self, key: str) -> None:
        """Drop the heads that carry the handle ``key`` (it is being released)."""
        for head in [h for h in self._heads if key in h[1:]]:
            del self._heads[head]

    def __len__(self) -> int:
        return len(self._heads)


class TaskDecoder:
    """A worker's side: decodes a task body, unpickling each head once.

    Example:
        >>> body = b"".join(TaskEncoder().encode(divmod, (7, 2)))
        >>> fn, args = TaskDecoder().decode(memoryview(body))
        >>> fn(*args)
        (3, 1)
    """

    def __init__(self, keep: int = KEEP) -> None:
        self._keep = keep
        # head bytes -> (fn, handles, their keys)
        self._heads: collections.OrderedDict[bytes, tuple[Any, tuple[Any, ...], frozenset[str]]]
        self._heads = collections.OrderedDict()

    def decode(self, body: memoryview) -> tuple[Any, tuple[Any, ...]]:
        """``(fn, args)`` of a task body (after its id); raises what unpickling raises."""
        length = int.from_bytes(body[:_LENGTH], "little")
        tail = body[_LENGTH + length :]
        if not length:
            fn, args = pickle.loads(tail)
            return fn, args
        head = bytes(body[_LENGTH : _LENGTH + length])
        known = self._heads.get(head)
        if known is None:
            fn, handles = pickle.loads(head)
            known = self._heads[head] = (fn, handles, frozenset(h.key for h in handles))
            while len(self._heads) > self._keep:
                self._heads.popitem(last=False)
        self._heads.move_to_end(head)
        rest: tuple[Any, ...] = pickle.loads(tail)
        return known[0], known[1] + rest

    def keys(self) -> set[str]:
        """Keys of the handles in the heads kept."""
        return {key for _, _, keys in self._heads.values() for key in keys}

    def forget(self, key: str) -> None:
        """Drop the heads that carry the handle ``key`` (its segment is being unmapped)."""
        for head in [h for h, (_, _, keys) in self._heads.items() if key in keys]:
            del self._heads[head]

    def __len__(self) -> int:
        return len(self._heads)


def _by_name(fn: Any) -> bool:
    """Whether ``fn`` pickles as its name alone: a plain function, or a builtin of a module
    (a builtin bound to an object, ``items.append``, pickles that object too)."""
    if isinstance(fn, types.FunctionType):
        return True
    return isinstance(fn, types.BuiltinFunctionType) and (
        fn.__self__ is None or isinstance(fn.__self__, types.ModuleType)
    )


def _handles(args: tuple[Any, ...]) -> int:
    """How many of ``args`` lead with shared-array handles."""
    count = 0
    while count < len(args) and type(args[count]) is ProcessShared:
        count += 1
    return count
