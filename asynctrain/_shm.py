"""POSIX shared memory of asynctrain: private files named after their owner, swept when stale.

Two kinds of file live in /dev/shm: the process backend's segments,
``asynctrain_<owner pid>_<counter>``, and ``asynctrain.data``'s shared arrays,
``asynctrain_<owner pid>_<counter>.npy``. Each is created with mode 0o600 and its space is
reserved up front, so a full /dev/shm raises OSError at once rather than SIGBUS at the
first write. Only its owner unlinks it. The owner registers it with ``multiprocessing``'s
resource tracker, so a file that outlives its owner is unlinked by the tracker; workers
attach without telling the tracker (on Python 3.11 ``SharedMemory(name)`` registers every
attachment, and a worker's tracker would then unlink the owner's segment when the worker
exits). Files of owners that died without their tracker (SIGKILL of the whole group) are
removed by :func:`sweep_stale_segments` at the next start.
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

PREFIX = "asynctrain_"
SHM_DIR = "/dev/shm"
_NAME = re.compile(r"asynctrain_(\d+)_(\d+)(?:\.npy)?\Z")
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

    __slots__ = ("buffer", "name", "owner")

    def __init__(self, name: str, buffer: mmap.mmap, *, owner: bool) -> None:
        self.name = name
        self.buffer = buffer
        self.owner = owner

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
        return cls(name, buffer, owner=True)

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
            remove(self.name)
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
    """Create an empty file ``asynctrain_<pid>_<counter><suffix>`` in /dev/shm, mode 0o600.

    Yields ``(name, fd)`` to the block that sizes and maps it. The descriptor is closed when
    the block ends; if the block raises, the file is unlinked, otherwise it is registered
    with the resource tracker and belongs to the caller, who removes it with :func:`remove`.

    Raises:
        OSError: /dev/shm is missing or not writable.
    """
    while True:
        name = f"{PREFIX}{os.getpid()}_{next(_counter)}{suffix}"
        try:
            fd = _open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR)
        except FileExistsError:  # left by an earlier process that had our pid
            continue
        break
    try:
        os.fchmod(fd, 0o600)  # shm_open applies the umask; make the mode exact
        yield name, fd
    except BaseException:
        _unlink(name)
        raise
    finally:
        os.close(fd)
    resource_tracker.register("/" + name, "shared_memory")


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


def remove(name: str) -> None:
    """Unlink the file ``name`` made by :func:`new_file` and stop tracking it (once)."""
    with contextlib.suppress(FileNotFoundError):
        _unlink(name)
    resource_tracker.unregister("/" + name, "shared_memory")


def sweep_stale_segments() -> list[str]:
    """Remove files named ``asynctrain_<pid>_<n>[.npy]`` whose owner ``pid`` no longer runs.

    Files of live processes, and every other file, are left alone.

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
        if match and not pid_alive(int(match[1])):
            try:
                _unlink(entry)
            except FileNotFoundError:  # a tracker removed it meanwhile
                continue
            removed.append(entry)
    return removed


def our_segments() -> set[str]:
    """Names of every ``asynctrain_<pid>_<n>[.npy]`` file in /dev/shm (any owner)."""
    try:
        return {e for e in os.listdir(SHM_DIR) if _NAME.match(e)}
    except OSError:
        return set()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (another user's counts; a zombie does not)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    # An exited process nobody has reaped (an orphan under a PID 1 that does not reap).
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _open(name: str, flags: int) -> int:
    return int(_posixshmem.shm_open("/" + name, flags, mode=0o600))


def _unlink(name: str) -> None:
    _posixshmem.shm_unlink("/" + name)
