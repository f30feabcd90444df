"""The checkpoint file format: round trips, atomic writes under failure, hostile input.

Everything a reader is given here is treated as an attacker's: pickles, crafted zips,
truncations and random mutations must end in CheckpointError and nothing else, and
never run code.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _crafting import Payload, object_npy, rezip
from _reliability import FullDisk

from asynctrain import CheckpointError
from asynctrain._checkpoint import read, sweep, temporaries
from asynctrain._checkpoint._format import FORMAT_VERSION, SaveCancelled, write


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "params/W": rng.standard_normal((7, 3)).astype(np.float32),
        "params/b": np.arange(3, dtype=np.float64),
        "opt_state/0": np.asfortranarray(rng.standard_normal((4, 5))),
        "opt_state/1": np.array(3, dtype=np.int64),  # 0-d
        "opt_state/2": np.zeros((0, 2), dtype=np.float16),  # empty
        "opt_state/3": np.arange(6, dtype=">u4")[::2],  # big-endian, not contiguous
        "odd key with spaces": np.array([True, False]),
    }


def _bits(arrays: dict[str, np.ndarray]) -> dict[str, tuple[Any, ...]]:
    return {
        k: (v.dtype.newbyteorder("=").str, v.shape, v.astype(v.dtype.newbyteorder("=")).tobytes())
        for k, v in arrays.items()
    }


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "a.ckpt"
    write(path, {"note": "hello"}, _arrays())
    return path


def test_round_trip_keeps_every_bit(saved: Path) -> None:
    manifest, arrays = read(saved)
    assert manifest["note"] == "hello"
    assert manifest["format_version"] == FORMAT_VERSION
    assert _bits(arrays) == _bits(_arrays())
    assert all(a.flags.writeable and a.dtype.isnative for a in arrays.values())


def test_numpy_reads_it_without_pickle(saved: Path) -> None:
    with np.load(saved, allow_pickle=False) as npz:
        assert np.array_equal(npz["params/W"], _arrays()["params/W"])
        assert "arrays/6" in npz.files  # a key that is no member name gets a numbered one


def test_the_manifest_is_compact_json(saved: Path) -> None:
    """Written by json's C encoder (an indent would take its pure-Python one, whose GIL
    time a fit's steps feel), and still plain JSON for any reader."""
    with zipfile.ZipFile(saved) as archive:
        text = archive.read("manifest.json").decode("utf-8")
    manifest = json.loads(text)
    assert manifest["format"] == "asynctrain-checkpoint"
    assert text == json.dumps(manifest, separators=(",", ":"))  # no spaces, no newlines


def test_a_save_leaves_no_temporary(saved: Path) -> None:
    assert temporaries(saved.parent) == []
    assert sorted(p.name for p in saved.parent.iterdir()) == ["a.ckpt"]


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_enospc_leaves_the_previous_checkpoint_intact(
    saved: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    before = saved.read_bytes()
    if where == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k), 300))
    else:

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full)
    newer = {k: v + 1 if v.dtype.kind == "f" else v for k, v in _arrays().items()}
    with pytest.raises(CheckpointError) as caught:
        write(saved, {"note": "newer"}, newer)
    message = str(caught.value)
    assert str(saved) in message
    assert "No space left on device" in message
    assert "previous file there is intact" in message
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert read(saved)[0]["note"] == "hello"
    assert temporaries(saved.parent) == []


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    target = tmp_path / "nowhere" / "a.ckpt"
    with pytest.raises(CheckpointError, match=f"directory {tmp_path / 'nowhere'} does not exist"):
        write(target, {}, _arrays())


@pytest.mark.parametrize("name", ["x" * 250, "é" * 120 + ".ckpt"], ids=["ascii", "utf-8"])
def test_a_long_name_the_filesystem_takes_is_written(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The temporary's name was the target's plus ~20-90 bytes: past 255, "File name too
    # long" for a target whose own name the filesystem takes.
    from asynctrain._checkpoint import _format

    monkeypatch.setattr(_format, "_host", lambda: "h" * 64)  # the longest host part
    target = tmp_path / name
    target.touch()
    write(target, {}, _arrays())
    assert _bits(read(target)[1]) == _bits(_arrays())
    assert temporaries(tmp_path) == []


def test_a_cancelled_write_removes_its_temporary(saved: Path) -> None:
    before = saved.read_bytes()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(SaveCancelled):
        write(saved, {}, _arrays(), cancel=cancel)
    assert saved.read_bytes() == before
    assert temporaries(saved.parent) == []


def test_a_write_cancelled_during_its_fsync_keeps_the_previous_file(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cancel was looked at only between chunks of the arrays: one that came during
    # the fsync (seconds, on a slow disk) still renamed the new file over the old.
    before, cancel, real_fsync = saved.read_bytes(), threading.Event(), os.fsync

    def fsync_then_cancel(fd: int) -> None:
        real_fsync(fd)
        cancel.set()  # the caller cancels meanwhile

    monkeypatch.setattr(os, "fsync", fsync_then_cancel)
    with pytest.raises(SaveCancelled):
        write(saved, {"note": "newer"}, _arrays(), cancel=cancel)
    assert saved.read_bytes() == before
    assert temporaries(saved.parent) == []


def test_a_temporary_that_cannot_be_removed_does_not_hide_the_failure(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The unlink's error replaced the write's: a full disk was reported as "Read-only
    # file system". The temporary stays, unlocked, for the next sweep.
    before, real_unlink = saved.read_bytes(), os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if temporaries(saved.parent):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        real_unlink(path, *args, **kwargs)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match="No space left on device; free some space"):
        write(saved, {"note": "newer"}, _arrays())
    monkeypatch.undo()
    assert saved.read_bytes() == before
    left = temporaries(saved.parent)
    assert len(left) == 1
    assert sweep(saved.parent) == left  # its writer's lock is gone


def test_sweep_removes_only_dead_writers_temporaries(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    host = socket.gethostname().replace(".", "-").replace("_", "-")
    names = {
        "dead": f".a.ckpt.{host}.{int(dead.stdout)}.0123abcd.tmp",
        "alive": f".a.ckpt.{host}.{os.getppid()}.0123abcd.tmp",
        "mine": f".a.ckpt.{host}.{os.getpid()}.0123abcd.tmp",
        "other host": f".a.ckpt.elsewhere.{int(dead.stdout)}.0123abcd.tmp",
        "not ours": ".a.ckpt.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    locks = [os.open(tmp_path / names[k], os.O_RDONLY) for k in ("alive", "mine")]
    for fd in locks:  # their writers' owner locks: saves in progress
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert sweep(tmp_path) == [tmp_path / names["dead"]]
    finally:
        for fd in locks:
            os.close(fd)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == set(names.values()) - {names["dead"]}
    for name in left:  # leave nothing for the leak fixture
        (tmp_path / name).unlink()


# --- hostile input ------------------------------------------------------------------------


def test_the_payload_is_live(tmp_path: Path) -> None:
    """The malicious files below would really run code if unpickled."""
    target = tmp_path / "ran"
    np.load(io.BytesIO(object_npy(target)), allow_pickle=True)
    assert target.exists()
    target.unlink()
    pickle.loads(pickle.dumps(Payload(target)))
    assert target.exists()


def _refused(path: Path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as caught:
        read(path)
    assert str(path) in str(caught.value)


def test_a_pickle_under_a_checkpoint_name_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "ran"
    path = tmp_path / "step-000000000001.ckpt"
    path.write_bytes(pickle.dumps(Payload(sentinel)))
    _refused(path, "a pickle")
    assert not sentinel.exists()


def test_an_npz_holding_a_pickled_object_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    np.savez(path.with_suffix(""), evil=np.array([Payload(sentinel)], dtype=object))
    path.with_suffix(".npz").rename(path)
    _refused(path, "no manifest.json")
    assert not sentinel.exists()


def test_a_crafted_object_member_is_refused_without_running(saved: Path, tmp_path: Path) -> None:
    sentinel = tmp_path / "ran"
    evil = object_npy(sentinel)
    path = tmp_path / "crafted.ckpt"

    def claim_float(manifest: dict[str, Any]) -> None:  # the manifest lies, checksum included
        import hashlib

        entry = manifest["arrays"]["params/W"]
        entry["size"], entry["sha256"] = len(evil), hashlib.sha256(evil).hexdigest()

    rezip(saved, path, claim_float, {"params/W.npy": evil})
    _refused(path, "not allowed")

    def claim_object(manifest: dict[str, Any]) -> None:
        manifest["arrays"]["params/W"]["dtype"] = "|O"

    rezip(saved, path, claim_object)
    _refused(path, "dtype '|O', which is not allowed")
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(format_version=FORMAT_VERSION + 1), "newer than this asynctrain"),
        (lambda m: m.update(format="something-else"), "does not describe"),
        (lambda m: m["arrays"]["params/b"].update(dtype="<c16"), "'<c16', which is not allowed"),
        (lambda m: m["arrays"]["params/b"].update(shape=[4]), "disagrees with the manifest"),
        (lambda m: m["arrays"]["params/b"].update(sha256="0" * 64), "checksum mismatch"),
        (lambda m: m["arrays"].pop("odd key with spaces"), "not in the manifest"),
        (lambda m: m["arrays"]["params/b"].update(member="x.npy"), "where asynctrain writes it"),
        (lambda m: m["arrays"]["params/b"].update(size=-1), "is 152 bytes, not -1"),
    ],
)
def test_a_manifest_that_lies_is_refused(
    saved: Path, tmp_path: Path, edit: Any, match: str
) -> None:
    path = tmp_path / "edited.ckpt"
    rezip(saved, path, edit)
    _refused(path, match)


def test_a_flipped_data_byte_is_caught(saved: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(saved) as archive:
        data = bytearray(archive.read("params/W.npy"))
    data[-1] ^= 0x01
    path = tmp_path / "flipped.ckpt"
    rezip(saved, path, members={"params/W.npy": bytes(data)})  # zip CRC is fine, ours is not
    _refused(path, "checksum mismatch in array 'params/W'")
    raw = bytearray(saved.read_bytes())
    raw[raw.index(b"\x93NUMPY") + 200] ^= 0x01  # inside the first array's data, CRC now stale
    path.write_bytes(bytes(raw))
    _refused(path, "corrupt")


def test_every_truncation_is_refused(saved: Path, tmp_path: Path) -> None:
    raw = saved.read_bytes()
    path = tmp_path / "cut.ckpt"
    for cut in sorted(
        {*range(0, len(raw), max(1, len(raw) // 300)), *range(len(raw) - 64, len(raw))}
    ):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError):
            read(path)


def test_fuzzed_files_raise_only_checkpoint_error(saved: Path, tmp_path: Path) -> None:
    raw = saved.read_bytes()
    original = _bits(_arrays())
    rng = np.random.default_rng(12345)
    path = tmp_path / "fuzzed.ckpt"
    survived = 0
    for _ in range(600):
        data = bytearray(raw)
        for _ in range(int(rng.integers(1, 9))):
            op, at = int(rng.integers(4)), int(rng.integers(len(data)))
            if op == 0:
                data[at] ^= 1 << int(rng.integers(8))
            elif op == 1:
                data[at] = int(rng.integers(256))
            elif op == 2:
                del data[at : at + int(rng.integers(1, 16))]
            else:
                data[at:at] = rng.bytes(int(rng.integers(1, 16)))
        path.write_bytes(bytes(data))
        try:
            _, arrays = read(path)
        except CheckpointError:
            continue
        survived += 1  # a mutation of bytes nobody checks (zip timestamps, padding)
        assert _bits(arrays) == original
    assert survived < 300


def test_a_fuzzed_manifest_raises_only_checkpoint_error(saved: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    junk: list[Any] = [None, -1, 2**70, 1.5, "x", [], {}, [1, "a"], {"array": 0}, True, "<f4"]
    path = tmp_path / "fuzzed.ckpt"

    def mutate(node: Any, top: bool = False) -> Any:
        if isinstance(node, dict) and node and (top or rng.random() < 0.7):
            key = list(node)[int(rng.integers(len(node)))]
            node[key] = mutate(node[key])
            return node
        if isinstance(node, list) and node and rng.random() < 0.7:
            index = int(rng.integers(len(node)))
            node[index] = mutate(node[index])
            return node
        return junk[int(rng.integers(len(junk)))]

    for _ in range(300):
        rezip(saved, path, lambda m: mutate(m, top=True))
        with contextlib.suppress(CheckpointError):
            read(path)


def test_unreadable_and_missing_files_are_named(tmp_path: Path) -> None:
    _refused(tmp_path / "absent.ckpt", "no checkpoint at")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    _refused(empty, "an empty file")
    with pytest.raises(CheckpointError, match="is a directory"):
        read(tmp_path)
