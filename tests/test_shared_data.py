"""Datasets in shared memory: .npy files in /dev/shm, freed with their arrays, mapped by
process workers without a copy, and private arrays whenever that cannot or need not be."""

from __future__ import annotations

import errno
import gc
import os
import pickle
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import asynctrain as at
from asynctrain import _shm
from asynctrain.backends import ProcessBackend
from asynctrain.data import Dataset, _shared

SHM = Path("/dev/shm")


def _files(array: Any) -> set[str]:
    """The name of the shared file behind ``array`` ({} for a private array)."""
    base = array
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    return set() if base is None else {Path(base.filename).name}


def _ours() -> set[str]:
    """This process's files in /dev/shm (other processes on the machine make their own)."""
    return {name for name in os.listdir(SHM) if name.startswith(f"asynctrain_{os.getpid()}_")}


def _private(X: np.ndarray, y: np.ndarray) -> Dataset:
    return Dataset(np.array(X), np.array(y))


@pytest.fixture
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Share arrays from 1 KiB, so small (fast) data takes the shared path."""
    monkeypatch.setattr(_shared, "MIN_BYTES", 1024)


def read_rows(data: Any, rows: slice) -> tuple[np.ndarray, np.ndarray, bool]:
    """A worker task: the rows it sees, and whether X is mapped from a file."""
    arrays = data.read(0)
    X = arrays["X"]
    return np.array(X[rows]), np.array(arrays["y"][rows]), isinstance(X.base, np.memmap)


# -- the files ------------------------------------------------------------------------------


def test_a_large_dataset_lives_in_a_private_npy_file_freed_with_its_arrays() -> None:
    data = at.data.synthetic("mlp", n=20_000)  # X: 10 MB
    (name,) = _files(data.X)
    path = SHM / name
    assert re.fullmatch(rf"asynctrain_{os.getpid()}_\d+_locked\.npy", name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert name in _shared.held()
    assert data.shared
    assert not data.memory_mapped
    assert repr(data).endswith("dtype=float32 shared>")
    np.testing.assert_array_equal(np.load(path), data.X)  # a valid .npy of the values
    rows = data.X[5:9]  # a view keeps the file
    del data
    gc.collect()
    assert path.exists()
    del rows
    gc.collect()
    assert not path.exists()
    assert name not in _shared.held()


def test_synthetic_holds_the_same_values_as_private_arrays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shared = at.data.synthetic("logreg", n=5000, seed=3, dtype=np.float64)
    monkeypatch.setattr(_shared, "MIN_BYTES", 1 << 62)  # the old path: plain numpy arrays
    private = at.data.synthetic("logreg", n=5000, seed=3, dtype=np.float64)
    assert shared.shared
    assert not private.shared
    assert not _files(private.X)
    np.testing.assert_array_equal(shared.X, private.X)
    np.testing.assert_array_equal(shared.y, private.y)


def test_small_arrays_stay_private() -> None:
    before = _ours()
    data = at.data.synthetic("softmax", n=1000)  # 512 KB
    assert not data.shared
    assert not _files(data.X)
    just_under = _shared.empty((_shared.MIN_BYTES // 8 - 1,), np.float64)
    assert not _files(just_under)
    assert _ours() == before
    at_threshold = _shared.empty((_shared.MIN_BYTES // 8,), np.float64)
    assert _files(at_threshold)


@pytest.mark.usefixtures("small_threshold")
def test_subset_and_split_write_shared_rows_equal_to_numpy_indexing() -> None:
    X = np.random.default_rng(0).standard_normal((300, 4))
    y = np.arange(300) % 3
    data = Dataset(X, y)
    rows = np.r_[299, 7, 3, 3, 100:200]  # repeats, any order
    picked = data.subset(rows)
    assert picked.shared
    np.testing.assert_array_equal(picked.X, X[rows])
    np.testing.assert_array_equal(picked.y, y[rows])
    train, val = data.split(0.25, seed=1)
    assert train.shared
    assert val.shared
    both = np.concatenate([train.X, val.X])
    np.testing.assert_array_equal(both[np.lexsort(both.T)], X[np.lexsort(X.T)])
    assert not train.X.flags.writeable


@pytest.mark.usefixtures("small_threshold")
def test_to_shared_copies_once_and_keeps_what_is_shared() -> None:
    X = np.random.default_rng(1).standard_normal((100, 8)).astype(np.float32)
    y = np.arange(100)
    plain = Dataset(X, y)
    assert not plain.shared
    data = plain.to_shared()
    assert data.shared
    assert data.to_shared() is data
    np.testing.assert_array_equal(data.X, X)
    np.testing.assert_array_equal(data.y, y)
    X[0, 0] = 99.0  # the caller's array is no longer the dataset's
    assert data.X[0, 0] != 99.0
    clone = pickle.loads(pickle.dumps(data))  # a pickle carries values, not the file
    assert not clone.shared
    np.testing.assert_array_equal(clone.X, data.X)


@pytest.mark.usefixtures("small_threshold")
def test_a_slice_of_a_shared_array_is_neither_shared_nor_memory_mapped() -> None:
    data = Dataset(np.arange(1200.0).reshape(300, 4), np.arange(300)).to_shared()
    part = Dataset(data.X[:200], data.y[:200])  # the backend could not map just these rows
    assert not part.shared
    assert not part.memory_mapped
    moved = part.to_shared()
    assert moved.shared
    np.testing.assert_array_equal(moved.X, data.X[:200])


def test_to_shared_leaves_small_datasets_alone() -> None:
    data = Dataset(np.zeros((4, 2)), np.zeros(4))
    assert data.to_shared() is data


@pytest.mark.usefixtures("small_threshold")
def test_load_puts_parsed_formats_in_shared_memory(tmp_path: Path) -> None:
    X = np.random.default_rng(2).standard_normal((200, 3)).astype(np.float32)
    y = np.arange(200) % 2
    np.savez(tmp_path / "d.npz", X=X, y=y)
    np.savetxt(tmp_path / "d.csv", np.column_stack([X, y]), delimiter=",")
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    for path in ("d.npz", "d.csv"):
        data = at.data.load(tmp_path / path)
        assert data.shared, path
        assert not data.memory_mapped, path
        np.testing.assert_allclose(data.X, X, rtol=1e-6)
        np.testing.assert_array_equal(data.y, y)
    mapped = at.data.load(tmp_path / "X.npy", tmp_path / "y.npy")
    assert mapped.memory_mapped
    assert not mapped.shared
    assert repr(mapped).endswith("memory-mapped>")


@pytest.mark.usefixtures("small_threshold")
def test_a_converted_x_is_written_once_straight_into_shared_memory(tmp_path: Path) -> None:
    # A float64 .npy loaded as float32 was converted into private memory, which the
    # process backend then copied into shared memory again at every fit.
    X = np.random.default_rng(3).standard_normal((200, 3)) * 1e3
    X[0, 0] = 1e39  # beyond float32: Inf after the cast, refused naming the conversion
    y = np.arange(200) % 2
    np.save(tmp_path / "X.npy", X[1:])
    np.save(tmp_path / "y.npy", y[1:])
    loaded = at.data.load(tmp_path / "X.npy", tmp_path / "y.npy", dtype=np.float32)
    built = Dataset(np.asfortranarray(X[1:]), y[1:], dtype=np.float32)
    for data in (loaded, built):
        assert data.shared
        assert np.shares_memory(data.to_shared().X, data.X)  # no copy of X per fit
        assert data.X.flags.c_contiguous
        assert data.X.tobytes() == X[1:].astype(np.float32).tobytes()
    assert not at.data.load(tmp_path / "X.npy", tmp_path / "y.npy").shared  # mapped as is
    with pytest.raises(at.DataError, match=r"after conversion from float64"):
        Dataset(X, y, dtype=np.float32)


# -- where shared memory cannot be had ------------------------------------------------------


@pytest.mark.usefixtures("small_threshold")
def test_no_dev_shm_falls_back_to_private_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str, flags: int) -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/dev/shm")

    monkeypatch.setattr(_shm, "_open", missing)
    data = at.data.synthetic("softmax", n=500)
    assert not data.shared
    assert data.to_shared().X is data.X  # nothing to gain from a private copy


@pytest.mark.usefixtures("small_threshold")
def test_a_full_dev_shm_falls_back_and_leaves_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    before = _ours()
    monkeypatch.setattr(os, "posix_fallocate", full)
    data = at.data.synthetic("softmax", n=500)
    assert not data.shared
    assert _ours() == before
    with pytest.raises(OSError, match=r"cannot reserve 64 bytes of shared memory in /dev/shm"):
        _shm.Segment.create(64)  # the process backend's segments: a clean error, no SIGBUS
    assert _ours() == before


def test_a_forked_child_never_unlinks_the_parents_file() -> None:
    X = _shared.empty((_shared.MIN_BYTES,), np.uint8)
    (name,) = _files(X)
    pid = os.fork()
    if pid == 0:  # the child drops its copy of the array: its finalizer must not unlink
        del X
        gc.collect()
        _shm.sweep_stale_segments()  # nor release the parent's owner lock
        os._exit(0 if (SHM / name).exists() else 1)
    assert os.waitpid(pid, 0)[1] == 0
    assert (SHM / name).exists()


# -- the process backend --------------------------------------------------------------------


@pytest.mark.usefixtures("small_threshold")
async def test_workers_map_a_shared_dataset_without_a_copy() -> None:
    X = np.random.default_rng(3).standard_normal((400, 6))
    y = np.arange(400)
    data = Dataset(X, y).to_shared()
    names = _files(data.X) | _files(data.y)
    async with ProcessBackend(workers=1) as backend:
        handle = await backend.share({"X": data.X, "y": data.y})
        assert handle.nbytes == 0  # no byte of the dataset was copied
        assert {Path(f.path or "").name for f in handle.fields} == names
        del data  # the handle keeps the files until it is released
        gc.collect()
        seen_X, seen_y, mapped = await backend.run(read_rows, handle, slice(10, 20))
        assert mapped
        np.testing.assert_array_equal(seen_X, X[10:20])
        np.testing.assert_array_equal(seen_y, y[10:20])
        await backend.release(handle)
    gc.collect()
    assert not any((SHM / name).exists() for name in names)


@pytest.mark.usefixtures("small_threshold")
async def test_a_fit_on_a_shared_dataset_equals_one_on_a_private_copy() -> None:
    data = at.data.synthetic("softmax", n=1024, seed=4)
    assert data.shared
    results = []
    async with ProcessBackend(workers=2) as backend:
        for dataset in (data, _private(data.X, data.y)):
            model = at.models.SoftmaxRegression(128, 10)
            async with at.Trainer(model, backend=backend, batch_size=256, shards=4) as trainer:
                results.append(await trainer.fit(dataset, epochs=2))
    for key, value in results[0].params.items():
        np.testing.assert_array_equal(results[1].params[key], value, err_msg=key)


# -- the leak check -------------------------------------------------------------------------


def test_the_leak_check_tolerates_live_arrays_and_catches_the_rest() -> None:
    from conftest import _leaked_segments

    before = _ours()
    alive = _shared.empty((_shared.MIN_BYTES,), np.uint8)
    segment = _shm.Segment.create(16)
    try:
        assert _leaked_segments(before) == {segment.name}
    finally:
        segment.unlink()
    del alive
    assert _leaked_segments(before) == set()
