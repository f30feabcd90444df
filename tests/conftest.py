"""Shared fixtures: every async test on both event loops, every backend through one
parametrized fixture, and a leak check."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

import asynctrain as at
from asynctrain._checkpoint import temporaries
from asynctrain.backends import _blas
from asynctrain.data import _shared

# Every event loop the tests create runs in debug mode: unawaited coroutines, callbacks
# from other threads and unclosed resources are reported (and warnings are errors).
# pytest-asyncio's runners take it from ``asyncio_debug`` in pyproject.toml; this covers
# loops made elsewhere (asynctrain.run in a test, subprocesses the tests start).
os.environ.setdefault("PYTHONASYNCIODEBUG", "1")

BACKENDS = ["inline", "thread", "process"]

# The event loops every async test runs on: the stock one, and uvloop, which
# ``asynctrain.run`` picks. They differ where it matters here: uvloop makes every
# descriptor it watches non-blocking, and its ``loop.time()`` ticks in whole milliseconds.
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run every async test (and its async fixtures) once per loop in :data:`LOOPS`; the
    loop's name shows in the test id (``test_x[asyncio]``, ``test_x[uvloop]``)."""
    return LOOPS


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """Each backend name in turn: the contract suite runs on all of them."""
    return str(request.param)


@pytest.fixture
async def backend(
    backend_name: str, request: pytest.FixtureRequest
) -> AsyncIterator[at.backends.Backend]:
    """An open backend of each kind, closed after the test (Dask: on the shared cluster)."""
    if backend_name == "dask":
        address = request.getfixturevalue("dask_cluster").scheduler_address
        spec: at.backends.Backend = at.backends.DaskBackend(address)
    else:
        workers = None if backend_name == "inline" else 2
        spec, _ = at.backends.get_backend(backend_name, workers=workers)
    async with spec as opened:
        yield opened


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Any]:
    """One Dask LocalCluster (2 worker processes, loopback only) per test module.

    It runs on its own loop in a thread, so each test's DaskBackend connects to it by
    address from the test's own loop. Module scope: its threads stop before other
    modules run (their allocation checks see the whole process).
    """
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as cluster:
        yield cluster


def _children_of(pid: int) -> set[int]:
    # Each thread has its own children file: a process started from a worker thread is
    # listed under that thread, not under the main one.
    found: set[int] = set()
    for tid in _listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                found.update(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _is_mp_helper(pid: int) -> bool:
    """Forkserver and resource trackers: started once per process by multiprocessing (and
    by joblib's loky, which scikit-learn's n_jobs uses)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
    except OSError:
        return False
    helpers = (
        b"multiprocessing.forkserver",
        b"multiprocessing.resource_tracker",
        b"loky.backend.resource_tracker",
    )
    return any(helper in cmdline for helper in helpers)


def _children() -> set[int]:
    """Our child processes, with the forkserver's children (process workers) in place of it."""
    children: set[int] = set()
    for pid in _children_of(os.getpid()):
        if _is_mp_helper(pid):
            children |= _children_of(pid)
        else:
            children.add(pid)
    return children


def _our_segments() -> set[str]:
    # Only this process's: other test runs on the machine own segments of their own.
    prefix = f"asynctrain_{os.getpid()}_"
    return {name for name in _listdir("/dev/shm") if name.startswith(prefix)}


def _leaked_segments(before: set[str]) -> set[str]:
    """New files of ours in /dev/shm, less those of shared arrays not yet freed (a dataset
    a fixture still holds). No gc.collect(): it would only unlink files of arrays already
    garbage, which are no leak either, and it cost seconds over the suite."""
    return _our_segments() - before - _shared.held()


def _our_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("asynctrain")}


def _blas_holds() -> int:
    """Open backends holding the process's BLAS limit (``backends._blas``)."""
    holders: int = _blas._holders
    return holders


# Directories directly under the session's temporary root made while a test ran (its
# tmp_path, a mktemp() of its own): once that test has passed its leak check, no later
# test writes there, so they are not searched again. Searching the whole tree before and
# after every test cost time in proportion to the tests before it (minutes over the suite).
_FINISHED_TEST_DIRECTORIES: set[Path] = set()


def _searched_directories(root: Path) -> set[Path]:
    """The directories under ``root`` that a test can write to: its own, and those of
    module and session fixtures (made before any test of theirs ran). Not the symlinks
    pytest keeps to the latest of each name: they lead to one of these."""
    with os.scandir(root) as entries:
        found = {Path(entry.path) for entry in entries if entry.is_dir(follow_symlinks=False)}
    return found - _FINISHED_TEST_DIRECTORIES


def _checkpoint_temporaries(directories: set[Path]) -> set[Path]:
    return {found for path in directories for found in temporaries(path, recursive=True)}


@pytest.fixture(autouse=True)
def no_leaks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail a test that leaves asynctrain threads, child processes, shared memory, tasks or
    temporary checkpoint files (under the test's temporary directories) behind."""
    threads, children, segments = _our_threads(), _children(), _our_segments()
    blas_holds = _blas_holds()
    temporary_root = tmp_path_factory.getbasetemp()
    searched = _searched_directories(temporary_root)
    checkpoint_temporaries = _checkpoint_temporaries(searched)
    yield
    now_searched = _searched_directories(temporary_root)
    leaked_files = _checkpoint_temporaries(now_searched) - checkpoint_temporaries
    _FINISHED_TEST_DIRECTORIES.update(now_searched - searched)
    assert not leaked_files, f"temporary checkpoint files left: {sorted(map(str, leaked_files))}"
    leaked_threads = _our_threads() - threads
    leaked_children = _children() - children
    leaked_segments = _leaked_segments(segments)
    assert not leaked_threads, f"threads left running: {sorted(leaked_threads)}"
    assert not leaked_children, f"child processes left running: {sorted(leaked_children)}"
    assert not leaked_segments, f"shared memory left in /dev/shm: {sorted(leaked_segments)}"
    # A backend left open keeps the process's BLAS at one thread for the tests after it.
    assert _blas_holds() <= blas_holds, "a backend left open holds BLAS to one thread"


@pytest.fixture
async def no_task_leaks() -> AsyncIterator[None]:
    """Fail an async test that leaves asyncio tasks running on its loop."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [
        t
        for t in asyncio.all_tasks() - before
        if t is not current and not t.done() and not _is_dask_straggler(t)
    ]
    assert not leaked, f"asyncio tasks left running: {leaked}"


def _is_dask_straggler(task: asyncio.Task[object]) -> bool:
    # A Dask client's last batched write (a key release queued as it closed) can still be
    # a pending task when close() returns; it ends on its first step against the closed
    # comm. Anything else of Dask's left behind (an unclosed client) is still a leak.
    return getattr(task.get_coro(), "__qualname__", "") == "TCP.write"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every async test also checks that it leaves no asyncio task behind; every Dask test
    gets the shared cluster first, so the leak check counts its workers as already there."""
    for item in items:
        # A new list for each item: the parametrized items of one test share theirs, so an
        # insert for the Dask case gave every backend's case the cluster (and, without
        # distributed, skipped them all).
        if isinstance(item, pytest.Function) and item.get_closest_marker("dask"):
            item.fixturenames = ["dask_cluster", *item.fixturenames]
        if isinstance(item, pytest.Function) and asyncio.iscoroutinefunction(item.obj):
            item.fixturenames = [*item.fixturenames, "no_task_leaks"]
