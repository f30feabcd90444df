"""A test double with a process backend's semantics, in one process.

Every task's function and arguments go through pickle (what a process pool does), and
shared arrays are fixed buffers: ``write`` copies into a slot and ``read`` returns
read-only views of it (what shared memory does). So a mode that reads a slot after it
was overwritten, keeps a view it should have copied, or sends something unpicklable,
fails here as it would on the process backend, while the in-process backends (which
store references) would hide it.
"""

from __future__ import annotations

import itertools
import pickle
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from asynctrain.backends import ThreadBackend

T = TypeVar("T")
_HANDLES: weakref.WeakValueDictionary[int, CopyShared] = weakref.WeakValueDictionary()
_IDS = itertools.count()


class CopyShared:
    """Slots of fixed buffers; pickles as a reference to the same buffers."""

    def __init__(self, arrays: Mapping[str, npt.NDArray[Any]], slots: int) -> None:
        self.slots = slots
        self._slots = [{k: np.array(v) for k, v in arrays.items()} for _ in range(slots)]
        self.id = next(_IDS)
        _HANDLES[self.id] = self

    def read(self, slot: int = 0) -> dict[str, npt.NDArray[Any]]:
        views = {}
        for key, value in self._slots[slot].items():
            views[key] = value.view()
            views[key].flags.writeable = False
        return views

    def write(self, slot: int, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        target = self._slots[slot]
        assert arrays.keys() == target.keys(), (arrays.keys(), target.keys())
        for key, value in arrays.items():
            assert value.shape == target[key].shape, key
            assert value.dtype == target[key].dtype, key
            np.copyto(target[key], value)

    def __reduce__(self) -> tuple[Callable[[int], CopyShared], tuple[int]]:
        return _lookup, (self.id,)


def _lookup(handle_id: int) -> CopyShared:
    return _HANDLES[handle_id]


class CopyingBackend(ThreadBackend):
    """A thread pool that pickles every task and shares arrays by copy (see above)."""

    name = "copying"

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        fn, args = pickle.loads(pickle.dumps((fn, args)))
        return await super().run(fn, *args)

    async def share(self, arrays: Mapping[str, npt.NDArray[Any]], *, slots: int = 1) -> Any:
        await self._ensure_open()
        return CopyShared(arrays, slots)
