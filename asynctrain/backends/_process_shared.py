"""Shared arrays for worker processes: a small picklable layout over one shared-memory segment.

The owner lays the arrays of every slot out in one :class:`~asynctrain._shm.Segment`. A
handle pickles as that layout only (names, shapes, dtypes, offsets); in a worker, ``read``
maps the segment once per process and returns numpy views on it. An array that is a whole
memory map of a ``.npy`` file (``np.load(path, mmap_mode="r")``, or an array in
``asynctrain.data``'s shared memory, which is such a file in /dev/shm) is shared as the
file itself: workers map the file, nothing is copied, and the owner's handle keeps the
array alive (and so the file's name) until it is released.

A worker keeps its maps of such files from one handle to the next (:func:`keep_file_maps`):
every fit shares its dataset anew, and mapping a file again cost each worker a page fault
per 64 KB touched and an unmap at release (a 480 MB dataset: about 150 ms per worker and
fit here, where an epoch takes a few hundred). A kept map is dropped once its file is gone
(:func:`prune_file_maps`, run at every release and when the owner's array dies).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import ConfigError, ConfigTypeError, StateError
from asynctrain._shm import Segment
from asynctrain.backends._base import Arrays

_ALIGN = 64  # cache-line (and AVX-512) alignment for every array
_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class Field(NamedTuple):
    """Where one named array lives: at ``offset`` within each slot, or in a ``.npy`` file."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    path: str | None = None


class _Mapped:
    """A segment mapped into this process, with its views per slot built once."""

    def __init__(
        self,
        segment: Segment,
        shared: ProcessShared,
        files: tuple[Any, ...] = (),
        maps: collections.OrderedDict[tuple[Any, ...], Any] | None = None,
    ) -> None:
        self.segment = segment
        self.files = files  # the owner's arrays shared as their files: alive until release
        self.writable = [_views(segment, shared, s, maps) for s in range(shared.slots)]
        self.readonly = [_frozen(views) for views in self.writable]

    def close(self) -> None:
        self.writable = self.readonly = []
        self.files = ()
        self.segment.close()


# key -> mapping, for handles unpickled in this process (each worker attaches once).
_ATTACHED: dict[str, _Mapped] = {}
# (path, device, inode, offset, dtype, shape) -> the file's map, kept across handles in a
# worker (see keep_file_maps); None: maps are not kept (the owner's process).
_FILE_MAPS: collections.OrderedDict[tuple[Any, ...], np.memmap[Any, Any]] | None = None
KEEP_FILE_MAPS = 16


class ProcessShared:
    """:class:`~asynctrain.backends.SharedArrays` on shared memory, for worker processes.

    Created by :meth:`ProcessBackend.share`; pickling it sends only its layout (a few hundred
    bytes), so tasks carry it freely. ``read`` returns read-only views; ``write`` copies into
    the slot (same keys and shapes; values are cast to the slot's dtype).
    """

    __slots__ = ("_mapped", "fields", "key", "slot_bytes", "slots")

    def __init__(self, key: str, fields: tuple[Field, ...], slots: int, slot_bytes: int) -> None:
        self.key = key
        self.fields = fields
        self.slots = slots
        self.slot_bytes = slot_bytes
        self._mapped: _Mapped | None = None

    def read(self, slot: int = 0) -> Arrays:
        """Return read-only views of the arrays in ``slot``."""
        return dict(self._mapping().readonly[slot])

    def write(self, slot: int, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Copy ``arrays`` into ``slot``.

        Raises:
            ConfigError: a key is missing or extra, a shape differs, or the array is a
                read-only file.
        """
        target = self._mapping().writable[slot]
        if arrays.keys() != target.keys():
            raise ConfigError(f"write to {self!r}: keys {sorted(arrays)} != {sorted(target)}")
        for field in self.fields:
            value = np.asarray(arrays[field.key])
            if field.path is not None or value.shape != field.shape:
                raise ConfigError(
                    f"write to {self!r}: {field.key!r} has shape {value.shape}, the slot "
                    f"holds {field.shape}{' (a read-only .npy file)' if field.path else ''}"
                )
            np.copyto(target[field.key], value, casting="same_kind")

    @property
    def nbytes(self) -> int:
        """Bytes of shared memory this handle uses (files mapped in place count nothing)."""
        return self.slot_bytes * self.slots

    def _mapping(self) -> _Mapped:
        if self._mapped is None:
            mapped = _ATTACHED.get(self.key)
            if mapped is None:
                try:
                    segment = Segment.attach(self.key)
                except FileNotFoundError:
                    raise StateError(f"{self!r} was released by its backend") from None
                mapped = _ATTACHED[self.key] = _Mapped(segment, self, maps=_FILE_MAPS)
            self._mapped = mapped
        return self._mapped

    def __getstate__(self) -> tuple[str, tuple[Field, ...], int, int]:
        return (self.key, self.fields, self.slots, self.slot_bytes)

    def __setstate__(self, state: tuple[str, tuple[Field, ...], int, int]) -> None:
        self.key, self.fields, self.slots, self.slot_bytes = state
        self._mapped = None

    def __repr__(self) -> str:
        shapes = {f.key: f.shape for f in self.fields}
        return f"<ProcessShared {self.key} slots={self.slots} arrays={shapes}>"


def create_shared(
    arrays: Mapping[str, npt.ArrayLike], slots: int
) -> tuple[ProcessShared, Callable[[], None]]:
    """Allocate shared memory for ``slots`` copies of ``arrays``.

    Returns:
        The owner's handle, and a function that copies ``arrays`` into every slot (slow for
        a large dataset: call it off the event loop).

    Raises:
        ConfigTypeError: an array holds Python objects.
    """
    values = {key: np.asarray(value) for key, value in arrays.items()}
    fields, slot_bytes = _layout(values, slots)
    segment = Segment.create(slot_bytes * slots)
    shared = ProcessShared(segment.name, fields, slots, slot_bytes)
    files = tuple(values[field.key] for field in fields if field.path is not None)
    shared._mapped = _Mapped(segment, shared, files)
    mapped = shared._mapped

    def fill() -> None:
        for views in mapped.writable:
            for field in fields:
                if field.path is None:
                    np.copyto(views[field.key], values[field.key])

    return shared, fill


def release_shared(shared: ProcessShared) -> None:
    """Unlink the segment of the owner's handle ``shared`` (its views stay valid until freed)."""
    mapped, shared._mapped = shared._mapped, None
    if mapped is not None:
        mapped.segment.unlink()
        mapped.close()


def forget(key: str) -> None:
    """Unmap the segment ``key`` from this process if it was attached (workers, on release),
    and drop the kept maps of files that are gone."""
    mapped = _ATTACHED.pop(key, None)
    if mapped is not None:
        mapped.close()
    prune_file_maps()


def owner_maps(shared: ProcessShared) -> list[np.memmap[Any, Any]]:
    """The memory maps behind the owner's arrays that ``shared`` shares as their files
    (whose death unlinks a file of asynctrain's shared memory)."""
    maps = []
    for array in () if shared._mapped is None else shared._mapped.files:
        base = array
        while base is not None and not isinstance(base, np.memmap):
            base = base.base
        if base is not None:
            maps.append(base)
    return maps


def keep_file_maps() -> None:
    """From now on, keep this process's maps of shared ``.npy`` files across handles (a
    worker calls it once; the owner's process never does: its arrays hold their own)."""
    global _FILE_MAPS
    if _FILE_MAPS is None:
        _FILE_MAPS = collections.OrderedDict()


def prune_file_maps() -> None:
    """Drop the kept maps whose file was unlinked or replaced (its pages are freed once
    no view of them remains)."""
    if not _FILE_MAPS:
        return
    for identity in list(_FILE_MAPS):
        if _file_identity(identity[0]) != identity[1:3]:
            del _FILE_MAPS[identity]


def file_maps() -> list[str]:
    """Paths of the file maps this process keeps (for tests)."""
    return [identity[0] for identity in _FILE_MAPS or ()]


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _file_map(field: Field, maps: collections.OrderedDict[tuple[Any, ...], Any]) -> Any:
    """The kept map of ``field``'s file, mapped now if this file (by device and inode) with
    this layout has none."""
    assert field.path is not None
    found = _file_identity(field.path)
    if found is None:
        raise FileNotFoundError(field.path)
    identity = (field.path, *found, field.offset, field.dtype, field.shape)
    view = maps.get(identity)
    if view is None:
        view = maps[identity] = np.memmap(
            field.path, np.dtype(field.dtype), "r", field.offset, field.shape
        )
        while len(maps) > KEEP_FILE_MAPS:
            maps.popitem(last=False)
    maps.move_to_end(identity)
    return view


def _layout(values: Mapping[str, npt.NDArray[Any]], slots: int) -> tuple[tuple[Field, ...], int]:
    fields, offset = [], 0
    for key, value in values.items():
        if value.dtype.hasobject:
            raise ConfigTypeError(
                f"array {key!r} has dtype {value.dtype}, which cannot live in shared memory; "
                "convert it to a numeric dtype"
            )
        source = npy_source(value) if slots == 1 else None
        if source is not None:
            fields.append(Field(key, value.shape, value.dtype.str, source[1], source[0]))
            continue
        offset = -(-offset // _ALIGN) * _ALIGN
        fields.append(Field(key, value.shape, value.dtype.str, offset))
        offset += value.nbytes
    return tuple(fields), -(-offset // _ALIGN) * _ALIGN


def npy_source(value: npt.NDArray[Any]) -> tuple[str, int] | None:
    """``(path, data offset)`` if ``value`` is the whole array of a mapped ``.npy`` file.

    ``value`` may be the ``np.memmap`` from ``np.load(path, mmap_mode="r")`` or a plain
    ndarray view of all of it. A copy-on-write map (``mmap_mode="c"``) does not qualify:
    its changes are private to this process.
    """
    base: Any = value
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    if base is None or base.mode == "c" or not str(base.filename or "").endswith(".npy"):
        return None
    same = value.ctypes.data == base.ctypes.data and value.shape == base.shape
    if not (same and value.dtype == base.dtype and value.flags.c_contiguous):
        return None
    if not _maps_file_at(base.ctypes.data, str(base.filename)):
        return None  # another file under that name now: the workers would map it
    return _check_header(str(base.filename), base)


def _maps_file_at(address: int, path: str) -> bool:
    """Whether the memory at ``address`` maps the file now at ``path``: False once the
    file mapped was replaced (``os.replace``, a re-save to a temporary name and a rename)
    or unlinked, which workers mapping ``path`` would not see. Read from
    ``/proc/self/maps`` (the mapping's device and inode); where that is missing, True."""
    try:
        with open("/proc/self/maps") as handle:
            for line in handle:
                fields = line.split(maxsplit=5)
                start, _, stop = fields[0].partition("-")
                if int(start, 16) <= address < int(stop, 16):
                    major, _, minor = fields[3].partition(":")
                    mapped = (os.makedev(int(major, 16), int(minor, 16)), int(fields[4]))
                    return _file_identity(path) == mapped
    except (OSError, ValueError, IndexError):
        return True
    return True


def _check_header(path: str, array: np.memmap[Any, Any]) -> tuple[str, int] | None:
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version not in _HEADER_READERS:
                return None
            shape, fortran, dtype = _HEADER_READERS[version](handle)
            offset = handle.tell()
    except (OSError, ValueError):
        return None
    matches = shape == array.shape and dtype == array.dtype and not fortran
    return (path, offset) if matches and array.offset == offset else None


def _views(
    segment: Segment,
    shared: ProcessShared,
    slot: int,
    maps: collections.OrderedDict[tuple[Any, ...], Any] | None,
) -> Arrays:
    views: Arrays = {}
    for field in shared.fields:
        if field.path is not None and maps is not None:
            views[field.key] = _file_map(field, maps)
        elif field.path is not None:
            views[field.key] = np.memmap(
                field.path, np.dtype(field.dtype), "r", field.offset, field.shape
            )
        else:
            offset = slot * shared.slot_bytes + field.offset
            views[field.key] = np.ndarray(
                field.shape, np.dtype(field.dtype), segment.buffer, offset
            )
    return views


def _frozen(views: Arrays) -> Arrays:
    frozen: Arrays = {}
    for key, value in views.items():
        view = value.view(np.ndarray)
        view.flags.writeable = False
        frozen[key] = view
    return frozen
