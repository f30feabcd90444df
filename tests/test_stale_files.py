"""Stale-file sweeps judge by owner locks, never fail their caller, never touch others' files.

Files in /dev/shm (process segments, shared ``.npy`` arrays) and checkpoint temporaries are
swept when their owner is gone. The owner is judged by its owner lock, not by the pid in
the name (which means another process, or none, in another PID namespace), and a file of
another user, a directory or a FIFO is left alone without failing anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from pathlib import Path

import numpy as np
import pytest

import asynctrain as at
from asynctrain import _shm
from asynctrain._checkpoint import sweep
from asynctrain._ownerlock import hold
from asynctrain.backends import ProcessBackend
from asynctrain.data import _shared

SHM = Path("/dev/shm")
ROOT = str(Path(at.__file__).resolve().parents[1])  # where child processes import from
OTHER_UID = 12345
CLONE_NEWPID = 0x20000000
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant others' files")

HOLDER = """
import fcntl, os, sys
fds = [os.open(path, os.O_RDONLY) for path in sys.argv[1:]]
for fd in fds:
    fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()  # hold the locks until the test closes our stdin
"""


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@contextlib.contextmanager
def _planted(*paths: Path) -> Iterator[list[Path]]:
    try:
        yield list(paths)
    finally:
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)


def _file(path: Path, *, uid: int | None = None, mode: int = 0o600) -> Path:
    path.write_bytes(b"")
    path.chmod(mode)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


@contextlib.contextmanager
def _locked_by_child(*paths: Path) -> Iterator[subprocess.Popen[str]]:
    """A live process in whose hands the owner locks of ``paths`` are (like their owner's)."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *map(str, paths)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdin is not None
    try:
        assert child.stdout.readline() == "locked\n"
        yield child
    finally:
        child.stdin.close()
        child.wait(10)
        child.stdout.close()


def _all_there(paths: list[Path]) -> bool:
    return all(os.path.lexists(path) for path in paths)


def _sweep_first_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shared, "_swept", False)  # the next shared array sweeps again


# -- item: files the sweep cannot or should not remove --------------------------------------


@as_root
async def test_others_files_directories_and_fifos_never_fail_the_caller(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Root could remove them all: it must not. (Only names older asynctrain versions never
    # sweep, so that test runs of those on this machine are not disturbed by the plants.)
    dead = _dead_pid()
    directory, fifo = SHM / f"asynctrain_{dead}_7_locked", SHM / f"asynctrain_{dead}_8_locked"
    with _planted(
        _file(SHM / f"asynctrain_{dead}_5_locked", uid=OTHER_UID),
        _file(SHM / f"asynctrain_{dead}_6_locked.npy", uid=OTHER_UID, mode=0o000),
        directory,
        fifo,
    ) as planted:
        directory.mkdir()
        os.mkfifo(fifo, 0o600)
        np.savez(tmp_path / "d.npz", X=np.ones((20_000, 16)), y=np.zeros(20_000))
        _sweep_first_allocation(monkeypatch)
        assert at.data.synthetic("mlp", n=20_000).shared
        _sweep_first_allocation(monkeypatch)
        assert at.data.load(tmp_path / "d.npz").shared
        async with ProcessBackend(workers=1) as backend:
            assert await backend.run(pow, 2, 5) == 32
        assert _all_there(planted)
        assert not {path.name for path in planted} & set(_shm.sweep_stale_segments())


def _in_a_pid_namespace_as(uid: int, work: Callable[[], bool]) -> int:
    """Run ``work`` as ``uid`` in a new PID namespace (as its pid 1); return its exit code:
    0 if it returned True, 2 if False, 1 if it raised, 77 if namespaces are not allowed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 77
        try:
            if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWPID) == 0:
                inner = os.fork()
                if inner == 0:
                    code = 1
                    try:
                        os.setgid(uid)
                        os.setuid(uid)
                        code = 0 if work() else 2
                    finally:
                        os._exit(code)
                status = os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1])
        finally:
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@as_root
def test_a_file_this_user_cannot_remove_never_fails_the_caller() -> None:
    # The case: root's files in /dev/shm (sticky), seen by another user who takes
    # them for stale. Its pid namespace makes our pid dead to it, and only to it: test runs
    # of any asynctrain version on this machine see our pid alive and leave them alone.
    mine = f"asynctrain_{os.getpid()}_99999"
    directory, locked = SHM / f"{mine}8", _file(SHM / f"{mine}7_locked")
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        planted = stack.enter_context(_planted(_file(SHM / f"{mine}9"), directory, locked))
        directory.mkdir()
        lock = os.open(locked, os.O_RDONLY)  # held, so that no sweeper of root's takes it
        stack.callback(os.close, lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.chmod(folder, 0o755)
        saved = Path(folder) / "d.npz"
        np.savez(saved, X=np.ones((20_000, 16)), y=np.zeros(20_000))
        resource_tracker.ensure_running()  # the child, another user, could not start one

        def work() -> bool:
            _shared._swept = False
            first = at.data.synthetic("mlp", n=20_000)
            _shared._swept = False
            return first.shared and at.data.load(saved).shared

        status = _in_a_pid_namespace_as(OTHER_UID, work)
        if status == 77:
            pytest.skip("no PID namespaces here")
        assert status == 0
        assert _all_there(planted)


# -- item: liveness by owner lock, not by pid -----------------------------------------------


def test_a_file_whose_lock_is_held_is_kept_whatever_its_pid_says() -> None:
    # Owners in another PID namespace: their pid here is dead, or a different live process.
    dead, unrelated = _dead_pid(), os.getppid()
    names = [f"asynctrain_{dead}_0_locked", f"asynctrain_{unrelated}_1_locked"]
    names += [name + ".npy" for name in names]
    with _planted(*(_file(SHM / name) for name in names)) as planted:
        with _locked_by_child(*planted):
            assert not set(names) & set(_shm.sweep_stale_segments())
            assert all(path.exists() for path in planted)
        _shm.sweep_stale_segments()  # locks released
        assert not any(path.exists() for path in planted)


def test_checkpoint_temporaries_are_judged_by_their_writers_lock(tmp_path: Path) -> None:
    host = socket.gethostname().replace(".", "-").replace("_", "-")
    names = [f".a.ckpt.{host}.{pid}.0123abcd.tmp" for pid in (_dead_pid(), os.getppid())]
    planted = [_file(tmp_path / name) for name in names]
    with _locked_by_child(*planted):
        assert sweep(tmp_path) == []
    assert sweep(tmp_path) == sorted(planted)
    assert list(tmp_path.iterdir()) == []


async def test_live_files_of_this_process_survive_a_sweep_by_another(tmp_path: Path) -> None:
    # Workers open and map the owner's files, and numpy opens and closes the .npy path: the
    # owner's lock must survive all of it (a POSIX record lock would not).
    data = at.data.synthetic("mlp", n=20_000)
    async with ProcessBackend(workers=1) as backend:
        shared = await backend.share({"X": data.X, "W": np.ones((300, 300))})
        assert await backend.run(_total, shared) == pytest.approx(_total(shared))
        ours = {
            name for name in _shm.our_segments() if name.startswith(f"asynctrain_{os.getpid()}_")
        }
        assert len(ours) >= 2  # the dataset's .npy file and the segment of W
        swept = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", SWEEP],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
        assert not ours & set(json.loads(swept.stdout))
        assert ours <= _shm.our_segments()


SWEEP = "import json, asynctrain._shm as s; print(json.dumps(s.sweep_stale_segments()))"


def _total(shared: at.backends.SharedArrays) -> float:
    arrays = shared.read()
    return float(arrays["X"].sum() + arrays["W"].sum())


def test_hold_yields_to_a_sweeper_that_locked_first(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR)
    sweeper = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(sweeper, fcntl.LOCK_EX)
        assert not hold(fd)  # the sweeper will remove it: make another
        path.unlink()
        fcntl.flock(sweeper, fcntl.LOCK_UN)
        assert not hold(fd)  # removed before we locked: ours no longer
    finally:
        os.close(fd)
        os.close(sweeper)


NAMESPACED_OWNER = """
import os, sys
from multiprocessing import resource_tracker
from asynctrain._shm import Segment
if len(sys.argv) > 1:  # become that pid of this namespace (a pid dead outside it)
    with open("/proc/sys/kernel/ns_last_pid", "w") as last:
        last.write(str(int(sys.argv[1]) - 1))
    child = os.fork()
    if child:
        os._exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
segment = Segment.create(64)
resource_tracker.unregister("/" + segment.name, "shared_memory")  # as if killed with it
print(os.getpid(), segment.name, flush=True)
sys.stdin.read()
os._exit(0)  # the file stays behind, its owner lock released by the exit
"""


@as_root
@pytest.mark.parametrize("pid_here", ["alive", "dead"])
def test_a_segment_owned_in_another_pid_namespace(pid_here: str) -> None:
    # The owner's pid means, in our namespace, another live process (1) or none at all.
    unshare = shutil.which("unshare")
    command = [unshare or "unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if unshare is None or subprocess.run([*command, "true"]).returncode:
        pytest.skip("no PID namespaces here")
    wanted = [] if pid_here == "alive" else [str(_dead_pid())]
    owner = subprocess.Popen(
        [*command, sys.executable, "-c", NAMESPACED_OWNER, *wanted],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert owner.stdout is not None
    assert owner.stdin is not None
    pid, name = owner.stdout.readline().split()
    path = SHM / name
    try:
        assert pid == (wanted[0] if wanted else "1")
        assert name.startswith(f"asynctrain_{pid}_")
        assert _shm.pid_alive(int(pid)) == (pid_here == "alive")
        assert name not in _shm.sweep_stale_segments()
        assert path.exists()  # its owner lives, whatever its pid says here
        owner.stdin.close()
        assert owner.wait(10) == 0
        owner.stdout.close()
        _shm.sweep_stale_segments()
        assert not path.exists()  # its owner is gone, whatever its pid says here
    finally:
        owner.kill()
        owner.wait()
        path.unlink(missing_ok=True)
