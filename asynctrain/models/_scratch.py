"""Scratch arrays a model reuses from call to call instead of allocating them anew.

A fresh megabyte-sized array per call is not free: the allocator hands such blocks out
as new pages, and the first write to each page faults (the MLP's old ``loss_and_grad``
took about 1,100 page faults per 2,048-row shard in a fresh process, a fifth of its
time; how often depends on the heap's history, which a library does not control). A
:class:`Workspace` keeps its arrays between calls; :func:`borrowed` lends a caller one
workspace and takes it back afterwards. Idle workspaces wait in a list whose ``pop`` and
``append`` are atomic, so callers running at the same time (worker threads) never hold
the same one, and there are never more workspaces than callers that ran at once.

Nothing here is part of a model: a model stays a small frozen dataclass that pickles
clean, and each process keeps its own idle workspaces.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import numpy.typing as npt


class Workspace:
    """Named scratch arrays of one caller; what they hold on loan is garbage.

    Example:
        >>> import numpy as np
        >>> work = Workspace()
        >>> a = work.array("h", (2, 3), np.float32)
        >>> b = work.array("h", (1, 3), np.float32)  # the same memory, a smaller view
        >>> np.shares_memory(a, b)
        True
    """

    __slots__ = ("_arrays", "_filled")

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, np.dtype[Any]], npt.NDArray[Any]] = {}
        self._filled: dict[tuple[float, np.dtype[Any]], npt.NDArray[Any]] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``: the memory of
        the last array of that ``name`` and dtype when it was at least as large."""
        kind = np.dtype(dtype)
        size = math.prod(shape)
        flat = self._arrays.get((name, kind))
        if flat is None or flat.size < size:
            flat = self._arrays[(name, kind)] = np.empty(size, kind)
        return flat[:size].reshape(shape)

    def filled(
        self, value: float, shape: tuple[int, ...], dtype: npt.DTypeLike
    ) -> npt.NDArray[Any]:
        """A read-only array of ``shape`` and ``dtype`` holding ``value`` everywhere,
        filled once and kept (``ones @ a`` sums columns; a ufunc runs faster against an
        array of zeros than against the scalar 0)."""
        kind = np.dtype(dtype)
        size = math.prod(shape)
        flat = self._filled.get((value, kind))
        if flat is None or flat.size < size:
            flat = self._filled[(value, kind)] = np.full(size, value, kind)
            flat.flags.writeable = False
        return flat[:size].reshape(shape)

    def __repr__(self) -> str:
        arrays = [*self._arrays.values(), *self._filled.values()]
        return f"<Workspace arrays={len(arrays)} bytes={sum(a.nbytes for a in arrays)}>"


_idle: list[Workspace] = []


class _Loan:
    """The context manager :func:`borrowed` returns (a class: a generator-based one
    costs a few microseconds more a call)."""

    __slots__ = ("_work",)

    def __enter__(self) -> Workspace:
        try:
            self._work = _idle.pop()
        except IndexError:
            self._work = Workspace()
        return self._work

    def __exit__(self, *exc_info: object) -> None:
        _idle.append(self._work)


def borrowed() -> contextlib.AbstractContextManager[Workspace]:
    """Lend the caller a workspace no concurrent caller holds; take it back afterwards.

    Example:
        >>> with borrowed() as work:
        ...     work.array("z", (4, 8), "float32").shape
        (4, 8)
    """
    return _Loan()
