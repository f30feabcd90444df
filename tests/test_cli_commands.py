"""The command line's commands and options: predict, tasks and labels, resume, outputs,
plots, --version and help (run in-process through ``main``)."""

from __future__ import annotations

import io
import json
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import asynctrain as at
from asynctrain import _progress
from asynctrain._checkpoint import list_checkpoints
from asynctrain._checkpoint._lock import DirectoryLock
from asynctrain._cli import main
from asynctrain.data import Dataset, load, synthetic


def _no_nan(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def softmax_file(tmp_path: Path) -> Path:
    data = synthetic("softmax", n=3000, seed=0)
    path = tmp_path / "data.npz"
    np.savez(path, X=data.X[:, :16], y=data.y)
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"asynctrain {at.__version__}"


def test_help_is_plain_text_and_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "``" not in out
    for command in ("demo", "train", "predict", "inspect", "bench"):
        assert f"    {command} " in out


def _trainer_oracle(path: Path, *, standardize: bool) -> tuple[at.Trainer, Any]:
    """What `train --model softmax --lr 0.01 --epochs 2` computes, through the library."""
    data = load(path)
    train, _ = data.split(0.1, seed=0)
    mean = scale = None
    if standardize:
        X64 = np.asarray(train.X, dtype=np.float64)
        mean, scale = X64.mean(axis=0), X64.std(axis=0)
        train = Dataset(((X64 - mean) / scale).astype(np.float32), train.y)
    model = at.models.SoftmaxRegression(train.n_features, 10)
    trainer = at.Trainer(model, at.optim.adam(0.01), backend="inline", seed=0)
    at.run(trainer.fit(train, epochs=2))
    return trainer, (mean, scale)


@pytest.mark.parametrize("standardize", [False, True])
def test_train_out_then_predict_reproduces_trainer_predict(
    softmax_file: Path, tmp_path: Path, standardize: bool
) -> None:
    out, pred = tmp_path / "model.npz", tmp_path / "pred.npy"
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "2", "--no-progress"]
    argv += ["--out", str(out)] + (["--standardize"] if standardize else [])
    assert main(argv) == 0
    assert main(["predict", str(out), str(softmax_file), "--out", str(pred)]) == 0
    trainer, (mean, scale) = _trainer_oracle(softmax_file, standardize=standardize)
    X = np.load(softmax_file)["X"]
    if standardize:
        X = ((X.astype(np.float64) - mean) / scale).astype(np.float32)
    np.testing.assert_array_equal(np.load(pred), trainer.predict(X))


def test_predict_on_overflowing_parameters_warns_nowhere(
    softmax_file: Path, tmp_path: Path
) -> None:
    # Trainer.predict calls the model with numpy's warnings off; `predict` did not:
    # "overflow encountered in matmul", an error under warnings-as-errors (as here).
    # The oracle: the model's own answer, computed with the warnings ignored.
    out, pred = tmp_path / "model.npz", tmp_path / "pred.npy"
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "1", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    with np.load(out) as saved:
        arrays = {key: saved[key] for key in saved.files}
    params = {k: v * np.float32(1e37) for k, v in arrays.items() if v.dtype == np.float32}
    np.savez(out, **{**arrays, **params})
    X = np.load(softmax_file)["X"].astype(np.float32) * np.float32(100)
    np.save(tmp_path / "X.npy", X)
    assert main(["predict", str(out), str(tmp_path / "X.npy"), "--out", str(pred)]) == 0
    model = at.models.SoftmaxRegression(X.shape[1], 10)
    with np.errstate(all="ignore"):
        logits = X @ params["W"] + params["b"]
        assert not np.isfinite(logits).all()  # they do overflow
        expected = model.predict(params, X)
    np.testing.assert_array_equal(np.load(pred), expected)


def test_predict_refuses_rows_its_model_cannot_hold_in_one_line(
    softmax_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A value past float32's range was cast to inf with "overflow encountered in cast"
    # and predicted on; it is refused as Trainer.predict refuses it, naming the value.
    out, pred = tmp_path / "model.npz", tmp_path / "pred.npy"
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "1", "--no-progress"]
    for options in ([], ["--standardize"]):
        assert main([*argv, *options, "--out", str(out)]) == 0
        X = np.load(softmax_file)["X"].astype(np.float64)
        X[3, 2] = 1e300
        np.save(tmp_path / "X.npy", X)
        capsys.readouterr()
        assert main(["predict", str(out), str(tmp_path / "X.npy"), "--out", str(pred)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert "row 3" in err, err
        assert not pred.exists()


def test_labels_are_encoded_and_decoded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((900, 4)).astype(np.float32)
    labels = np.array([0, 1000, 2000])[np.argmax(X[:, :3], axis=1)]
    np.savez(tmp_path / "d.npz", X=X, y=labels)
    out, pred = tmp_path / "m.npz", tmp_path / "p.npy"
    argv = ["train", str(tmp_path / "d.npz"), "--model", "mlp", "--hidden", "8"]
    assert main([*argv, "--epochs", "20", "--lr", "0.05", "--out", str(out), "--json"]) == 0
    with np.load(out) as saved:
        assert saved["W1"].shape == (8, 3)  # three classes, not 2001
    assert main(["predict", str(out), str(tmp_path / "d.npz"), "--out", str(pred)]) == 0
    predicted = np.load(pred)
    assert set(np.unique(predicted)) <= {0, 1000, 2000}
    assert np.mean(predicted == labels) > 0.8


def test_a_float_target_is_regression_and_json_has_no_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(2)
    X = rng.standard_normal((600, 5)).astype(np.float32)
    np.savez(tmp_path / "r.npz", X=X, y=(X @ np.arange(5.0) + 0.5).astype(np.float32))
    argv = ["train", str(tmp_path / "r.npz"), "--model", "mlp", "--hidden", "8", "--json"]
    assert main([*argv, "--out", str(tmp_path / "m.npz")]) == 0
    summary = _no_nan(capsys.readouterr().out)
    assert summary["accuracy"] is None
    with np.load(tmp_path / "m.npz") as saved:
        assert saved["W1"].shape == (8, 1)


def test_many_distinct_integer_labels_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((500, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=rng.integers(25, 346, size=500))  # like diabetes
    assert main(["train", str(tmp_path / "d.npz"), "--model", "mlp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--task regression" in err
    assert "--max-classes 100" in err
    argv = ["train", str(tmp_path / "d.npz"), "--model", "mlp", "--task", "regression"]
    assert main([*argv, "--epochs", "1", "--no-progress"]) == 0


def test_a_model_that_cannot_do_the_task_is_refused(
    softmax_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(softmax_file), "--model", "softmax", "--task", "regression"]) == 2
    assert "--model mlp or linear" in capsys.readouterr().err
    assert main(["train", str(softmax_file), "--model", "logreg"]) == 2
    assert "exactly 2" in capsys.readouterr().err


def test_out_in_a_missing_directory_fails_before_training(
    softmax_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing" / "p.npz"
    assert main(["train", str(softmax_file), "--model", "softmax", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert "does not exist" in captured.err
    assert "epoch" not in captured.err + captured.out


def test_out_is_written_under_exactly_its_name(
    softmax_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.txt"
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "1", "--json"]
    assert main([*argv, "--out", str(out)]) == 0
    assert _no_nan(capsys.readouterr().out)["out"] == str(out)
    assert out.is_file()
    assert not (tmp_path / "p.txt.npz").exists()


def test_an_interrupted_write_keeps_the_earlier_model_whole(
    softmax_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or a kill, or a full disk) while ``--out`` is written leaves the file that
    was there, and no temporary; the written file is readable like open()'s."""
    out = tmp_path / "model.npz"
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    before = out.read_bytes()
    assert out.stat().st_mode & 0o044  # not private, as mkstemp's files are
    savez = np.savez

    def interrupted(file: Any, **arrays: Any) -> None:
        savez(file, **arrays)  # all but the end: the file is written, then cut short
        file.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    assert main([*argv, "--seed", "1"]) == 130  # "asynctrain: interrupted"
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "model.npz"]


def test_a_full_disk_under_the_outputs_is_one_line(
    softmax_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A full disk (or ``ulimit -f``) while ``--out`` or ``--plot`` is written was an
    OSError traceback, exit 1, after the last epoch; the plot was left truncated."""
    out, plot = tmp_path / "model.npz", tmp_path / "curves.png"
    plot.write_bytes(b"earlier plot")
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "1", "--json"]

    def full(file: Any, *args: Any, **kwargs: Any) -> None:
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asynctrain: error: --out {out}: could not write it (No space")
    assert len(err.splitlines()) == 1
    assert not out.exists()
    monkeypatch.undo()
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", lambda figure, file, **kwargs: full(file))
    assert main([*argv, "--plot", str(plot)]) == 2
    assert "--plot" in capsys.readouterr().err
    assert plot.read_bytes() == b"earlier plot"
    monkeypatch.undo()
    assert main([*argv, "--out", str(out)]) == 0
    monkeypatch.setattr(np, "save", full)
    predicted = tmp_path / "p.npy"
    assert main(["predict", str(out), str(softmax_file), "--out", str(predicted)]) == 2
    assert f"--out {predicted}: could not write it" in capsys.readouterr().err
    assert not predicted.exists()


@pytest.mark.parametrize(
    "edit",
    [
        {"classes": [0]},  # fewer labels than outputs: an IndexError in decode
        {"classes": 5},
        {"mean": [0.0, 1.0, 2.0], "scale": [1.0, 1.0, 1.0]},  # a broadcast ValueError
        {"mean": "abc", "scale": "x"},  # a numpy UFuncNoLoopError
        {"mean": [0.0] * 16, "scale": [0.0] * 16},  # "X has a non-finite value (-inf)"
    ],
)
def test_a_damaged_model_description_is_one_line(
    softmax_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: dict[str, Any],
) -> None:
    out = tmp_path / "model.npz"
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 0
    with np.load(out) as saved:
        arrays = {key: saved[key] for key in saved.files}
    spec = json.loads(str(arrays["__asynctrain_model__"]))
    arrays["__asynctrain_model__"] = np.array(json.dumps({**spec, **edit}))
    np.savez(out, **arrays)
    capsys.readouterr()
    assert main(["predict", str(out), str(softmax_file), "--out", str(tmp_path / "p.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asynctrain: error: {out}: not a model description of asynctrain (")
    assert len(err.splitlines()) == 1


def test_dask_backend_without_dask_is_one_line(
    softmax_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    monkeypatch.delitem(sys.modules, "asynctrain.backends._dask", raising=False)
    argv = ["train", str(softmax_file), "--model", "softmax", "--backend", "dask"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'asynctrain[dask]'" in err


def test_parquet_without_pyarrow_is_one_line(
    softmax_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A minimal install: `train` and `predict` of a .parquet printed load's ImportError
    as a traceback (exit status 1); it is one line naming the extra, like Dask's."""
    model = tmp_path / "model.npz"
    assert main(["train", str(softmax_file), "--model", "softmax", "--out", str(model)]) == 0
    capsys.readouterr()
    table = tmp_path / "table.parquet"
    table.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow fails
    for argv in (
        ["train", str(table), "--model", "softmax"],
        ["predict", str(model), str(table), "--out", str(tmp_path / "p.npy")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert "pip install 'asynctrain[parquet]'" in err


def test_no_validation_trains_on_every_row(
    softmax_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "1", "--json"]
    assert main([*argv, "--batch-size", "100", "--no-validation"]) == 0
    summary = _no_nan(capsys.readouterr().out)
    assert summary["steps"] == 30  # 3000 rows / 100 (with validation: 2700 / 100)
    assert summary["accuracy"] is None


def test_epochs_are_numbered_as_the_events_number_them(
    softmax_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(softmax_file), "--model", "softmax", "--epochs", "2"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "epoch" in line]
    data = load(softmax_file).split(0.1, seed=0)[0]
    trainer = at.Trainer(at.models.SoftmaxRegression(16, 10), "adam", backend="inline")
    history = at.run(trainer.fit(data, epochs=2)).history
    assert [line.split(":")[0] for line in lines] == [f"epoch {e.epoch}" for e in history]


class _Interrupt(at.Callback):
    """Press Ctrl-C (a real SIGINT) after ``after`` steps."""

    def __init__(self, after: int) -> None:
        self.after, self.steps = after, 0

    def on_step(self, event: at.StepEvent) -> None:
        self.steps += 1
        if self.steps == self.after:
            signal.raise_signal(signal.SIGINT)

    def close(self) -> None:
        pass


def test_interrupted_then_resumed_equals_one_uninterrupted_run(
    softmax_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["train", str(softmax_file), "--model", "softmax", "--epochs", "3", "--no-progress"]
    base += ["--batch-size", "256", "--checkpoint-every", "4"]  # 11 steps an epoch
    whole, resumed = tmp_path / "whole.npz", tmp_path / "resumed.npz"
    assert main([*base, "--checkpoint-dir", str(tmp_path / "a"), "--out", str(whole)]) == 0

    interrupted = [*base, "--checkpoint-dir", str(tmp_path / "b"), "--out", str(resumed)]
    monkeypatch.setattr(_progress.Progress, "callbacks", lambda self, total: [_Interrupt(15)])
    # Ctrl-C as a terminal delivers it, even when the test run inherited SIGINT ignored (a
    # background job of a shell without job control): asyncio's runner then leaves it be.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = main(interrupted)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130  # in the second epoch, after the checkpoint of step 12
    assert "--resume" in capsys.readouterr().err
    assert not resumed.exists()
    monkeypatch.undo()
    saved = list_checkpoints(tmp_path / "b")[-1]
    done = int(saved.stem.split("-")[1])
    assert 0 < done < 33
    assert main([*interrupted, "--resume", "--json"]) == 0
    assert _no_nan(capsys.readouterr().out)["steps"] == 33 - done  # continued, not restarted

    with np.load(whole) as a, np.load(resumed) as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
            assert a[name].tobytes() == b[name].tobytes()


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_on_a_stderr_that_is_no_terminal_is_one_line_per_epoch(
    softmax_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tqdm redrew its bar with carriage returns into a log file or a CI job's output,
    which kept every redraw on one long line."""
    pytest.importorskip("tqdm")
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "2"]
    assert main(argv) == 0  # capsys: stderr is no terminal
    err = capsys.readouterr().err
    assert "\r" not in err
    assert [line.split(":")[0] for line in err.splitlines()] == ["epoch 0", "epoch 1"]


def test_progress_on_a_terminal_is_a_tqdm_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr(sys, "stderr", _Terminal())
    [bar] = _progress.Progress().callbacks(10)
    try:
        assert isinstance(bar, _progress._Bar)
        assert isinstance(bar.bar, tqdm.tqdm)
    finally:
        bar.close()
    assert "\r" in sys.stderr.getvalue()
    closed = io.StringIO()
    closed.close()  # its isatty() raises ValueError
    monkeypatch.setattr(sys, "stderr", closed)
    [lines] = _progress.Progress().callbacks(10)
    assert type(lines) is _progress._Lines


def test_the_bar_of_a_resumed_run_starts_at_its_checkpoint_and_ends_full(
    softmax_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bar's total counts every epoch, the resumed ones too; it started at 0, so a
    # resumed run ended at 50 % here, its time left misjudged all along.
    bars: list[Any] = []

    class Bar:
        def __init__(self, total: int, **options: Any) -> None:
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n: int) -> None:
            self.n += n

        def set_postfix(self, **values: Any) -> None:
            pass

        def write(self, line: str, file: Any = None) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "tqdm", type(sys)("tqdm"))
    monkeypatch.setattr(sys.modules["tqdm"], "tqdm", Bar, raising=False)
    monkeypatch.setattr(sys, "stderr", _Terminal())  # a bar is drawn on terminals only
    run = ["train", str(softmax_file), "--model", "softmax", "--checkpoint-dir", str(tmp_path)]
    assert main([*run, "--epochs", "1"]) == 0
    assert main([*run, "--epochs", "2", "--resume"]) == 0
    assert [(bar.n, bar.total) for bar in bars] == [(6, 6), (12, 12)]  # 6 steps an epoch


def test_predict_from_a_checkpoint_directory(softmax_file: Path, tmp_path: Path) -> None:
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "1", "--no-progress"]
    ckpt, out = tmp_path / "ckpt", tmp_path / "m.npz"
    assert main([*argv, "--checkpoint-dir", str(ckpt), "--out", str(out), "--standardize"]) == 0
    from_ckpt, from_out = tmp_path / "a.npy", tmp_path / "b.npy"
    assert main(["predict", str(ckpt), str(softmax_file), "--out", str(from_ckpt)]) == 0
    assert main(["predict", str(out), str(softmax_file), "--out", str(from_out)]) == 0
    np.testing.assert_array_equal(np.load(from_ckpt), np.load(from_out))


def test_resume_with_other_data_is_refused(
    softmax_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "1", "--no-progress"]
    ckpt = str(tmp_path / "ckpt")
    assert main([*argv, "--checkpoint-dir", ckpt]) == 0
    assert main([*argv, "--checkpoint-dir", ckpt, "--resume", "--standardize"]) == 2
    assert "mean, scale" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "demo"])
def test_plot_writes_the_training_curves(
    softmax_file: Path, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "curves.png"
    argv = [command, "--epochs", "2", "--json", "--plot", str(png)]
    if command == "train":
        argv += [str(softmax_file), "--model", "softmax"]
    else:
        argv += ["--n", "2000"]
    assert main(argv) == 0
    assert _no_nan(capsys.readouterr().out)["plot"] == str(png)
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_plot_without_matplotlib_is_one_line(
    softmax_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    argv = ["train", str(softmax_file), "--model", "softmax", "--plot", str(tmp_path / "c.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install matplotlib" in err


@pytest.mark.parametrize("option", [["--resume"], ["--checkpoint-every", "5"]])
def test_checkpoint_options_need_a_directory(
    softmax_file: Path, option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(softmax_file), "--model", "softmax", *option]) == 2
    assert "--checkpoint-dir" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["a-file", "missing/../../nowhere"])
def test_a_checkpoint_dir_that_cannot_be_made_is_one_line(
    softmax_file: Path, tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # It was a FileExistsError/FileNotFoundError traceback from writing the model's
    # description, before the fit's own check of the directory.
    (tmp_path / "a-file").write_text("")
    directory = tmp_path / "a-file" / where if where != "a-file" else tmp_path / where
    argv = ["train", str(softmax_file), "--model", "softmax", "--no-progress"]
    assert main([*argv, "--checkpoint-dir", str(directory)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asynctrain: error: --checkpoint-dir {directory}")
    assert err.count("\n") == 1


def test_a_new_run_in_the_directory_of_another_is_refused_keeping_its_model(
    softmax_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The second run replaced asynctrain-model.json and overwrote step 12's file with an
    # MLP's: predict then failed with a KeyError traceback and --resume was refused.
    argv = ["train", str(softmax_file), "--epochs", "1", "--no-progress"]
    ckpt = str(tmp_path / "ckpt")
    assert main([*argv, "--model", "softmax", "--checkpoint-dir", ckpt]) == 0
    files = {path: path.read_bytes() for path in (tmp_path / "ckpt").iterdir()}
    capsys.readouterr()
    assert main([*argv, "--model", "mlp", "--hidden", "8", "--checkpoint-dir", ckpt]) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in (tmp_path / "ckpt").iterdir()} == files
    out = tmp_path / "p.npy"
    assert main(["predict", ckpt, str(softmax_file), "--out", str(out)]) == 0
    assert main([*argv, "--model", "softmax", "--checkpoint-dir", ckpt, "--resume"]) == 0


def test_a_run_refused_a_directory_in_use_leaves_the_model_description_there(
    softmax_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fit in progress that has written no checkpoint yet: the second run replaced its
    # asynctrain-model.json with an MLP's before the fit's lock refused the directory,
    # so the first run's checkpoints were described as another model's.
    ckpt = tmp_path / "ckpt"
    argv = ["train", str(softmax_file), "--epochs", "1", "--no-progress"]
    assert main([*argv, "--model", "softmax", "--checkpoint-dir", str(ckpt)]) == 0
    for path in list_checkpoints(ckpt):
        path.unlink()  # as if the first fit were still before its first checkpoint
    described = (ckpt / "asynctrain-model.json").read_bytes()
    held = DirectoryLock(ckpt)
    held.acquire()  # the first fit, still running
    try:
        capsys.readouterr()
        other = [*argv, "--model", "mlp", "--hidden", "8", "--checkpoint-dir", str(ckpt)]
        assert main(other) == 2
        assert "in use by another fit" in capsys.readouterr().err
        assert (ckpt / "asynctrain-model.json").read_bytes() == described
    finally:
        held.release()


def test_predict_refuses_parameters_of_another_model_in_one_line(
    softmax_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The model's own predict failed on them: a KeyError or matmul traceback.
    argv = ["train", str(softmax_file), "--epochs", "1", "--no-progress"]
    mlp, softmax = tmp_path / "mlp.npz", tmp_path / "softmax.npz"
    assert main([*argv, "--model", "mlp", "--hidden", "8", "--out", str(mlp)]) == 0
    assert main([*argv, "--model", "softmax", "--out", str(softmax)]) == 0
    with np.load(mlp) as a, np.load(softmax) as b:
        arrays = {key: a[key] for key in a.files if key.startswith("W")}
        arrays["__asynctrain_model__"] = b["__asynctrain_model__"]
    mixed = tmp_path / "mixed.npz"
    np.savez(mixed, **arrays)
    capsys.readouterr()
    assert main(["predict", str(mixed), str(softmax_file), "--out", str(tmp_path / "p.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asynctrain: error: {mixed}: its parameters (W0 (16, 8), W1 (8, 10))")
    assert "softmax model it describes (W (16, 10), b (10,))" in err
    assert err.count("\n") == 1


def test_predict_from_a_checkpoint_the_library_wrote(softmax_file: Path, tmp_path: Path) -> None:
    data = load(softmax_file)
    trainer = at.Trainer(at.models.SoftmaxRegression(16, 10), "adam", backend="inline")
    at.run(trainer.fit(data, epochs=1, checkpoint_dir=tmp_path / "run"))
    pred = tmp_path / "p.npy"
    assert main(["predict", str(tmp_path / "run"), str(softmax_file), "--out", str(pred)]) == 0
    np.testing.assert_array_equal(np.load(pred), trainer.predict(data.X))


class MLP:
    """A user's own regression model that shares the built-in MLP's class name."""

    n_features, n_classes, dtype = 16, None, np.dtype("float64")

    def __repr__(self) -> str:
        return "MLP()"

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"W0": np.zeros(16), "W1": np.zeros(16)}

    def loss_and_grad(self, params: Any, X: np.ndarray, y: np.ndarray) -> tuple[float, Any]:
        residual = X @ (params["W0"] + params["W1"]) - y
        return float(0.5 * residual @ residual), {"W0": X.T @ residual, "W1": X.T @ residual}

    def predict(self, params: Any, X: np.ndarray) -> np.ndarray:
        result: np.ndarray = X @ (params["W0"] + params["W1"])
        return result


def test_predict_refuses_a_checkpoint_of_a_user_model_named_like_a_cli_one(
    softmax_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its 1-D W0 made reading the hidden size an IndexError traceback.
    data = load(softmax_file)
    trainer = at.Trainer(MLP(), at.optim.sgd(0.01), backend="inline")
    at.run(trainer.fit((data.X, data.y.astype(np.float64)), epochs=1))
    path = at.run(trainer.save(tmp_path / "mine.ckpt"))
    capsys.readouterr()
    assert main(["predict", str(path), str(softmax_file), "--out", str(tmp_path / "p.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asynctrain: error: {path}: its parameters (W0 (16,), W1 (16,))")
    assert err.count("\n") == 1


@pytest.mark.parametrize("shuffle", ["shard", "none"])
def test_shuffle_trains_as_the_library_does(
    softmax_file: Path, tmp_path: Path, shuffle: str
) -> None:
    out = tmp_path / "m.npz"
    argv = ["train", str(softmax_file), "--model", "softmax", "--epochs", "2", "--no-progress"]
    assert main([*argv, "--no-validation", "--shuffle", shuffle, "--out", str(out)]) == 0
    data = load(softmax_file)
    model = at.models.SoftmaxRegression(data.n_features, 10)
    trainer = at.Trainer(model, at.optim.adam(0.01), backend="thread", seed=0, shuffle=shuffle)
    result = at.run(trainer.fit(data, epochs=2))
    global_ = at.Trainer(model, at.optim.adam(0.01), backend="thread", seed=0)
    other = at.run(global_.fit(data, epochs=2))
    with np.load(out, allow_pickle=False) as saved:
        for name, value in result.params.items():
            assert saved[name].tobytes() == value.tobytes()
        assert saved["W"].tobytes() != other.params["W"].tobytes()  # the option took effect


def test_resume_of_a_run_recorded_without_column_names_keeps_its_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint directory written before column names were kept with the model
    resumes on the same headed CSV, and records the names from then on; a run recorded
    with other names is still refused."""
    data = synthetic("softmax", n=600, seed=0)
    names = [f"f{j}" for j in range(8)]
    csv = tmp_path / "data.csv"
    rows = [",".join([*names, "label"])]
    for x, y in zip(data.X[:, :8].tolist(), data.y.tolist(), strict=True):
        rows.append(",".join([*map(repr, x), str(y)]))
    csv.write_text("\n".join(rows) + "\n")
    ckpt = tmp_path / "ckpt"
    argv = ["train", str(csv), "--model", "softmax", "--no-progress", "--checkpoint-dir", str(ckpt)]
    assert main([*argv, "--epochs", "1"]) == 0
    spec_file = ckpt / "asynctrain-model.json"
    recorded = json.loads(spec_file.read_text())
    assert recorded["feature_names"] == names
    spec_file.write_text(json.dumps({**recorded, "feature_names": None}))  # an older run
    assert main([*argv, "--epochs", "2", "--resume"]) == 0
    assert json.loads(spec_file.read_text())["feature_names"] == names
    spec_file.write_text(json.dumps({**recorded, "feature_names": [*names[:7], "other"]}))
    assert main([*argv, "--epochs", "3", "--resume"]) == 2
    assert "feature_names" in capsys.readouterr().err
