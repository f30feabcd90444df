"""Checkpoints of a trainer: save/load/restore, saving during fit, and exact resume.

The oracle for resuming is the uninterrupted run: a fit interrupted mid-epoch or at an
epoch boundary and resumed in a fresh Python process must end with the same bits in the
parameters, the optimizer state and the RNG state.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import _resume_worker as problem
import numpy as np
import pytest
import scipy.sparse as sp
from _reliability import skip_missing_backend, state_bits
from _reliability import softmax_trainer as _softmax_trainer

import asynctrain as at
from asynctrain._checkpoint import Checkpoint, list_checkpoints, temporaries
from asynctrain._checkpoint import _format as checkpoint_format
from asynctrain._cli import main
from asynctrain.data import synthetic
from asynctrain.models import SoftmaxRegression

WORKER = Path(__file__).with_name("_resume_worker.py")


class Interrupted(Exception):
    """Raised by a callback to stop a fit the hard way."""


class InterruptAt(at.Callback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step(self, event: at.StepEvent) -> None:
        if event.step + 1 == self.steps:
            raise Interrupted(f"after {self.steps} steps")


def _same_run(a: Checkpoint, b: Checkpoint) -> None:
    """Assert that two checkpoints hold the same training state, bit for bit."""
    for section in ("state", "rng", "config", "model"):
        assert a.manifest[section] == b.manifest[section], section
    assert a.manifest["optimizer"]["state"] == b.manifest["optimizer"]["state"]
    assert a.arrays.keys() == b.arrays.keys()
    for key, value in a.arrays.items():
        assert value.dtype == b.arrays[key].dtype, key
        assert value.tobytes() == b.arrays[key].tobytes(), key


@pytest.mark.parametrize(
    ("every", "expected"),
    [(None, (7, 1, 0)), (4, (8, 1, 1))],
    ids=["epoch-boundary", "mid-epoch"],
)
async def test_resume_in_a_fresh_process_is_bit_identical(
    backend_name: str, tmp_path: Path, every: int | None, expected: tuple[int, int, int]
) -> None:
    skip_missing_backend(backend_name)
    reference = problem.trainer(backend_name)
    await reference.fit(problem.data(), epochs=problem.EPOCHS)
    await reference.save(tmp_path / "reference.ckpt")

    interrupted = problem.trainer(backend_name)
    with pytest.raises(Interrupted):
        await interrupted.fit(
            problem.data(),
            epochs=problem.EPOCHS,
            checkpoint_dir=tmp_path / "run",
            checkpoint_every=every,
            callbacks=[InterruptAt(10)],
        )
    latest = Checkpoint.read(tmp_path / "run")
    assert tuple(latest.counter(k) for k in ("step", "epoch", "batch")) == expected

    resumed = await asyncio.create_subprocess_exec(
        *[sys.executable, str(WORKER), backend_name, str(tmp_path / "run"), str(tmp_path / "out")],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(WORKER.parents[1])},
    )
    out, err = await asyncio.wait_for(resumed.communicate(), timeout=120)
    assert resumed.returncode == 0, err.decode()[-3000:]
    total = problem.EPOCHS * 7
    assert int(out) == total - expected[0]  # it resumed, it did not start over
    _same_run(Checkpoint.read(tmp_path / "out"), Checkpoint.read(tmp_path / "reference.ckpt"))


@pytest.mark.parametrize("mode", ["sync", "local"])
async def test_resume_is_exact_in_the_deterministic_modes(
    mode: str, tmp_path: Path, data: at.data.Dataset
) -> None:
    # ssp is deterministic too, but its steps compute on parameter versions older than the
    # committed one, which a checkpoint does not hold; async is not deterministic at all.
    try:
        reference = _softmax_trainer(mode=mode, backend="thread", workers=2)
    except at.ConfigError:
        pytest.skip(f"mode {mode!r} is not on this branch yet")
    await reference.fit(data, epochs=2)
    options = {"epochs": 2, "checkpoint_dir": tmp_path, "checkpoint_every": 2}
    with pytest.raises(Interrupted):
        await _softmax_trainer(mode=mode).fit(data, callbacks=[InterruptAt(7)], **options)
    resumed = _softmax_trainer(mode=mode, backend="thread", workers=2)
    result = await resumed.fit(data, resume=True, **options)
    assert 0 < result.steps < 10
    assert state_bits(resumed.state) == state_bits(reference.state)


@pytest.mark.parametrize("resume_on", ["inline", "thread"])
@pytest.mark.parametrize("shards", [1, 3])
async def test_a_run_resumed_mid_epoch_ends_on_the_bits_of_the_whole_run(
    shards: int, resume_on: str, tmp_path: Path, data: at.data.Dataset
) -> None:
    # One shard is the updater's shortest path (the gradient divided straight into its
    # buffer); Adam takes its settings as 0-d arrays and the updater backs its state up
    # into copies it keeps between steps. Interrupted after step 7 of 10, resumed from the
    # checkpoint of step 6 (on the same backend, or on threads), the run ends on the bits
    # of the run that was never interrupted.
    reference = _softmax_trainer(shards=shards)
    await reference.fit(data, epochs=2)
    options = {"epochs": 2, "checkpoint_dir": tmp_path, "checkpoint_every": 3}
    with pytest.raises(Interrupted):
        await _softmax_trainer(shards=shards).fit(data, callbacks=[InterruptAt(7)], **options)
    workers = None if resume_on == "inline" else 2
    resumed = _softmax_trainer(shards=shards, backend=resume_on, workers=workers)
    result = await resumed.fit(data, resume=True, **options)
    assert result.steps == 4  # steps 6..9: it resumed, it did not start over
    assert state_bits(resumed.state) == state_bits(reference.state)


@pytest.fixture(scope="module")
def data() -> at.data.Dataset:
    return synthetic("softmax", n=500, seed=2)


async def test_save_load_and_restore_round_trip(tmp_path: Path, data: at.data.Dataset) -> None:
    trainer = _softmax_trainer()
    await trainer.fit(data, epochs=1)
    path = await trainer.save(tmp_path)
    assert path == tmp_path / "step-000000000005.ckpt"
    fresh = _softmax_trainer()
    await fresh.load(path)
    assert state_bits(fresh.state) == state_bits(trainer.state)
    restored = await at.Trainer.restore(path, SoftmaxRegression(128, 10), at.optim.adam(1e-2))
    assert restored.config == trainer.config  # settings come from the checkpoint
    assert state_bits(restored.state) == state_bits(trainer.state)
    assert not restored.params["W"].flags.writeable
    await trainer.fit(data, epochs=1)
    await restored.fit(data, epochs=1)
    assert state_bits(restored.state) == state_bits(trainer.state)


async def test_a_path_ending_in_a_separator_names_a_directory(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    # Path("new/") is Path("new"): save wrote a file named "new", and ModelCheckpoint
    # ("new/") one such file per epoch, each over the last.
    trainer = _softmax_trainer()
    await trainer.fit(data, epochs=1)
    missing = f"{tmp_path / 'new'}{os.sep}"
    with pytest.raises(at.CheckpointError, match=f"cannot save to {missing}: it ends in a"):
        await trainer.save(missing)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(at.CheckpointError, match="names a directory"):
        await trainer.save(f"{tmp_path / 'file'}{os.sep}")
    saver = at.ModelCheckpoint(missing)  # refused at the fit's start, no step taken
    with pytest.raises(at.CheckpointError, match=r"the directory \S*new does not exist"):
        await trainer.fit(data, epochs=1, callbacks=[saver])
    assert os.listdir(tmp_path) == ["file"]
    assert (tmp_path / "file").read_bytes() == b""
    (tmp_path / "new").mkdir()
    # The refused fit took no step: the trainer is at its first fit's 5.
    assert await trainer.save(missing) == tmp_path / "new" / "step-000000000005.ckpt"


class _Named:
    """A linear regression whose parameters have the given names (summed into one)."""

    n_features, n_classes, dtype = 3, None, np.dtype("float64")

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __repr__(self) -> str:
        return f"_Named({self.names!r})"

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {name: rng.normal(size=3) for name in self.names}

    def loss_and_grad(self, params: Any, X: np.ndarray, y: np.ndarray) -> tuple[float, Any]:
        residual = X @ sum(params.values()) - y
        return float(0.5 * residual @ residual), {n: X.T @ residual for n in self.names}

    def predict(self, params: Any, X: np.ndarray) -> np.ndarray:
        result: np.ndarray = X @ sum(params.values())
        return result


async def test_any_parameter_name_round_trips(tmp_path: Path) -> None:
    # "" was written (as arrays/<i>) but refused on reading: a fit's own checkpoints
    # could not be resumed.
    names = ["", "a/b", "a", "../up", "/abs", "ü.weight", "params/x", "line\nbreak"]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3))
    options: dict[str, Any] = {"batch_size": 16, "backend": "inline"}
    trainer = at.Trainer(_Named(names), at.optim.sgd(0.01), **options)
    await trainer.fit((X, X @ [1.0, 2.0, 3.0]), epochs=1, checkpoint_dir=tmp_path)
    restored = await at.Trainer.restore(tmp_path, _Named(names), at.optim.sgd(0.01), **options)
    assert state_bits(restored.state) == state_bits(trainer.state)


async def test_a_loaded_mid_epoch_checkpoint_keeps_the_rows_it_was_taken_on(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    # load/restore forgot the rows (500) of the data the file was taken on: saving again
    # wrote a file refused on reading ("batch 2 is past the end of an epoch of 0
    # batches"), and a fit on 200 rows continued at batch 2 of their 2 and trained nothing.
    await _softmax_trainer().fit(data, checkpoint_dir=tmp_path / "run", checkpoint_every=2)
    mid = tmp_path / "run" / "step-000000000002.ckpt"
    loaded = _softmax_trainer()
    await loaded.load(mid)
    again = Checkpoint.read(await loaded.save(tmp_path / "again.ckpt"))
    assert (again.counter("batch"), again.samples) == (2, 500)
    assert (await loaded.fit(data)).steps == 3  # the same data: the epoch continues
    restored = await at.Trainer.restore(mid, SoftmaxRegression(128, 10), at.optim.adam(1e-2))
    other = synthetic("softmax", n=200, seed=3)
    assert (await restored.fit(other)).steps == 2  # other data: the epoch starts over


@pytest.mark.parametrize("mode", ["sync", "ssp"])
async def test_restore_in_another_mode_lists_the_difference(tmp_path: Path, mode: str) -> None:
    # The checkpoint's local_steps=2 went to Trainer(mode="sync"): a ConfigError telling
    # the user to leave out a local_steps they never gave.
    path = await _softmax_trainer(mode="local", local_steps=2).save(tmp_path / "a.ckpt")
    model, optimizer = SoftmaxRegression(128, 10), at.optim.adam(1e-2)
    with pytest.raises(
        at.CheckpointError, match=f"config.mode: 'local' in the checkpoint, '{mode}'"
    ):
        await at.Trainer.restore(path, model, optimizer, backend="inline", mode=mode)
    restored = await at.Trainer.restore(path, model, optimizer, backend="inline", mode="local")
    assert restored.mode.settings == {"local_steps": 2}  # the same mode: its options too


async def test_a_mismatched_trainer_is_refused_with_every_difference(tmp_path: Path) -> None:
    path = await _softmax_trainer().save(tmp_path / "a.ckpt")
    other = _softmax_trainer(
        model=SoftmaxRegression(64, 10, dtype=np.float64),
        optimizer=at.optim.sgd(0.1, momentum=0.9),
        batch_size=50,
        shards=4,
        seed=2,
    )
    with pytest.raises(at.CheckpointError) as caught:
        await other.load(path)
    message = str(caught.value)
    for line in [
        f"checkpoint {path} does not match this trainer",
        "config.batch_size: 100 in the checkpoint, 50 here",
        "config.shards: 2 in the checkpoint, 4 here",
        "config.seed: 1 in the checkpoint, 2 here",
        "model.n_features: 128 in the checkpoint, 64 here",
        "model.dtype: 'float32' in the checkpoint, 'float64' here",
        "params['W']: float32[128, 10] in the checkpoint, float64[64, 10] here",
        "optimizer state",
        f"asynctrain inspect {path}",
    ]:
        assert line in message, line
    assert other.state.step == 0


async def test_load_is_refused_while_a_fit_runs(tmp_path: Path, data: at.data.Dataset) -> None:
    trainer = _softmax_trainer()
    path = await trainer.save(tmp_path / "a.ckpt")

    class LoadMidway(at.Callback):
        async def on_step(self, event: at.StepEvent) -> None:  # type: ignore[override]
            with pytest.raises(at.StateError, match="while it runs a fit"):
                await trainer.load(path)

    await trainer.fit(data, callbacks=[LoadMidway()])


async def test_save_during_a_fit_takes_a_whole_step(tmp_path: Path, data: at.data.Dataset) -> None:
    trainer = _softmax_trainer(backend="thread", workers=2)
    seen: dict[int, dict[str, Any]] = {}

    class SaveEveryStep(at.Callback):
        async def on_step(self, event: at.StepEvent) -> None:  # type: ignore[override]
            seen[event.step + 1] = state_bits(trainer.state)
            await trainer.save(tmp_path / f"{event.step + 1}.ckpt")

    await trainer.fit(data, callbacks=[SaveEveryStep()])
    for step, bits in seen.items():
        fresh = _softmax_trainer()
        await fresh.load(tmp_path / f"{step}.ckpt")
        assert state_bits(fresh.state) == bits


async def test_fit_saves_every_n_steps_and_keeps_the_latest(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    saved: list[int] = []
    trainer = _softmax_trainer()
    result = await trainer.fit(
        data, epochs=3, checkpoint_dir=tmp_path / "run", checkpoint_every=2, keep=2
    )
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == ["step-000000000014.ckpt", "step-000000000015.ckpt"]  # 14, then the end
    assert result.steps == 15
    per_epoch = _softmax_trainer()
    await per_epoch.fit(data, epochs=3, checkpoint_dir=tmp_path / "epochs", keep=None)
    for path in list_checkpoints(tmp_path / "epochs"):
        checkpoint = Checkpoint.read(path)
        saved.append(checkpoint.counter("step"))
        assert checkpoint.counter("batch") == 0  # each one an epoch boundary
    assert saved == [5, 10, 15]


async def test_local_rounds_save_once_at_each_multiple_of_checkpoint_every(
    tmp_path: Path, data: at.data.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A local round commits 2 steps and then reports each: the save at a multiple of 3
    # was written once per reported step (the same file twice), and a round passing over
    # a multiple (2 -> 4 over 3) saved nothing.
    from asynctrain._checkpoint import _session

    writes: list[int] = []
    write = _session.write_and_prune

    def counted(path: Path, payload: Any, *args: Any, **kwargs: Any) -> None:
        writes.append(payload.state.step)
        write(path, payload, *args, **kwargs)

    monkeypatch.setattr(_session, "write_and_prune", counted)
    trainer = _softmax_trainer(mode="local", local_steps=2)  # rounds end at 2, 4, 5, 7, ...
    await trainer.fit(data, epochs=4, checkpoint_dir=tmp_path, checkpoint_every=3, keep=None)
    assert writes == [4, 7, 9, 12, 15, 19, 20]
    assert [Checkpoint.read(p).counter("step") for p in list_checkpoints(tmp_path)] == writes


async def test_resume_counts_epochs_of_the_whole_run(tmp_path: Path, data: at.data.Dataset) -> None:
    options = {"checkpoint_dir": tmp_path, "resume": True}
    first = await _softmax_trainer().fit(data, epochs=2, **options)  # an empty dir: a fresh start
    again = _softmax_trainer()
    second = await again.fit(data, epochs=3, **options)
    assert (first.steps, second.steps, again.state.epoch) == (10, 5, 3)
    done = await _softmax_trainer().fit(data, epochs=3, **options)  # nothing left to do
    assert done.steps == 0


async def test_the_one_call_fit_resumes_too(tmp_path: Path, data: at.data.Dataset) -> None:
    model, options = SoftmaxRegression(128, 10), {"backend": "inline", "batch_size": 100}
    first = await at.fit(model, data, epochs=1, checkpoint_dir=tmp_path, **options)
    second = await at.fit(model, data, epochs=2, checkpoint_dir=tmp_path, resume=True, **options)
    reference = await at.fit(model, data, epochs=2, **options)
    assert (first.steps, second.steps) == (5, 5)
    assert all(np.array_equal(second.params[k], reference.params[k]) for k in reference.params)


async def test_numpy_integer_settings_checkpoint_and_resume(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    # Accepted as integers, the settings were kept as numpy integers, so the first
    # checkpoint of the fit failed deep in its writer: "TypeError: Object of type int64
    # is not JSON serializable".
    settings = {"seed": np.uint64(1), "batch_size": np.int64(100), "shards": np.int32(2)}
    trainer = _softmax_trainer(**settings)
    assert all(type(getattr(trainer.config, key)) is int for key in settings)
    options = {"epochs": 2, "checkpoint_dir": tmp_path, "checkpoint_every": 3}
    with pytest.raises(Interrupted):
        await trainer.fit(data, callbacks=[InterruptAt(4)], **options)
    resumed = _softmax_trainer(**settings)
    result = await resumed.fit(data, resume=True, **options)
    assert result.steps == 7
    reference = _softmax_trainer()
    await reference.fit(data, epochs=2)
    assert state_bits(resumed.state) == state_bits(reference.state)


async def test_the_largest_seed_a_trainer_takes_resumes(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    # The checkpoint's limit, 2**63 - 1, is the trainer's: a larger seed is refused when
    # the trainer is built (test_bad_input), not when its checkpoint is read back.
    options = {"epochs": 2, "checkpoint_dir": tmp_path, "checkpoint_every": 3}
    with pytest.raises(Interrupted):
        await _softmax_trainer(seed=2**63 - 1).fit(data, callbacks=[InterruptAt(4)], **options)
    resumed = _softmax_trainer(seed=2**63 - 1)
    assert (await resumed.fit(data, resume=True, **options)).steps == 7


async def test_an_empty_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(at.CheckpointError, match=f"no checkpoint .* in directory {tmp_path}"):
        await _softmax_trainer().load(tmp_path)


async def test_mid_epoch_resume_on_other_data_is_refused(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    with pytest.raises(Interrupted):
        await _softmax_trainer().fit(
            data, checkpoint_dir=tmp_path, checkpoint_every=2, callbacks=[InterruptAt(3)]
        )
    smaller = synthetic("softmax", n=400, seed=2)
    with pytest.raises(at.CheckpointError, match="mid-epoch on 500 samples; the data has 400"):
        await _softmax_trainer().fit(smaller, checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
async def test_mid_epoch_resume_on_another_pair_of_arrays_is_refused(
    tmp_path: Path, data: at.data.Dataset, sparse: bool
) -> None:
    # A scipy.sparse X has no len(): the resume skipped the data-size check that a dense
    # X gets, and went on (the epoch started over) on data the checkpoint never saw.
    def pair(rows: int) -> tuple[Any, np.ndarray]:
        X = data.X[:rows]
        return (sp.csr_array(X) if sparse else X), data.y[:rows]

    with pytest.raises(Interrupted):
        await _softmax_trainer().fit(
            pair(500), checkpoint_dir=tmp_path, checkpoint_every=2, callbacks=[InterruptAt(3)]
        )
    with pytest.raises(at.CheckpointError, match="mid-epoch on 500 samples; the data has 400"):
        await _softmax_trainer().fit(pair(400), checkpoint_dir=tmp_path, resume=True)
    resumed = await _softmax_trainer().fit(pair(500), checkpoint_dir=tmp_path, resume=True)
    assert resumed.steps == 3  # the same rows: the epoch continues at batch 2 of 5


async def test_a_failed_save_stops_the_fit_and_keeps_the_previous(
    tmp_path: Path, data: at.data.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync, calls = os.fsync, []

    def fsync_fills_up(fd: int) -> None:
        calls.append(fd)
        if len(calls) > 2:  # the first save (file and directory) succeeds
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fills_up)
    trainer = _softmax_trainer()
    with pytest.raises(at.CheckpointError, match=r"step-000000000004\.ckpt: No space left"):
        await trainer.fit(data, epochs=2, checkpoint_dir=tmp_path, checkpoint_every=2)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000000002.ckpt"]
    assert Checkpoint.read(tmp_path).counter("step") == 2
    assert temporaries(tmp_path) == []


async def test_an_old_checkpoint_that_cannot_be_removed_is_a_checkpoint_error(
    tmp_path: Path, data: at.data.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keep's pruning let the unlink's PermissionError out of the fit as it was (not a
    # CheckpointError), and stopped at that file, leaving the older ones after it too.
    await _softmax_trainer().fit(data, checkpoint_dir=tmp_path, checkpoint_every=2, keep=None)
    stuck, real_unlink = tmp_path / "step-000000000002.ckpt", Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(self))
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    trainer = _softmax_trainer()
    with pytest.raises(at.CheckpointError, match=r"could not remove the older .*keep=None"):
        await trainer.fit(data, epochs=2, checkpoint_dir=tmp_path, resume=True, keep=1)
    monkeypatch.undo()
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-000000000002.ckpt", "step-000000000010.ckpt"]  # 4, 5 removed
    assert Checkpoint.read(tmp_path).counter("step") == 10


async def test_a_failing_fit_lets_its_checkpoint_write_land(
    tmp_path: Path, data: at.data.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    go, real_write = threading.Event(), checkpoint_format._HashingSink.write

    def held_write(sink: Any, chunk: Any) -> int:
        assert go.wait(10)
        return int(real_write(sink, chunk))

    class FailWhileSaving(at.Callback):
        def on_step(self, event: at.StepEvent) -> None:
            if event.step + 1 == 3:  # the save of step 2 is held in flight
                asyncio.get_running_loop().call_later(0.1, go.set)
                raise Interrupted("while a checkpoint was being written")

    monkeypatch.setattr(checkpoint_format._HashingSink, "write", held_write)
    with pytest.raises(Interrupted):
        await _softmax_trainer().fit(
            data, checkpoint_dir=tmp_path, checkpoint_every=2, callbacks=[FailWhileSaving()]
        )
    assert Checkpoint.read(tmp_path).counter("step") == 2


async def test_an_optimizer_state_that_is_not_data_is_refused_before_training(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    def init(params: Any) -> Any:
        return (lambda: None,)

    def update(grads: Any, state: Any, params: Any = None) -> Any:
        return grads, state

    trainer = _softmax_trainer(optimizer=at.optim.GradientTransformation(init, update))
    with pytest.raises(at.CheckpointError, match="holds a function, which is not plain data"):
        await trainer.fit(data, checkpoint_dir=tmp_path)
    assert trainer.state.step == 0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"checkpoint_every": 5}, "need a checkpoint_dir"),
        ({"resume": True}, "need a checkpoint_dir"),
        ({"checkpoint_dir": ".", "keep": 0}, "keep must be >= 1"),
        ({"checkpoint_dir": ".", "checkpoint_every": 0}, "checkpoint_every must be >= 1"),
        ({"checkpoint_dir": ".", "resume": "yes"}, 'resume must be True, False or "params"'),
        ({"resume": "params"}, "need a checkpoint_dir"),
    ],
)
async def test_bad_checkpoint_options_fail_before_any_work(
    options: dict[str, Any], match: str, data: at.data.Dataset
) -> None:
    trainer = _softmax_trainer()
    with pytest.raises(at.ConfigError, match=match):
        await trainer.fit(data, **options)
    assert trainer.state.step == 0


async def test_cli_inspect_prints_what_a_checkpoint_holds(
    tmp_path: Path, data: at.data.Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = _softmax_trainer()
    await trainer.fit(data, epochs=1, checkpoint_dir=tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for text in [
        "step-000000000005.ckpt",
        "verified",
        "step 5, epoch 1, batch 0",
        "batch_size=100 shards=2 seed=1",
        "SoftmaxRegression",
        "params/W",
        "float32 [128, 10]",
    ]:
        assert text in out, text
    assert main(["inspect", "--json", str(tmp_path)]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["state"]["step"] == 5
    (tmp_path / "bad.ckpt").write_bytes(b"\x80\x04junk")
    assert main(["inspect", str(tmp_path / "bad.ckpt")]) == 2
    assert "a pickle" in capsys.readouterr().err
