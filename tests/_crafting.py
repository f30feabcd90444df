"""Crafting checkpoint files for tests: copy one, editing its manifest and members."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asynctrain._checkpoint._format import MANIFEST


def unzip(path: Path) -> dict[str, bytes]:
    """Every member of the zip at ``path``, by name, in order."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def write_zip(target: Path, contents: dict[str, bytes]) -> None:
    """Write ``contents`` as a stored zip (CRCs computed by zipfile)."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)


def reseal(manifest: dict[str, Any], contents: dict[str, bytes]) -> None:
    """Recompute each array entry's size and SHA-256 from its member, so an edited
    member passes the checksum."""
    for entry in manifest["arrays"].values():
        data = contents.get(entry["member"])
        if data is not None:
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
    write_zip(target, contents)
