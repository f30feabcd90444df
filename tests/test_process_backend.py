"""ProcessBackend: shared memory through real workers, reuse, worker settings, pickling."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import asynctrain as at
from asynctrain.backends import ProcessBackend, default_workers
from asynctrain.backends import _process_shared as shared_module
from asynctrain.backends._malloc import keep_freed_memory
from asynctrain.backends._priority import batch_policy
from asynctrain.backends._process_shared import ProcessShared

# -- functions the workers run (module level, so they pickle by reference) --------------


def shard_sum(data: Any, grads: Any, slot: int, start: int, stop: int) -> float:
    """A shard-shaped task: read rows of the shared dataset, write a gradient slot."""
    X = data.read(0)["X"][start:stop]
    grads.write(slot, {"g": X.sum(axis=0)})
    return float(data.read(0)["y"][start:stop].sum())


def attached_keys() -> list[str]:
    return sorted(shared_module._ATTACHED)


def worker_settings() -> dict[str, Any]:
    from threadpoolctl import threadpool_info

    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return {
        "blas": blas,
        "nice": os.nice(0),
        "policy": getattr(os, "sched_getscheduler", lambda pid: None)(0),
        "batch_allowed": batch_policy(),  # already batch: allowed again, or refused here
        "env": os.environ.get("OPENBLAS_NUM_THREADS"),
        "pid": os.getpid(),
    }


def minor_faults(pid: int) -> int:
    """Minor page faults process ``pid`` has taken so far (/proc/<pid>/stat, field 10)."""
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rpartition(")")[2].split()[7])


def read_mapped_flag(data: Any) -> tuple[float, bool]:
    X = data.read(0)["X"]
    return float(X[3:7].sum()), isinstance(X.base, np.memmap) or isinstance(X, np.memmap)


def make_closure() -> Any:
    offset = 1

    def add(x: int) -> int:
        return x + offset

    return add


def raise_on_overflow() -> str:
    np.seterr(over="raise")  # model code changing numpy's error state
    return str(np.geterr()["over"])


def overflow_setting() -> str:
    return str(np.geterr()["over"])


@pytest.fixture
async def process2() -> AsyncIterator[ProcessBackend]:
    async with ProcessBackend(workers=2) as backend:
        yield backend


# -- shared memory ------------------------------------------------------------------------


async def test_workers_read_data_and_write_gradient_slots(process2: ProcessBackend) -> None:
    X = np.random.default_rng(0).standard_normal((20_000, 16))  # 2.5 MB
    y = np.arange(20_000)
    data = await process2.share({"X": X, "y": y})
    grads = await process2.share({"g": np.zeros(16)}, slots=4)
    bounds = [(0, 5000), (5000, 10_000), (10_000, 15_000), (15_000, 20_000)]
    sums = await asyncio.gather(
        *(process2.run(shard_sum, data, grads, s, a, b) for s, (a, b) in enumerate(bounds))
    )
    for slot, (a, b) in enumerate(bounds):
        np.testing.assert_array_equal(grads.read(slot)["g"], X[a:b].sum(axis=0))
        assert sums[slot] == y[a:b].sum()
    stats = process2.stats
    # A task carries the handles' layout and four numbers, never the 2.5 MB of data.
    assert stats.bytes_sent / stats.tasks < 2000


async def test_read_gives_read_only_views_and_write_checks_shapes(
    process2: ProcessBackend,
) -> None:
    shared = await process2.share({"w": np.ones((2, 3))}, slots=2)
    with pytest.raises(ValueError, match="read-only"):
        shared.read(0)["w"][0, 0] = 5.0
    with pytest.raises(at.ConfigError, match="shape"):
        shared.write(0, {"w": np.ones(3)})
    with pytest.raises(at.ConfigError, match="keys"):
        shared.write(0, {"v": np.ones((2, 3))})
    await process2.release(shared)
    await process2.release(shared)  # idempotent
    with pytest.raises(at.StateError, match="released"):
        shared.read(0)


async def test_segments_are_private_and_named_after_the_owner(process2: ProcessBackend) -> None:
    shared = await process2.share({"X": np.zeros((10, 2))})
    assert re.fullmatch(rf"asynctrain_{os.getpid()}_\d+_locked", shared.key)
    path = Path("/dev/shm") / shared.key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    await process2.release(shared)
    assert not path.exists()


async def test_release_unmaps_the_segment_in_workers() -> None:
    async with ProcessBackend(workers=1) as backend:
        shared = await backend.share({"X": np.arange(12.0).reshape(6, 2), "y": np.arange(6)})
        grads = await backend.share({"g": np.zeros(2)})
        await backend.run(shard_sum, shared, grads, 0, 0, 3)
        assert shared.key in await backend.run(attached_keys)
        await backend.release(shared)
        assert shared.key not in await backend.run(attached_keys)


async def test_aclose_unlinks_every_segment() -> None:
    backend = ProcessBackend(workers=1)
    async with backend:
        keys = [(await backend.share({"a": np.zeros(4)}, slots=s)).key for s in (1, 2)]
    assert not any((Path("/dev/shm") / key).exists() for key in keys)


async def test_a_mapped_npy_file_is_shared_in_place(tmp_path: Path) -> None:
    path = tmp_path / "X.npy"
    np.save(path, np.arange(40.0).reshape(20, 2))
    X = np.load(path, mmap_mode="r")
    dataset = at.data.Dataset(X, np.zeros(20, dtype=np.int64))
    async with ProcessBackend(workers=1) as backend:
        shared = await backend.share({"X": dataset.X, "y": dataset.y})
        fields = {f.key: f for f in shared.fields}
        assert fields["X"].path == str(path)
        assert shared.nbytes < 1024  # only y was copied
        total, mapped = await backend.run(read_mapped_flag, shared)
        assert total == X[3:7].sum()
        assert mapped


async def test_a_copy_on_write_map_is_copied(tmp_path: Path) -> None:
    path = tmp_path / "X.npy"
    np.save(path, np.zeros((8, 2)))
    async with ProcessBackend(workers=1) as backend:
        shared = await backend.share({"X": np.load(path, mmap_mode="c")})
        assert shared.fields[0].path is None


# -- the pool -------------------------------------------------------------------------------


async def test_one_pool_serves_several_trainers(process2: ProcessBackend) -> None:
    data = at.data.synthetic("softmax", n=2048)
    model = at.models.SoftmaxRegression(128, 10)
    results = []
    for _ in range(2):
        async with at.Trainer(model, backend=process2, batch_size=512, shards=4) as trainer:
            results.append(await trainer.fit(data, epochs=1))
    assert process2.state == "open"  # the trainers did not close a backend they were given
    assert process2.stats.workers_started == 2
    np.testing.assert_array_equal(results[0].params["W"], results[1].params["W"])
    stats = process2.stats
    assert stats.bytes_sent / stats.tasks < 4096


async def test_workers_limit_blas_and_run_below_the_parent(process2: ProcessBackend) -> None:
    settings = await asyncio.gather(*(process2.run(worker_settings) for _ in range(4)))
    cores = default_workers()
    for seen in settings:
        assert all(threads == 1 and threads * 2 <= max(cores, 2) for threads in seen["blas"])
        assert seen["nice"] > os.nice(0)
        if sys.platform.startswith("linux") and seen["batch_allowed"]:
            assert seen["policy"] == os.SCHED_BATCH  # waking it never preempts the loop
        assert seen["env"] == str(process2.blas_threads)
        assert seen["pid"] in process2.pids


@pytest.mark.skipif(not keep_freed_memory(), reason="needs glibc's mallopt")
async def test_what_a_task_sets_in_numpy_ends_with_the_task() -> None:
    # As on threads (each call runs in a context copy): the worker's next task, of any
    # fit, used to run with the error state a previous task had set.
    async with ProcessBackend(workers=1) as backend:
        default = await backend.run(overflow_setting)
        assert await backend.run(raise_on_overflow) == "raise"
        assert await backend.run(overflow_setting) == default != "raise"


async def test_workers_reuse_freed_memory_instead_of_faulting_it_in_again(
    process2: ProcessBackend,
) -> None:
    data = at.data.synthetic("mlp", n=16_384, seed=0)
    model = at.models.MLP((128, 256, 10))
    async with at.Trainer(model, backend=process2, batch_size=2048, shards=2) as trainer:
        await trainer.fit(data, epochs=1)  # maps the data and slots, warms the heaps
        before = {pid: minor_faults(pid) for pid in process2.pids}
        await trainer.fit(data, epochs=1)
    faults = sum(minor_faults(pid) - count for pid, count in before.items())
    # The oracle: fresh memory for every task would fault in at least each shard's rows
    # (1024x128) and hidden layer (1024x256), float32: 16 tasks an epoch. Measured here:
    # about 11,000 faults without the mallopt call (1.8x that bound), about 450 with it.
    pages_if_fresh = 16 * (1024 * 128 + 1024 * 256) * 4 // 4096
    assert faults < pages_if_fresh / 2, (faults, pages_if_fresh)


async def test_spawn_start_method() -> None:
    async with ProcessBackend(workers=1, start_method="spawn") as backend:
        assert await backend.run(pow, 3, 3) == 27


def test_settings_are_checked() -> None:
    with pytest.raises(at.ConfigError, match="start_method"):
        ProcessBackend(start_method="fork")
    with pytest.raises(at.ConfigError, match="max_retries"):
        ProcessBackend(max_retries=-1)
    with pytest.raises(at.ConfigTypeError):
        ProcessBackend(workers=1.5)  # type: ignore[arg-type]
    assert repr(ProcessBackend(workers=2)) == "<ProcessBackend workers=2 forkserver unopened>"
    assert at.backends.get_backend("process", workers=3)[0].workers == 3


# -- picklability ---------------------------------------------------------------------------


def test_check_picklable_accepts_module_level_objects() -> None:
    backend = ProcessBackend(workers=1)
    backend.check_picklable(shard_sum, at.models.MLP((4, 3)), np.arange(3))
    assert backend.state == "unopened"  # the check starts nothing


def test_check_picklable_accepts_objects_holding_large_arrays() -> None:
    # Pickle protocol 5 writes a large buffer as a PickleBuffer, not bytes: a model holding
    # its initial parameters (a JaxModel of any size) was refused as unpicklable.
    ProcessBackend(workers=1).check_picklable({"weights": np.zeros(1 << 17)})


@pytest.mark.parametrize(
    "obj",
    [lambda x: x, make_closure(), type("Local", (), {})()],
    ids=["lambda", "closure", "local"],
)
def test_check_picklable_rejects_what_cannot_cross(obj: object) -> None:
    with pytest.raises(at.ConfigTypeError, match=r"module level.*backend='thread'"):
        ProcessBackend(workers=1).check_picklable(obj)


def test_check_picklable_rejects_interactive_main(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")  # like a notebook or REPL: no __file__

    def defined_in_a_notebook() -> None: ...

    defined_in_a_notebook.__module__ = "__main__"
    defined_in_a_notebook.__qualname__ = "defined_in_a_notebook"
    main.defined_in_a_notebook = defined_in_a_notebook  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "__main__", main)
    with pytest.raises(at.ConfigTypeError, match="interactive session"):
        ProcessBackend(workers=1).check_picklable(defined_in_a_notebook)


async def test_run_rejects_a_lambda_before_any_work(process2: ProcessBackend) -> None:
    with pytest.raises(at.ConfigTypeError, match="module level"):
        await process2.run(lambda: 1)
    assert process2.stats.tasks == 0


# -- stale segments -------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _make_segment(name: str) -> Path:
    path = Path("/dev/shm") / name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    return path


def test_a_zombie_owner_counts_as_dead() -> None:
    from asynctrain._shm import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    try:
        assert not pid_alive(child.pid)
        assert pid_alive(os.getpid())
    finally:
        child.wait()
    assert not pid_alive(child.pid)


async def test_stale_segments_of_dead_owners_are_swept() -> None:
    # Segments, and the .npy files of asynctrain.data's shared arrays; nothing else.
    dead_pid, live_pid = _dead_pid(), os.getppid()
    dead = [_make_segment(f"asynctrain_{dead_pid}_0{s}") for s in ("", ".npy")]
    live = [_make_segment(f"asynctrain_{live_pid}_999999{s}") for s in ("", ".npy")]
    others = [
        _make_segment(name)
        for name in ("someone_elses_segment_1_2", f"asynctrain_{dead_pid}_1.npz", "x.npy")
    ]
    try:
        async with ProcessBackend(workers=1):
            pass
        assert not any(path.exists() for path in dead)
        assert all(path.exists() for path in live + others)
    finally:
        for path in dead + live + others:
            path.unlink(missing_ok=True)


def test_process_shared_pickles_as_its_layout_only() -> None:
    import pickle

    shared = ProcessShared("asynctrain_1_1", (), 2, 4096)
    clone = pickle.loads(pickle.dumps(shared))
    assert (clone.key, clone.slots, clone.slot_bytes) == ("asynctrain_1_1", 2, 4096)
    assert len(pickle.dumps(shared)) < 200


def _parent_blas_threads() -> set[int]:
    return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


def test_threadpoolctl_sees_numpy_s_own_blas() -> None:
    """Every BLAS limit (one thread per worker, the parent's while a backend is open) goes
    through threadpoolctl. Before 3.5 it did not know numpy 2's bundled scipy-openblas, so
    no limit applied and the BLAS tests here skipped ("no BLAS library loaded")."""
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    name = str(blas.get("name", "")).lower()
    kinds = [kind for kind in ("openblas", "mkl", "blis") if kind in name]
    if not blas.get("found") or not kinds:
        pytest.skip(f"numpy's BLAS ({name or 'none'}) is not one threadpoolctl controls")
    found = {info["internal_api"] for info in threadpool_info() if info["user_api"] == "blas"}
    assert kinds[0] in found, f"threadpoolctl finds {found or 'no BLAS'}; numpy uses {name}"


async def test_the_parent_s_blas_is_limited_while_the_backend_is_open() -> None:
    # A BLAS call in the parent (evaluation, the caller's own math) must not spin threads
    # on the workers' cores; the limit seen before opening comes back after closing.
    if not _parent_blas_threads():
        pytest.skip("no BLAS library loaded")
    with threadpool_limits(limits=2, user_api="blas"):
        backend = ProcessBackend(workers=1)
        assert _parent_blas_threads() == {2}
        async with backend:
            assert _parent_blas_threads() == {1}
            X = np.arange(12.0).reshape(4, 3)
            data = await backend.share({"X": X, "y": np.zeros(4)})
            grads = await backend.share({"g": np.zeros(3)})
            await backend.run(shard_sum, data, grads, 0, 0, 4)
            assert _parent_blas_threads() == {1}
        assert _parent_blas_threads() == {2}
