"""Crafting checkpoint files for tests: copy one, editing its manifest and members."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from asynctrain._checkpoint._format import MANIFEST


def unzip(path: Path) -> dict[str, bytes]:
    """Every member of the zip at ``path``, by name, in order."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def zipped(contents: dict[str, bytes]) -> bytes:
    """``contents`` as a stored zip (CRCs computed by zipfile)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def reseal(manifest: dict[str, Any], contents: dict[str, bytes]) -> None:
    """Recompute each array entry's size and SHA-256 from its member, so an edited
    member passes the checksum."""
    for entry in manifest["arrays"].values():
        member = entry.get("member") if isinstance(entry, dict) else None
        if isinstance(member, str) and member in contents:
            data = contents[member]
            entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()


def rezip(
    source: Path,
    target: Path,
    edit_manifest: Callable[[dict[str, Any]], Any] | None = None,
    members: dict[str, bytes] | None = None,
) -> None:
    """Copy a checkpoint, editing its manifest and replacing members (CRCs recomputed)."""
    contents = unzip(source)
    manifest = json.loads(contents[MANIFEST])
    if edit_manifest is not None:
        edit_manifest(manifest)
    contents[MANIFEST] = json.dumps(manifest).encode()
    contents |= members or {}
    target.write_bytes(zipped(contents))


class Payload:
    """Unpickling this creates the file ``target``: proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.target,))


def object_npy(target: Path) -> bytes:
    """A ``.npy`` of one object that creates ``target`` when unpickled."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([Payload(target)], dtype=object), allow_pickle=True)
    return buffer.getvalue()
