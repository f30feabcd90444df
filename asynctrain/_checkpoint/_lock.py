"""A fit's hold on its checkpoint directory: writable, and no other fit writing there.

Two fits writing one directory would prune each other's files and resume each other's
state. A fit takes an exclusive ``flock`` on ``.asynctrain.lock`` in the directory for its
whole life (the kernel drops it when the holder dies, so nothing stale is ever left), and
proves the directory writable before the first step rather than after the first epoch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from pathlib import Path

from asynctrain._exceptions import CheckpointError

LOCK_NAME = ".asynctrain.lock"


class DirectoryLock:
    """An exclusive, non-blocking lock on a checkpoint directory, held until released.

    Example:
        >>> import tempfile
        >>> lock = DirectoryLock(Path(tempfile.mkdtemp()))
        >>> lock.acquire()
        >>> try:
        ...     DirectoryLock(lock.directory).acquire()
        ... except CheckpointError as exc:
        ...     print("in use by another fit" in str(exc))
        True
        >>> lock.release()
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None

    def acquire(self) -> None:
        """Create the directory if needed, lock it and check that it is writable.

        Raises:
            CheckpointError: the directory cannot be created or written (read-only file
                system, permissions), or another fit holds it.
        """
        directory = self.directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CheckpointError(_unwritable(directory, exc)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise CheckpointError(
                    f"checkpoint_dir {directory} is in use by another fit (it holds "
                    f"{directory / LOCK_NAME}); wait for it, or give this fit its own directory"
                ) from None
            raise CheckpointError(f"cannot lock checkpoint_dir {directory}: {exc}") from exc
        self._fd = fd
        try:
            _probe(directory)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a new holder)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock


def in_use(directory: Path) -> bool:
    """Whether a fit holds ``directory``'s lock now: a look, not a hold (a shared lock
    taken and dropped at once, which an exclusive one held refuses).

    False when there is no lock file (no fit ever used it) or it cannot be opened.
    """
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # drops the shared lock, if taken
    return False


def _probe(directory: Path) -> None:
    probe = directory / f".asynctrain-probe-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise CheckpointError(_unwritable(directory, exc)) from exc
    with contextlib.suppress(FileNotFoundError):
        os.unlink(probe)


def _unwritable(directory: Path, exc: OSError) -> str:
    reason = "it is on a read-only file system" if exc.errno == errno.EROFS else exc.strerror
    return (
        f"cannot write checkpoints to checkpoint_dir {directory}: {reason or exc}; "
        "point checkpoint_dir at a writable directory"
    )
