"""Arrays in shared memory: ``.npy`` files in /dev/shm that worker processes map in place.

An array of at least :data:`MIN_BYTES` is allocated as the ``.npy`` file
``/dev/shm/asynctrain_<pid>_<counter>_locked.npy`` (mode 0o600, its space reserved up
front, its owner lock held by this process until it is unlinked) and mapped with
``np.lib.format.open_memmap``. The process backend shares a whole mapped
``.npy`` file by its path, so its workers map this same memory and nothing is copied.

The file is unlinked when the last view of the array is garbage (or when the interpreter
exits). If the process dies first, multiprocessing's resource tracker unlinks it; if the
tracker died too (SIGKILL of the whole group), the next start sweeps it. Smaller arrays,
and any array where /dev/shm is missing or full, are ordinary private numpy arrays: the
caller never needs to know which it got.
"""

from __future__ import annotations

import math
import os
import weakref
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._shm import SHM_DIR, new_file, remove, reserve, sweep_stale_segments

MIN_BYTES = 1 << 20
"""Arrays smaller than this stay private: copying them into a worker costs next to nothing."""

_held: set[str] = set()  # names of the files whose arrays are alive in this process
_swept = False


def empty(shape: tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """Return an uninitialised C-ordered array, in shared memory when it is large enough.

    Example:
        >>> empty((2, 3), np.float32).shape  # small: an ordinary array
        (2, 3)
    """
    allocated = _allocate(shape, np.dtype(dtype))
    return np.empty(shape, dtype) if allocated is None else allocated


def shared_copy(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Return ``array`` itself if it is in shared memory or cannot go there, else a copy there.

    Example:
        >>> small = np.arange(3)
        >>> shared_copy(small) is small
        True
    """
    if is_shared(array):
        return array
    allocated = _allocate(array.shape, array.dtype)
    if allocated is None:
        return array
    np.copyto(allocated, array)
    return allocated


def is_shared(array: npt.NDArray[Any]) -> bool:
    """Whether ``array`` is all of an array of this module (what workers map as a file)."""
    mapped = shared_map(array)
    if mapped is None:
        return False
    whole = array.ctypes.data == mapped.ctypes.data and array.shape == mapped.shape
    return whole and array.dtype == mapped.dtype and array.flags.c_contiguous


def shared_map(array: npt.NDArray[Any]) -> np.memmap[Any, Any] | None:
    """The map of this module's file that ``array`` views (any part of it), or None."""
    base: Any = array
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    if base is None or base.filename is None:
        return None
    folder, name = os.path.split(str(base.filename))
    return base if folder == SHM_DIR and name in _held else None


def held() -> frozenset[str]:
    """Names of the files in /dev/shm whose arrays are still alive in this process."""
    return frozenset(_held)


def _allocate(shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any] | None:
    if dtype.hasobject or math.prod(shape) * dtype.itemsize < MIN_BYTES:
        return None
    _sweep_once()
    try:
        with new_file(".npy") as (name, fd):
            mapped = np.lib.format.open_memmap(
                os.path.join(SHM_DIR, name), mode="w+", dtype=dtype, shape=shape
            )
            reserve(fd, os.fstat(fd).st_size)
    except OSError:  # no /dev/shm, or no room in it: a private array serves as well
        return None
    _held.add(name)
    # The memmap's mmap object outlives every view of the array, and only them.
    weakref.finalize(mapped.base, _release, name, fd, os.getpid())
    return mapped.view(np.ndarray)


def _release(name: str, lock: int, owner: int) -> None:
    if os.getpid() != owner:  # a forked child's copy of the array: the file is the parent's
        os.close(lock)  # the child's copy of the descriptor; the parent's keeps the lock
        return
    _held.discard(name)
    remove(name, lock)


def _sweep_once() -> None:
    # Files of owners SIGKILLed with their tracker are removed by the first allocation.
    global _swept
    if not _swept:
        _swept = True
        sweep_stale_segments()
