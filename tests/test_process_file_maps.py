"""Workers keep their maps of shared ``.npy`` files from one handle to the next (every fit
shares its dataset anew), and drop them once the file is gone."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from asynctrain.backends import ProcessBackend
from asynctrain.backends import _process_shared as shared_module
from asynctrain.backends._process import _file_gone
from asynctrain.data import Dataset

ROWS, COLS = 4096, 128  # 2 MiB of float32: shared as a file in /dev/shm


def touch_all(data: Any) -> tuple[int, float, int]:
    """A worker task: read every page of X; its pid, the sum and its minor faults since."""
    before = _minor_faults()
    total = float(np.asarray(data.read(0)["X"], np.float64).sum())
    return os.getpid(), total, _minor_faults() - before


def kept_maps() -> list[str]:
    return shared_module.file_maps()


def _minor_faults() -> int:
    with open(f"/proc/{os.getpid()}/stat") as handle:
        return int(handle.read().rpartition(")")[2].split()[7])


def _path_of(array: Any) -> Path:
    """The file behind a shared array."""
    base = array
    while not isinstance(base, np.memmap):
        base = base.base
    return Path(base.filename)


def _dataset(seed: int = 0) -> Dataset:
    X = np.random.default_rng(seed).standard_normal((ROWS, COLS)).astype(np.float32)
    data = Dataset(X, np.zeros(ROWS, np.int64)).to_shared()
    assert data.shared
    return data


async def _round(backend: ProcessBackend, X: Any) -> tuple[int, float, int]:
    handle = await backend.share({"X": X})
    try:
        return await backend.run(touch_all, handle)
    finally:
        await backend.release(handle)


async def test_a_second_handle_of_the_same_file_reuses_the_worker_s_map() -> None:
    data = _dataset()
    path = _path_of(data.X)
    async with ProcessBackend(workers=1) as backend:
        pid, first, faults_first = await _round(backend, data.X)
        assert str(path) in await backend.run(kept_maps)  # kept after the release
        pid2, second, faults_second = await _round(backend, data.X)
    assert pid2 == pid
    assert first == second == float(np.asarray(data.X, np.float64).sum())
    pages = ROWS * COLS * 4 // 4096
    assert faults_first >= pages // 16  # mapped anew: a fault per 64 KB at least
    assert faults_second < pages // 32  # the kept map: its pages are still mapped


async def test_a_map_is_dropped_when_its_dataset_dies() -> None:
    async with ProcessBackend(workers=2) as backend:
        data = _dataset()
        for _ in range(2):
            await asyncio.gather(_round(backend, data.X), _round(backend, data.X))
        path = str(_path_of(data.X))
        assert path in await backend.run(kept_maps)
        del data
        gc.collect()  # the data layer unlinks the file; the backend tells the workers
        assert not os.path.exists(path)  # noqa: ASYNC240 (a stat, in a test)
        await asyncio.sleep(0)  # the finalizer's hop to the loop
        for kept in await asyncio.gather(*(backend.run(kept_maps) for _ in range(2))):
            assert path not in kept


async def test_a_file_rewritten_or_replaced_is_read_anew(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.ones((ROWS, COLS), np.float32))
    async with ProcessBackend(workers=1) as backend:
        _, ones, _ = await _round(backend, np.load(path, mmap_mode="r"))
        writable = np.load(path, mmap_mode="r+")
        writable[:] = 2.0  # the same file, written in place: a shared map sees it
        writable.flush()
        del writable
        _, twos, _ = await _round(backend, np.load(path, mmap_mode="r"))
        replacement = tmp_path / "y.npy"
        np.save(replacement, np.full((ROWS, COLS), 3.0, np.float32))
        os.replace(replacement, path)  # another file under the same name
        _, threes, _ = await _round(backend, np.load(path, mmap_mode="r"))
        assert await backend.run(kept_maps) == [str(path)]  # the replaced one was dropped
    assert (ones, twos, threes) == (ROWS * COLS * 1.0, ROWS * COLS * 2.0, ROWS * COLS * 3.0)


async def test_the_owner_s_process_keeps_no_maps() -> None:
    data = _dataset()
    async with ProcessBackend(workers=1) as backend:
        await _round(backend, data.X)
    assert shared_module._FILE_MAPS is None


def _file_watches() -> int:
    """Finalizers alive that would tell a process backend its shared file is gone."""
    return sum(
        1
        for o in gc.get_objects()
        # type(), not isinstance(): that reads __class__, which some objects of other
        # libraries answer with a warning (torch's deprecated distributed.reduce_op)
        if type(o) is weakref.finalize and (o.peek() or (None, None))[1] is _file_gone
    )


async def test_a_closed_backend_stops_watching_the_files_it_shared() -> None:
    # A long-lived dataset (a service's, a memory-mapped file) is shared by fit after fit,
    # each on a backend of its own (at.fit, a trainer that opens its backend per fit).
    # Each backend's watch on the file lived as long as the data: one finalizer more per
    # backend, for ever.
    data = _dataset()
    before = _file_watches()
    for _ in range(5):
        async with ProcessBackend(workers=1) as backend:
            await _round(backend, data.X)
            assert _file_watches() == before + 1  # watched while the backend is open
    assert _file_watches() == before


async def test_an_array_of_a_file_since_replaced_is_shared_as_its_own_values(
    tmp_path: Path,
) -> None:
    # The array maps the old file; workers mapping the path would read the new one: the
    # process backend trained on other data than the Dataset held (and the thread backend).
    path = tmp_path / "x.npy"
    np.save(path, np.ones((ROWS, COLS), np.float32))
    X = np.load(path, mmap_mode="r")
    replacement = tmp_path / "new.npy"
    np.save(replacement, np.zeros((ROWS, COLS), np.float32))
    os.replace(replacement, path)  # a re-save under a temporary name, then a rename
    async with ProcessBackend(workers=1) as backend:
        _, total, _ = await _round(backend, X)
    assert total == ROWS * COLS * 1.0
