"""Owner locks: a file is in use for exactly as long as its creator holds an ``flock`` on it.

asynctrain leaves files behind when a process dies without cleaning up (shared memory in
/dev/shm, checkpoint temporaries), and a later process sweeps them. A pid in the file's
name cannot say whether its owner lives: across PID namespaces (containers sharing
/dev/shm or a volume) the same number names another process, or none. So the creator
takes an exclusive ``flock`` on the file as soon as it exists and keeps the descriptor
open for the file's life; the kernel drops the lock when the owner exits, however it
exits, and a sweeper removes a file only if it can take that lock itself.

``flock`` and not ``fcntl`` record locks: a record lock belongs to the process and is
dropped when it closes *any* descriptor of the file (numpy's ``open_memmap`` opens and
closes the path), while an ``flock`` belongs to the one open file description, which only
the owner (and children forked with it) holds. Workers that open the file themselves to
map it take no lock: a segment whose owner died is stale even while they still map it.
:func:`pid_alive` remains for what has no lock: a filesystem without ``flock``, and the
unlocked files of older asynctrain versions.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat

_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # flock unsupported


def hold(fd: int) -> bool:
    """Take the owner lock of the file just created exclusively as ``fd``.

    Keep ``fd`` open for as long as the file is in use; closing it releases the lock.

    Returns:
        True if this process owns the file now. False if a sweeper took the lock first and
        is removing (or removed) the file: close ``fd`` and create another; do not unlink
        its path, which may name someone else's file by then.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "file")
        >>> fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR)
        >>> hold(fd), remove_if_abandoned(path, pid=os.getpid())
        (True, False)
        >>> os.close(fd)
        >>> remove_if_abandoned(path, pid=os.getpid())  # the pid is not asked: flock works
        True
        >>> os.rmdir(os.path.dirname(path))
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a filesystem without flock: its sweepers fall back to the pid
        return True
    try:
        return os.fstat(fd).st_nlink > 0  # 0: a sweeper locked and unlinked it first
    except OSError:
        return True


def remove_if_abandoned(path: str, *, pid: int) -> bool:
    """Unlink ``path`` if it is a regular file of this user whose owner lock nobody holds.

    Never raises: a file this process cannot open, inspect or unlink, another user's file,
    a directory, a FIFO or a symlink is left alone.

    Args:
        path: the file to judge.
        pid: the owner's pid on this host, asked only on a filesystem without ``flock``.

    Returns:
        Whether this call removed ``path``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return False  # not ours to remove, even where root could
        if not _free(fd, pid) or not _names(path, fd):
            return False
        os.unlink(path)  # under the lock: its owner, if one is starting, sees it gone
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _free(fd: int, pid: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its owner holds it
    except OSError as exc:
        return exc.errno in _NO_LOCKS and not pid_alive(pid)
    return True


def _names(path: str, fd: int) -> bool:
    """Whether ``path`` is still the name of the file open as ``fd``."""
    with contextlib.suppress(OSError):
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
        return here.st_nlink > 0 and (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
    return False


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
