"""Writing a checkpoint file: JSON and ``.npy`` members in one uncompressed zip.

Layout: ``manifest.json`` (format, version, and per array its member, shape, dtype, size
and SHA-256) plus one ``.npy`` member per array (``params/W.npy``, ...), so ``np.load(path)``
can read the arrays too. Writing is atomic: a temporary file in the
same directory (named after the host and pid of its writer, and holding its writer's owner
lock until renamed, so a dead writer's leftovers are recognised and swept, also across PID
namespaces) is written, flushed and fsynced, renamed over the target, and
the directory is fsynced; a reader sees the old file or the new one, never a torn one.

Reading (:mod:`._verify`) trusts nothing in the file and never unpickles.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import secrets
import socket
import threading
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import CheckpointError
from asynctrain._ownerlock import hold, remove_if_abandoned

FORMAT = "asynctrain-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
CHUNK = 16 << 20
IN_MEMORY = 1 << 20
"""Arrays of at most this many bytes are zipped in memory and written with one call.
``zipfile`` seeks back to each member's header: on a file every seek and write is a
system call that lets go of the GIL and then waits to take it back from the event loop,
some 60 hand-offs for a small checkpoint; in memory there are none."""
_NUMBERS = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
_NUMBERS += ["float16", "float32", "float64"]
DTYPES = frozenset(  # the allow-list, in both byte orders ("|" for single bytes)
    {np.dtype(name).newbyteorder("<").str for name in _NUMBERS}
    | {np.dtype(name).newbyteorder(">").str for name in _NUMBERS}
)
_TEMPORARY = re.compile(
    r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$"
)
NAME_MAX = 255
"""The longest file name, in bytes, of the common Linux and macOS filesystems."""
_MEMBER = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")  # keys usable as member names


class SaveCancelled(Exception):
    """Raised inside a writer thread when its save was cancelled; the file is removed."""


def write(
    path: Path,
    manifest: Mapping[str, Any],
    arrays: Mapping[str, npt.NDArray[Any]],
    *,
    cancel: threading.Event | None = None,
) -> None:
    """Write ``manifest`` and ``arrays`` to ``path`` atomically; see the module docstring.

    Raises:
        CheckpointError: the directory is missing or the write failed (``ENOSPC``,
            ``EIO``, ...); the previous file at ``path``, if any, is left intact.
        SaveCancelled: ``cancel`` was set while writing (nothing was left behind).
    """
    try:
        replace_atomically(
            path, lambda out: _write_zip(out, manifest, arrays, cancel), cancel=cancel
        )
    except NotDurable as exc:
        raise CheckpointError(
            f"wrote checkpoint {path} but could not fsync {path.parent}: {exc.strerror}; "
            "it may not survive a power failure"
        ) from exc
    except OSError as exc:
        raise CheckpointError(_write_failure(path, exc)) from exc


class NotDurable(OSError):
    """The file is in place, but its directory could not be fsynced: the rename may not
    survive a power failure."""


def replace_atomically(
    path: Path, fill: Callable[[IO[bytes]], object], *, cancel: threading.Event | None = None
) -> None:
    """Write ``path`` whole or not at all: ``fill`` writes a temporary beside it (an
    owner-locked one, which :func:`sweep` removes once its writer is dead), which is
    fsynced and renamed over ``path``; then the directory is fsynced. A Ctrl-C, a kill
    or a full disk mid-write leaves the file that was there, never a truncated one; so
    does ``cancel`` set at any time before the rename.

    Checkpoints are written so, and the command line's model and prediction files.

    Raises:
        OSError: the write failed (the previous file at ``path``, if any, is intact).
        NotDurable: written, but the directory could not be fsynced.
        SaveCancelled: ``cancel`` was set before the rename (the temporary is removed).
    """
    temporary, fd = _create_temporary(path)
    try:
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                fill(out)
            os.fsync(fd)
            if cancel is not None and cancel.is_set():  # the fsync may have taken seconds
                raise SaveCancelled
            os.replace(temporary, path)  # still locked: a sweeper never takes it mid-rename
        finally:
            os.close(fd)
    except BaseException:
        # Not removable (the directory turned read-only, ...): the failure is still the
        # write's, and the temporary, unlocked now, is the next sweep's.
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    try:
        _fsync_directory(path.parent)
    except OSError as exc:
        raise NotDurable(exc.errno, exc.strerror) from exc


def _create_temporary(path: Path) -> tuple[Path, int]:
    """Create the writer's temporary next to ``path`` and take its owner lock.

    Its name starts with as much of ``path``'s name as fits in :data:`NAME_MAX` bytes
    with the rest (up to 89 bytes): a target the filesystem takes, 240 bytes say, must
    not fail with "File name too long" for its temporary's sake.
    """
    while True:
        rest = f".{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        room = NAME_MAX - 1 - len(rest.encode())
        name = path.name.encode(errors="surrogateescape")[:room]
        temporary = path.parent / f".{name.decode(errors='ignore')}{rest}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        if hold(fd):
            return temporary, fd
        os.close(fd)  # a sweeper took it in the instant before the lock: it removes it


def member_name(key: str, index: int) -> str:
    """The zip member the ``index``-th array, ``key``, is stored as (the only one read)."""
    return f"{key}.npy" if _MEMBER.fullmatch(key) else f"arrays/{index}.npy"


def temporaries(directory: Path, *, recursive: bool = False) -> list[Path]:
    """The temporary files of unfinished saves under ``directory`` (any writer's)."""
    found = directory.rglob(".*.tmp") if recursive else directory.glob(".*.tmp")
    return sorted(p for p in found if _TEMPORARY.match(p.name))


def sweep(directory: Path) -> list[Path]:
    """Remove temporaries left by dead writers on this host; return what was removed.

    A writer holds an owner lock on its temporary until the rename, so a temporary whose
    lock is held is a save in progress, whatever its pid means in this PID namespace, and
    is left alone; so is one that another host wrote (a lock may not reach across a network
    filesystem), another user's, and one this process cannot remove. On a filesystem
    without locks, the writer's pid on this host decides.
    """
    removed = []
    for path in temporaries(directory):
        match = _TEMPORARY.match(path.name)
        assert match is not None
        if match["host"] != _host():
            continue
        if remove_if_abandoned(str(path), pid=int(match["pid"])):
            removed.append(path)
    return removed


def _write_zip(
    out: IO[bytes],
    manifest: Mapping[str, Any],
    arrays: Mapping[str, npt.NDArray[Any]],
    cancel: threading.Event | None,
) -> None:
    """Write the zip of ``manifest`` and ``arrays`` to ``out``: streamed, or for at most
    :data:`IN_MEMORY` bytes of arrays made in memory (the same bytes) and written with one
    call."""
    if sum(np.asarray(a).nbytes for a in arrays.values()) > IN_MEMORY:
        _zip_into(out, manifest, arrays, cancel)
        return
    buffer = io.BytesIO()
    _zip_into(buffer, manifest, arrays, cancel)
    out.write(buffer.getbuffer())


def _zip_into(
    out: IO[bytes],
    manifest: Mapping[str, Any],
    arrays: Mapping[str, npt.NDArray[Any]],
    cancel: threading.Event | None,
) -> None:
    entries = {}
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for i, (key, array) in enumerate(arrays.items()):
            member = member_name(key, i)
            with archive.open(member, "w", force_zip64=array.nbytes > (1 << 30)) as raw:
                sink = _HashingSink(raw, cancel)
                np.lib.format.write_array(sink, np.asarray(array), allow_pickle=False)
            entries[key] = _entry(member, array, sink)
        archive.writestr(MANIFEST, _manifest_json(manifest, entries))


def _entry(member: str, array: npt.NDArray[Any], sink: _HashingSink) -> dict[str, Any]:
    return {
        "member": member,
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "size": sink.size,
        "sha256": sink.digest.hexdigest(),
    }


def _manifest_json(manifest: Mapping[str, Any], entries: dict[str, Any]) -> str:
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "arrays": entries}
    # Compact, so json's C encoder writes it (an indent takes its pure-Python encoder: half
    # the writer thread's CPU for a small model, GIL held, which the fit's steps felt).
    # ``asynctrain inspect`` prints it indented.
    return json.dumps(full, separators=(",", ":"), allow_nan=False)


class _HashingSink:
    """A write-only file that hashes what passes through and stops when cancelled."""

    def __init__(self, raw: IO[bytes], cancel: threading.Event | None) -> None:
        self.raw, self.cancel = raw, cancel
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        if self.cancel is not None and self.cancel.is_set():
            raise SaveCancelled
        for start in range(0, len(data), CHUNK):
            piece = data[start : start + CHUNK]
            self.digest.update(piece)
            self.raw.write(piece)
        self.size += len(data)
        return len(data)


def _write_failure(path: Path, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason += "; free some space or point checkpoints elsewhere"
    elif isinstance(exc, FileNotFoundError):
        reason = f"the directory {path.parent} does not exist"
    return f"could not write checkpoint {path}: {reason}; any previous file there is intact"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"
