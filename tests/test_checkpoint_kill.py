"""A writer saving checkpoints in a loop is SIGKILLed at random moments; nothing is torn.

A zygote subprocess imports asynctrain once and forks a fresh writer for every round
(starting a Python process per kill would cost half a second). The writer saves
``step-<i>.ckpt`` files whose arrays are a pure function of ``i``, and logs each ``i``
once its save has returned. After each kill, every checkpoint left must load and hold
exactly the arrays of its ``i``, and the latest must be the last logged save (or the
one after it, killed between its rename and its log line).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from asynctrain._checkpoint import list_checkpoints, read, sweep, temporaries

WRITER = r"""
import os, sys
from pathlib import Path
import numpy as np
from asynctrain._checkpoint._format import sweep, write

directory, log = Path(sys.argv[1]), Path(sys.argv[2])

def arrays(i):
    rng = np.random.default_rng(i)
    return {"params/W": rng.standard_normal((256, 256)).astype(np.float32),
            "opt_state/0": np.full(4096, i, dtype=np.int64)}

def run(i):
    sweep(directory)  # the temporaries of earlier, killed writers
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    while True:
        write(directory / f"step-{i:012d}.ckpt", {"i": i}, arrays(i))
        os.write(fd, b"%d\n" % i)
        for old in sorted(directory.glob("step-*.ckpt"))[:-3]:
            old.unlink()
        i += 1

write(log.with_name("warm-up.ckpt"), {}, arrays(0))  # load what numpy imports lazily
log.with_name("warm-up.ckpt").unlink()
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            run(int(line))
        finally:
            os._exit(1)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


def _expected(i: int) -> dict[str, bytes]:
    rng = np.random.default_rng(i)
    return {
        "params/W": rng.standard_normal((256, 256)).astype(np.float32).tobytes(),
        "opt_state/0": np.full(4096, i, dtype=np.int64).tobytes(),
    }


def _check_after_kill(directory: Path, complete: int) -> int:
    """Check every checkpoint left; return the latest's number.

    ``complete`` is the last save known to have completed (logged, or found by an earlier
    check); the latest file must be that one or, killed before its log line, the next.
    """
    found = list_checkpoints(directory)
    for path in found:
        manifest, arrays = read(path)
        assert path.name == f"step-{manifest['i']:012d}.ckpt"
        assert {k: v.tobytes() for k, v in arrays.items()} == _expected(manifest["i"])
    latest = int(found[-1].name[5:17]) if found else -1
    assert latest in (complete, complete + 1), (latest, complete)
    return latest


def _rounds(
    zygote: subprocess.Popen[str], rounds: int, directory: Path, log: Path
) -> tuple[int, int]:
    """Fork, kill and check ``rounds`` writers; return (kills mid-save, latest number)."""
    assert zygote.stdin is not None
    assert zygote.stdout is not None
    rng = np.random.default_rng(2024)
    torn, latest = 0, -1
    assert zygote.stdout.readline() == "ready\n"
    for _ in range(rounds):
        zygote.stdin.write(f"{latest + 1}\n")
        zygote.stdin.flush()
        pid = int(zygote.stdout.readline())
        time.sleep(float(rng.uniform(0.002, 0.1)))
        os.kill(pid, signal.SIGKILL)
        status = int(zygote.stdout.readline())
        assert os.WIFSIGNALED(status)
        assert os.WTERMSIG(status) == signal.SIGKILL
        torn += bool(temporaries(directory))
        logged = [int(n) for n in log.read_text().split()] if log.exists() else []
        latest = _check_after_kill(directory, max([latest, *logged]))
    return torn, latest


def _kill_rounds(tmp_path: Path, rounds: int) -> None:
    directory, log = tmp_path / "ckpt", tmp_path / "log"
    directory.mkdir()
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [sys.executable, "-c", WRITER, str(directory), str(log)]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True, "env": env}
    with subprocess.Popen(command, **pipes) as zygote:  # type: ignore[call-overload]
        torn, latest = _rounds(zygote, rounds, directory, log)
    assert latest >= rounds // 2, "the writer hardly ever completed a save"
    assert torn >= 1, "no kill landed in the middle of a save: the test proved nothing"
    sweep(directory)
    assert temporaries(directory) == []


def test_sigkill_during_saves_never_tears_a_checkpoint(tmp_path: Path) -> None:
    _kill_rounds(tmp_path, 10)


@pytest.mark.slow
def test_sigkill_during_saves_never_tears_a_checkpoint_100_times(tmp_path: Path) -> None:
    _kill_rounds(tmp_path, 100)
