"""The command line, run in-process through ``main``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import asynctrain as at
from asynctrain import _cli as cli
from asynctrain._cli import main
from asynctrain.data import synthetic


def test_demo_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--n", "6000", "--epochs", "2", "--json", "--workers", "2"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"accuracy", "epochs", "seconds", "samples_per_s", "backend", "workers"} <= set(summary)
    assert summary["epochs"] == 2
    assert summary["workers"] == 2
    assert summary["backend"] == "thread"
    assert 0.5 < summary["accuracy"] <= 1.0


def test_demo_human_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["demo", "--problem", "logreg", "--n", "4000", "--epochs", "1", "--no-progress"]) == 0
    )
    out = capsys.readouterr().out
    assert "accuracy" in out
    assert "samples_per_s" in out


def test_train_saves_parameters_without_pickle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = synthetic("softmax", n=3000, seed=0)
    source = tmp_path / "data.npz"
    np.savez(source, X=data.X, y=data.y)
    out = tmp_path / "params.npz"
    code = main(
        ["train", str(source), "--model", "softmax", "--epochs", "2", "--out", str(out), "--json"]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    with np.load(out, allow_pickle=False) as saved:
        assert saved["W"].shape == (128, 10)


def test_train_mlp_and_linear(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", X=X, y=(X @ np.arange(5.0)).astype(np.float32))
    assert main(["train", str(tmp_path / "reg.npz"), "--model", "linear", "--no-progress"]) == 0
    np.savez(tmp_path / "cls.npz", X=X, y=(X[:, 0] > 0).astype(np.int64))
    assert (
        main(
            ["train", str(tmp_path / "cls.npz"), "--model", "mlp", "--hidden", "8", "--no-progress"]
        )
        == 0
    )


def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(tmp_path / "missing.npz"), "--model", "softmax"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asynctrain: error:")
    assert "missing.npz" in err


def test_python_dash_m_works() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asynctrain", "--help"], capture_output=True, text=True, check=True
    )
    assert "demo" in done.stdout


@pytest.mark.dask
def test_demo_on_a_dask_scheduler(dask_cluster: object, capsys: pytest.CaptureFixture[str]) -> None:
    address = dask_cluster.scheduler_address  # type: ignore[attr-defined]
    argv = ["demo", "--n", "3000", "--epochs", "1", "--json", "--backend", "dask"]
    assert main([*argv, "--scheduler", address]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backend"] == "dask"
    assert summary["workers"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "dask", "--scheduler", "tcp://10.1.2.3:8786"], "allow_insecure"),
        (["--backend", "thread", "--scheduler", "tls://10.1.2.3:8786"], "--backend dask"),
    ],
)
def test_scheduler_option_is_checked(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--n", "1000", "--epochs", "1", *extra]) == 2
    assert message in capsys.readouterr().err


def _with_stdout_closed(argv: list[str], *, buffered: bool) -> subprocess.CompletedProcess[str]:
    """Run ``python -m asynctrain *argv`` with its stdout a pipe whose reader is gone
    (``asynctrain ... | head`` once head has exited): every write to it fails, at the
    print (``PYTHONUNBUFFERED=1``) or at the flush of the buffer."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "asynctrain", *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", ["inspect", "inspect --json", "--version", "--help", "demo"])
def test_a_closed_stdout_ends_every_printing_command_quietly(
    tmp_path: Path, command: str, buffered: bool
) -> None:
    """``asynctrain inspect DIR | head`` printed a BrokenPipeError traceback (and
    ``--version`` an "Exception ignored" one at exit, status 120)."""
    argv = command.split()
    if argv[0] == "inspect":
        data = synthetic("softmax", n=600, seed=0)
        model = at.models.SoftmaxRegression(128, 10)
        at.run(at.fit(model, data, backend="inline", checkpoint_dir=tmp_path / "run"))
        argv.insert(1, str(tmp_path / "run"))
    elif argv[0] == "demo":
        argv += ["--n", "2000", "--epochs", "1", "--backend", "inline", "--no-progress"]
    done = _with_stdout_closed(argv, buffered=buffered)
    assert done.stderr == ""
    # argparse drops the failed write of --help and --version itself (status 0); the
    # flush of a buffered stdout fails after it.
    quiet = 0 if argv[0].startswith("--") and not buffered else 141
    assert done.returncode == quiet


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe (a worker's, not stdout)")

    monkeypatch.setattr(cli, "_inspect", broken)
    with pytest.raises(BrokenPipeError, match="a worker's"):
        main(["inspect", "anywhere"])
