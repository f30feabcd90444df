"""Reading a checkpoint file, trusting nothing in it.

Members must be stored (not compressed) and fit in the file; the manifest must name this
format and a version this code reads; each ``.npy`` header is parsed without pickle (numpy's
literal-only header parser) and its dtype must be on the allow-list before any data is
read; every array's SHA-256 must match the manifest. Any failure is a
:class:`~asynctrain.CheckpointError` naming the path and the problem.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import stat
import struct
import tokenize
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
import numpy.typing as npt

from asynctrain._checkpoint._format import (
    CHUNK,
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    member_name,
)
from asynctrain._exceptions import CheckpointError

T = TypeVar("T")

# What a damaged file can make zipfile, json or numpy's header parser raise.
_CORRUPT = (
    zipfile.BadZipFile,
    EOFError,
    ValueError,
    KeyError,
    struct.error,
    OverflowError,
    RecursionError,
    RuntimeError,  # zipfile: an encrypted member, an unsupported zip version or feature
    SyntaxError,  # numpy's .npy header parser (ast.literal_eval) on a mangled header
    tokenize.TokenError,  # the same parser's fallback for headers written by Python 2
)


def read(path: Path) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Read and verify the checkpoint at ``path``: ``(manifest, arrays by key)``.

    Raises:
        CheckpointError: missing, unreadable, not a checkpoint, truncated, corrupt (a
            checksum mismatch), a newer format version, or a dtype outside the allow-list.
    """
    return _reading(path, functools.partial(_read_all, path))


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and verify only the manifest of the checkpoint at ``path`` (no array).

    Raises:
        CheckpointError: as :func:`read`, for what the manifest holds.
    """
    return _reading(path, lambda archive, size: _read_manifest(path, archive))


def _read_all(
    path: Path, archive: zipfile.ZipFile, size: int
) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    manifest = _read_manifest(path, archive)
    _check_members(path, archive, manifest, size)
    entries = manifest["arrays"].items()
    return manifest, {key: _read_array(path, archive, key, entry) for key, entry in entries}


def _reading(path: Path, take: Callable[[zipfile.ZipFile, int], T]) -> T:
    """``take(archive, size)`` of the checkpoint file at ``path``; every failure of the
    file (missing, unreadable, not a zip, damaged) a :class:`CheckpointError`."""
    try:
        with _open_regular(path) as handle:
            _check_magic(path, handle.read(4))
            handle.seek(0)
            size = os.fstat(handle.fileno()).st_size
            with zipfile.ZipFile(handle) as archive:
                return take(archive, size)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    except _CORRUPT as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {exc}") from exc


def _open_regular(path: Path) -> IO[bytes]:
    """Open ``path`` for reading only if it is a regular file.

    The open is non-blocking, so a FIFO or device planted under a checkpoint's name is
    refused instead of blocking the reader (and a resume) until someone writes to it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise CheckpointError(f"{path} is a directory, not a checkpoint file")
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"{path} is not a regular file (a FIFO, device, ...)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_magic(path: Path, head: bytes) -> None:
    if head == b"PK\x03\x04":
        return
    what = "a pickle" if head[:1] == b"\x80" else "an empty file" if not head else "not a zip"
    raise CheckpointError(
        f"{path} is not an asynctrain checkpoint ({what}); refusing to read it. Checkpoints "
        "are zip files of JSON and .npy arrays and are never unpickled"
    )


def _read_manifest(path: Path, archive: zipfile.ZipFile) -> dict[str, Any]:
    try:
        info = archive.getinfo(MANIFEST)
    except KeyError:
        raise CheckpointError(f"{path} has no {MANIFEST}: not an asynctrain checkpoint") from None
    if info.file_size > MAX_MANIFEST_BYTES or info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"{path}: {MANIFEST} is compressed or too large")
    manifest = json.loads(
        archive.read(info).decode("utf-8"),
        parse_constant=functools.partial(_not_json, path),
        parse_float=functools.partial(_finite_float, path),
    )
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: {MANIFEST} does not describe an {FORMAT}")
    version = manifest.get("format_version")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{path}: format version {version!r} is not valid")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, newer than this asynctrain reads "
            f"(up to {FORMAT_VERSION}); upgrade asynctrain to load it"
        )
    if not isinstance(manifest.get("arrays"), dict):
        raise CheckpointError(f"{path}: {MANIFEST} lists no arrays")
    for index, (key, entry) in enumerate(manifest["arrays"].items()):
        _check_entry(path, key, entry)
        if entry["member"] != member_name(key, index):
            raise CheckpointError(
                f"{path}: array {key!r} is stored as {entry['member']!r}, not as "
                f"{member_name(key, index)!r}, where asynctrain writes it"
            )
    return manifest


def _not_json(path: Path, constant: str) -> Any:
    """Refuse ``NaN`` and ``Infinity``, which Python's json reads but JSON has not: the
    writer never writes them, and ``asynctrain inspect --json`` must print valid JSON."""
    raise CheckpointError(
        f"{path}: {MANIFEST} holds {constant}, which is not JSON and never written by "
        "asynctrain; the file was not written by asynctrain or was edited"
    )


def _finite_float(path: Path, text: str) -> float:
    """A JSON number as a float, refusing one too large for a float (``1e999`` would be
    read as infinity, a value JSON cannot hold)."""
    value = float(text)
    if not math.isfinite(value):
        raise CheckpointError(
            f"{path}: {MANIFEST} holds the number {text}, too large for a float and never "
            "written by asynctrain; the file was not written by asynctrain or was edited"
        )
    return value


def _check_entry(path: Path, key: str, entry: Any) -> None:
    fields = {"member": str, "shape": list, "dtype": str, "size": int, "sha256": str}
    if not isinstance(entry, dict) or any(type(entry.get(k)) is not t for k, t in fields.items()):
        raise CheckpointError(f"{path}: the manifest entry of array {key!r} is malformed")
    if entry["dtype"] not in DTYPES:
        raise CheckpointError(
            f"{path}: array {key!r} has dtype {entry['dtype']!r}, which is not allowed "
            "(booleans, integers and floats only)"
        )
    if not all(type(n) is int and n >= 0 for n in entry["shape"]):
        raise CheckpointError(f"{path}: array {key!r} has an invalid shape {entry['shape']}")


def _check_members(
    path: Path, archive: zipfile.ZipFile, manifest: dict[str, Any], size: int
) -> None:
    listed = {MANIFEST} | {e["member"] for e in manifest["arrays"].values()}
    names = [info.filename for info in archive.infolist()]
    present = set(names)
    if len(names) != len(present):
        raise CheckpointError(f"{path}: a member name appears twice in the zip")
    if present != listed:
        raise CheckpointError(
            f"{path}: members {sorted(present - listed)} are not in the manifest and "
            f"{sorted(listed - present)} are missing"
        )
    for info in archive.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
            raise CheckpointError(f"{path}: member {info.filename} is compressed or truncated")


def _read_array(
    path: Path, archive: zipfile.ZipFile, key: str, entry: dict[str, Any]
) -> npt.NDArray[Any]:
    info = archive.getinfo(entry["member"])
    if info.file_size != entry["size"]:
        raise CheckpointError(
            f"{path}: array {key!r} is {info.file_size} bytes, not {entry['size']}"
        )
    digest = hashlib.sha256()
    with archive.open(info) as raw:
        source = _HashingSource(raw, digest)
        shape, fortran, dtype = _read_header(source)
        if dtype.str not in DTYPES:  # checked before a single data byte is interpreted
            raise CheckpointError(
                f"{path}: array {key!r} is stored as {dtype.str!r}, which is not allowed "
                "(booleans, integers and floats only)"
            )
        if dtype.str != entry["dtype"] or list(shape) != entry["shape"]:
            raise CheckpointError(f"{path}: array {key!r}'s header disagrees with the manifest")
        count = math.prod(shape)
        if source.size + count * dtype.itemsize != info.file_size:
            raise CheckpointError(f"{path}: array {key!r} has the wrong number of bytes")
        flat = np.empty(count, dtype=dtype)
        source.fill(flat.data.cast("B"))
        if raw.read(1):
            raise CheckpointError(f"{path}: array {key!r} has trailing bytes")
    if digest.hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch in array {key!r}; the file is corrupt")
    native = flat.astype(dtype.newbyteorder("="), copy=False)
    return native.reshape(shape, order="F" if fortran else "C")


def _read_header(source: _HashingSource) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(source)
    if version == (1, 0):
        header = np.lib.format.read_array_header_1_0(source)
    elif version == (2, 0):
        header = np.lib.format.read_array_header_2_0(source)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    shape, fortran, dtype = header
    return tuple(shape), bool(fortran), dtype


class _HashingSource:
    """A read-only file that hashes and counts what is read through it."""

    def __init__(self, raw: IO[bytes], digest: Any) -> None:
        self.raw, self.digest = raw, digest
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def fill(self, buffer: memoryview) -> None:
        start = 0
        while start < len(buffer):
            piece = self.read(min(CHUNK, len(buffer) - start))
            if not piece:
                raise EOFError("the array data ends early")
            buffer[start : start + len(piece)] = piece
            start += len(piece)
