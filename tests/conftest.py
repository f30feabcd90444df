"""Shared fixtures: every backend through one parametrized fixture, and a leak check."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import asynctrain as at
from asynctrain._checkpoint import temporaries

# Every event loop the tests create runs in debug mode: unawaited coroutines, callbacks
# from other threads and unclosed resources are reported (and warnings are errors).
os.environ.setdefault("PYTHONASYNCIODEBUG", "1")

BACKENDS = ["inline", "thread", "process"]


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """Each backend name in turn: the contract suite runs on all of them."""
    return str(request.param)


@pytest.fixture
async def backend(backend_name: str) -> AsyncIterator[at.backends.Backend]:
    """An open backend of each kind, closed after the test."""
    spec, _ = at.backends.get_backend(backend_name, workers=None if backend_name == "inline" else 2)
    async with spec as opened:
        yield opened


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


def _our_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("asynctrain")}


def _checkpoint_temporaries(root: Path) -> set[Path]:
    return set(temporaries(root, recursive=True))


@pytest.fixture(autouse=True)
def no_leaks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail a test that leaves asynctrain threads, child processes, shared memory, tasks or
    temporary checkpoint files (under the test's temporary directories) behind."""
    threads, children, segments = _our_threads(), _children(), _our_segments()
    temporary_root = tmp_path_factory.getbasetemp()
    checkpoint_temporaries = _checkpoint_temporaries(temporary_root)
    yield
    leaked_files = _checkpoint_temporaries(temporary_root) - checkpoint_temporaries
    assert not leaked_files, f"temporary checkpoint files left: {sorted(map(str, leaked_files))}"
    leaked_threads = _our_threads() - threads
    leaked_children = _children() - children
    leaked_segments = _our_segments() - segments
    assert not leaked_threads, f"threads left running: {sorted(leaked_threads)}"
    assert not leaked_children, f"child processes left running: {sorted(leaked_children)}"
    assert not leaked_segments, f"shared memory left in /dev/shm: {sorted(leaked_segments)}"


@pytest.fixture
async def no_task_leaks() -> AsyncIterator[None]:
    """Fail an async test that leaves asyncio tasks running on its loop."""
    before = asyncio.all_tasks()
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    assert not leaked, f"asyncio tasks left running: {leaked}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every async test also checks that it leaves no asyncio task behind."""
    for item in items:
        if isinstance(item, pytest.Function) and asyncio.iscoroutinefunction(item.obj):
            item.fixturenames.append("no_task_leaks")
