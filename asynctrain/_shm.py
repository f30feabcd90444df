"""POSIX shared memory of asynctrain: private files, each locked by its owner, swept when stale.

Two kinds of file live in /dev/shm: the process backend's segments,
``asynctrain_<owner pid>_<counter>_locked``, and ``asynctrain.data``'s shared arrays,
``asynctrain_<owner pid>_<counter>_locked.npy``. Each is created with mode 0o600 and its
space is reserved up front, so a full /dev/shm raises OSError at once rather than SIGBUS at
the first write. Its owner holds an owner lock on it (:mod:`asynctrain._ownerlock`) for
its whole life and alone unlinks it. The owner registers it with ``multiprocessing``'s
resource tracker, so a file that outlives its owner is unlinked by the tracker; workers
attach without telling the tracker (on Python 3.11 ``SharedMemory(name)`` registers every
attachment, and a worker's tracker would then unlink the owner's segment when the worker
exits) and without a lock. Files of owners that died without their tracker (SIGKILL of the
whole group) are removed by :func:`sweep_stale_segments` at the next start: those whose
lock is free, whatever their pid means in this PID namespace.
"""

from __future__ import annotations

import _posixshmem  # type: ignore[import-not-found]
import contextlib
import itertools
import mmap
import os
import re
from collections.abc import Iterator
from multiprocessing import resource_tracker

from asynctrain._ownerlock import hold, pid_alive, remove_if_abandoned

PREFIX = "asynctrain_"
SHM_DIR = "/dev/shm"
LOCKED = "_locked"  # marks the files whose owner holds an owner lock (older ones do not)
_NAME = re.compile(r"asynctrain_(?P<pid>\d+)_\d+(?P<locked>_locked)?(?:\.npy)?\Z")
_counter = itertools.count()


class Segment:
    """A shared-memory segment mapped into this process.

    Create one with :meth:`create` (the owner) or :meth:`attach` (a worker).

    Example:
        >>> segment = Segment.create(16)
        >>> segment.buffer[:2] = b"ok"
        >>> bytes(Segment.attach(segment.name).buffer[:2])
        b'ok'
        >>> segment.unlink()
    """

    __slots__ = ("_lock", "buffer", "name", "owner")

    def __init__(
        self, name: str, buffer: mmap.mmap, *, owner: bool, lock: int | None = None
    ) -> None:
        self.name = name
        self.buffer = buffer
        self.owner = owner
        self._lock = lock  # the owner's descriptor holding the owner lock

    @classmethod
    def create(cls, size: int) -> Segment:
        """Create and map a new segment of at least ``size`` bytes, owned by this process.

        Raises:
            OSError: /dev/shm is missing or has no room for ``size`` bytes.
        """
        size = max(size, 1)  # a zero-length mapping is an error
        with new_file() as (name, fd):
            reserve(fd, size)
            buffer = mmap.mmap(fd, size)
        return cls(name, buffer, owner=True, lock=fd)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map the existing segment ``name`` without registering it with any tracker."""
        fd = _open(name, os.O_RDWR)
        try:
            buffer = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return cls(name, buffer, owner=False)

    def unlink(self) -> None:
        """Remove the segment's name (owner only) and unmap it when no view uses it."""
        if self.owner:
            self.owner = False
            assert self._lock is not None
            remove(self.name, self._lock)
            self._lock = None
        self.close()

    def close(self) -> None:
        """Unmap the segment now, or, if numpy views still use it, when the last one goes."""
        # With views alive, the mmap object unmaps itself once they are garbage.
        with contextlib.suppress(BufferError):
            self.buffer.close()

    def __repr__(self) -> str:
        role = "owner" if self.owner else "attached"
        return f"<Segment {self.name} {len(self.buffer)} bytes {role}>"


@contextlib.contextmanager
def new_file(suffix: str = "") -> Iterator[tuple[str, int]]:
    """Create an empty file ``asynctrain_<pid>_<counter>_locked<suffix>`` in /dev/shm, 0o600.

    Yields ``(name, fd)`` to the block that sizes and maps it. ``fd`` holds the file's owner
    lock: if the block raises, the file is unlinked and ``fd`` closed; otherwise the file is
    registered with the resource tracker and belongs to the caller, who keeps ``fd`` open
    for the file's life and removes both with :func:`remove`.

    Raises:
        OSError: /dev/shm is missing or not writable.
    """
    name, fd = _create(suffix)
    try:
        os.fchmod(fd, 0o600)  # shm_open applies the umask; make the mode exact
        yield name, fd
    except BaseException:
        _unlink(name)
        os.close(fd)
        raise
    resource_tracker.register("/" + name, "shared_memory")


def _create(suffix: str) -> tuple[str, int]:
    while True:
        name = f"{PREFIX}{os.getpid()}_{next(_counter)}{LOCKED}{suffix}"
        try:
            fd = _open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR)
        except FileExistsError:  # left by a process that had our pid (here or elsewhere)
            continue
        if hold(fd):
            return name, fd
        os.close(fd)  # a sweeper took it in the instant before the lock: it removes it


def reserve(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of the file ``fd`` now (a full tmpfs fails here, not later).

    Raises:
        OSError: no room for ``size`` bytes; the message names the size and /dev/shm.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot reserve {size} bytes of shared memory in {SHM_DIR} ({exc.strerror}); "
            "free space there or enlarge it",
        ) from exc


def remove(name: str, lock: int) -> None:
    """Unlink the file ``name`` made by :func:`new_file`, stop tracking it, then close its
    owner's descriptor ``lock`` (once)."""
    try:
        with contextlib.suppress(FileNotFoundError):
            _unlink(name)
        resource_tracker.unregister("/" + name, "shared_memory")
    finally:
        os.close(lock)


def sweep_stale_segments() -> list[str]:
    """Remove the files ``asynctrain_<pid>_<n>_locked[.npy]`` whose owner lock is free.

    Files whose owner holds its lock, files of other users, anything that is not a regular
    file, and every other name are left alone; so is a file this process cannot remove.
    A file of an older asynctrain, named without ``_locked``, goes only if its lock is free
    and its pid runs nowhere in this PID namespace. Never raises.

    Returns:
        The names removed.
    """
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:  # no /dev/shm on this system: nothing can be stale there
        return []
    removed = []
    for entry in sorted(entries):
        match = _NAME.match(entry)
        if match is None:
            continue
        pid = int(match["pid"])
        if not match["locked"] and pid_alive(pid):
            continue  # no lock to ask: an unlocked file's pid is all there is
        path = os.path.join(SHM_DIR, entry)
        if remove_if_abandoned(path, pid=pid):
            removed.append(entry)
    return removed


def our_segments() -> set[str]:
    """Names of every ``asynctrain_<pid>_<n>[_locked][.npy]`` file in /dev/shm (any owner)."""
    try:
        return {e for e in os.listdir(SHM_DIR) if _NAME.match(e)}
    except OSError:
        return set()


def _open(name: str, flags: int) -> int:
    return int(_posixshmem.shm_open("/" + name, flags, mode=0o600))


def _unlink(name: str) -> None:
    _posixshmem.shm_unlink("/" + name)
