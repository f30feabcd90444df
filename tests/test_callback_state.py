"""Callbacks keep their state in a fit's checkpoints: a resumed fit with EarlyStopping or
ModelCheckpoint(best_only=True) does what one uninterrupted fit does.

The oracle is the uninterrupted run; a variant whose callback forgets its state on
resume shows that the scenario depends on the state (without it the run goes on longer).
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _crafting import rezip
from _reliability import softmax_trainer, state_bits

import asynctrain as at
from asynctrain._checkpoint import Checkpoint, describe, list_checkpoints
from asynctrain._checkpoint._content import callback_keys
from asynctrain.data import Dataset, synthetic

EPOCHS = 40


class Interrupted(Exception):
    """Raised by a callback to stop a fit the hard way."""


class InterruptAfterEpoch(at.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch(self, event: at.EpochEvent) -> None:
        if event.epoch == self.epoch:
            raise Interrupted(f"after epoch {self.epoch}")


class Forgetful(at.EarlyStopping):
    """EarlyStopping as it was before callbacks kept state."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@pytest.fixture(scope="module")
def split() -> tuple[Dataset, Dataset]:
    return synthetic("softmax", n=600, seed=4).split(0.3, seed=0)


def _stopper(cls: type[at.EarlyStopping] = at.EarlyStopping) -> at.EarlyStopping:
    # A min_delta that the validation loss soon stops beating: the fit stops early.
    return cls(patience=3, min_delta=0.02, restore_best=True)


async def _fit(
    split: tuple[Dataset, Dataset], callbacks: list[Any], **options: Any
) -> tuple[at.Trainer, at.FitResult]:
    trainer = softmax_trainer()
    train, validation = split
    result = await trainer.fit(
        train, validation=validation, epochs=EPOCHS, callbacks=callbacks, **options
    )
    return trainer, result


async def _interrupted_then_resumed(
    split: tuple[Dataset, Dataset], tmp_path: Path, make: Any, at_epoch: int
) -> tuple[at.Trainer, at.FitResult, Any]:
    with pytest.raises(Interrupted):
        await _fit(split, [make(), InterruptAfterEpoch(at_epoch)], checkpoint_dir=tmp_path)
    callback = make()
    trainer, result = await _fit(split, [callback], checkpoint_dir=tmp_path, resume=True)
    return trainer, result, callback


async def test_early_stopping_resumed_stops_where_one_run_stops(
    tmp_path: Path, split: tuple[Dataset, Dataset]
) -> None:
    whole = _stopper()
    reference, expected = await _fit(split, [whole])
    assert expected.stopped_early
    stopped_at = expected.history[-1].epoch
    assert whole.best_epoch is not None
    assert whole.best_epoch < stopped_at - 1
    interrupt = whole.best_epoch + 1  # after the best epoch: its parameters must survive

    trainer, result, resumed = await _interrupted_then_resumed(
        split, tmp_path / "a", _stopper, interrupt
    )
    assert result.stopped_early
    assert result.history[-1].epoch == stopped_at
    assert (resumed.best_epoch, resumed.waited) == (whole.best_epoch, whole.waited)
    assert state_bits(trainer.state) == state_bits(reference.state)
    for name, value in expected.params.items():  # the best epoch's, restored
        assert result.params[name].tobytes() == value.tobytes()

    # Without its state, the resumed stopper waits its patience afresh: a longer run.
    _, forgetful, _ = await _interrupted_then_resumed(
        split, tmp_path / "b", lambda: _stopper(Forgetful), interrupt
    )
    assert forgetful.history[-1].epoch > stopped_at


async def test_best_only_checkpoints_resume_their_best(
    tmp_path: Path, split: tuple[Dataset, Dataset]
) -> None:
    def saver(where: Path) -> at.ModelCheckpoint:
        return at.ModelCheckpoint(where / "best-{epoch:03d}.ckpt", best_only=True, min_delta=0.02)

    (tmp_path / "one").mkdir()
    whole = saver(tmp_path / "one")
    await _fit(split, [whole, at.EarlyStopping(patience=4, min_delta=0.02)])
    expected = sorted(p.name for p in (tmp_path / "one").glob("best-*.ckpt"))

    (tmp_path / "two").mkdir()
    with pytest.raises(Interrupted):
        await _fit(
            split,
            [saver(tmp_path / "two"), at.EarlyStopping(patience=4, min_delta=0.02),
             InterruptAfterEpoch(4)],
            checkpoint_dir=tmp_path / "run",
        )  # fmt: skip
    await _fit(
        split,
        [saver(tmp_path / "two"), at.EarlyStopping(patience=4, min_delta=0.02)],
        checkpoint_dir=tmp_path / "run",
        resume=True,
    )
    assert sorted(p.name for p in (tmp_path / "two").glob("best-*.ckpt")) == expected


async def test_the_checkpoint_holds_each_callbacks_state_by_key(
    tmp_path: Path, split: tuple[Dataset, Dataset]
) -> None:
    stoppers = [at.EarlyStopping(patience=50), at.EarlyStopping(patience=60, monitor="loss")]
    callbacks = [stoppers[0], at.Callback(), stoppers[1]]
    trainer = softmax_trainer()
    await trainer.fit(split[0], validation=split[1], epochs=2, callbacks=callbacks,
                      checkpoint_dir=tmp_path)  # fmt: skip
    states = Checkpoint.read(tmp_path).callback_states()
    assert callback_keys(callbacks) == ["EarlyStopping#0", "Callback#0", "EarlyStopping#1"]
    assert states.keys() == {"EarlyStopping#0", "EarlyStopping#1"}
    for stopper, key in zip(stoppers, ("EarlyStopping#0", "EarlyStopping#1"), strict=True):
        assert states[key]["best"] == stopper.best
        assert states[key]["best_epoch"] == stopper.best_epoch
        assert states[key]["best_params"] is None  # restore_best=False keeps none


async def test_resume_params_only_starts_the_callbacks_afresh(
    tmp_path: Path, split: tuple[Dataset, Dataset]
) -> None:
    with pytest.raises(Interrupted):
        await _fit(split, [_stopper(), InterruptAfterEpoch(3)], checkpoint_dir=tmp_path)
    stopper = _stopper()
    trainer = softmax_trainer()
    await trainer.fit(split[0], validation=split[1], epochs=5, callbacks=[stopper],
                      checkpoint_dir=tmp_path, resume="params")  # fmt: skip
    assert stopper.best_epoch is not None
    assert stopper.best_epoch >= 4


async def test_rerunning_an_early_stopped_fit_returns_at_once(
    tmp_path: Path, split: tuple[Dataset, Dataset]
) -> None:
    # The final checkpoint did not record that EarlyStopping had stopped the fit, so a
    # resume=True rerun of the same call trained on until the stopper fired again.
    run = tmp_path / "run"
    stopper = _stopper()
    trainer, first = await _fit(split, [stopper], checkpoint_dir=run, resume=True)
    assert first.stopped_early
    assert first.history[-1].epoch < EPOCHS - 1
    assert Checkpoint.read(run).stopped_early
    assert "; the fit stopped early here" in describe(run)  # asynctrain inspect
    final = list_checkpoints(run)

    again = _stopper()
    rerun, second = await _fit(split, [again], checkpoint_dir=run, resume=True)
    assert (second.steps, second.history, second.stopped_early) == (0, [], True)
    assert state_bits(rerun.state) == state_bits(trainer.state)  # restore_best's, again
    assert (again.best_epoch, again.waited) == (stopper.best_epoch, stopper.waited)
    assert list_checkpoints(run) == final
    assert Checkpoint.read(run).stopped_early

    # resume="params" starts a new run from the parameters: it trains on.
    onwards = await softmax_trainer().fit(
        split[0], epochs=EPOCHS, checkpoint_dir=run, resume="params"
    )
    assert onwards.steps > 0
    assert not Checkpoint.read(run).stopped_early


async def test_a_checkpoint_without_the_stopped_record_resumes_as_before(
    tmp_path: Path, split: tuple[Dataset, Dataset]
) -> None:
    run = tmp_path / "run"
    stopper = _stopper()
    _, first = await _fit(split, [stopper], checkpoint_dir=run, resume=True)
    latest = list_checkpoints(run)[-1]
    rezip(latest, latest, lambda manifest: manifest.pop("stopped_early"))  # an older file
    assert not Checkpoint.read(run).stopped_early
    _, second = await _fit(split, [_stopper()], checkpoint_dir=run, resume=True)
    assert second.steps > 0
    assert second.history[0].epoch == first.history[-1].epoch + 1


async def test_a_stopped_run_goes_on_from_its_full_state_by_load(
    tmp_path: Path, split: tuple[Dataset, Dataset]
) -> None:
    run = tmp_path / "run"
    _, first = await _fit(split, [_stopper()], checkpoint_dir=run)
    loaded = softmax_trainer()
    await loaded.load(run)  # the state training reached, optimizer included
    more = await loaded.fit(split[0], epochs=2, checkpoint_dir=run)  # 2 epochs more
    last = first.history[-1].epoch
    assert [event.epoch for event in more.history] == [last + 1, last + 2]
    assert not Checkpoint.read(run).stopped_early


class SaveInto(at.Callback):
    """Saves the trainer to ``path`` at every epoch's end, as a user's callback may."""

    def __init__(self, path: Any) -> None:
        self.path = path

    def on_fit_start(self, fit: at.FitControl) -> None:
        self.fit = fit

    async def on_epoch(self, event: at.EpochEvent) -> None:
        await self.fit.save(self.path)


async def test_a_save_into_the_running_fits_checkpoint_dir_is_refused(
    tmp_path: Path, split: tuple[Dataset, Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Such a save held none of the callbacks' states, yet it could be the directory's
    # latest checkpoint (here step 5, before the fit's own at 7): a resume took it, and
    # EarlyStopping waited its patience afresh.
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"  # the fit is given "run": the same directory, named otherwise
    for into in (
        at.ModelCheckpoint(run),
        at.ModelCheckpoint(f"run{os.sep}"),
        at.ModelCheckpoint("run/step-{epoch:012d}.ckpt"),
        SaveInto(run / "step-000000000999.ckpt"),
    ):
        with pytest.raises(at.CheckpointError, match="running fit's checkpoint_dir"):
            await _fit(split, [_stopper(), into], checkpoint_dir="run", checkpoint_every=7)
        assert not list_checkpoints(run)
    (tmp_path / "elsewhere").mkdir()
    best = at.ModelCheckpoint(run / "best.ckpt", best_only=True)  # not a step-<n>.ckpt
    elsewhere = SaveInto(tmp_path / "elsewhere")
    _, result = await _fit(
        split, [_stopper(), best, elsewhere], checkpoint_dir="run", checkpoint_every=7
    )
    assert result.stopped_early
    assert set(best.saved) == {run / "best.ckpt"}
    assert len(list_checkpoints(tmp_path / "elsewhere")) == len(result.history)
    assert "EarlyStopping#0" in Checkpoint.read(run).callback_states()


class Hoarder(at.Callback):
    def __init__(self, state: Any) -> None:
        self.state = state
        self.loaded: Any = None

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("refuse"):
            raise ValueError("not mine")
        self.loaded = state


async def test_a_callback_state_round_trips_plain_data(tmp_path: Path, data: Dataset) -> None:
    state = {"n": 3, "x": 0.1, "inf": float("inf"), "s": "text", "t": (1, None, True),
             "a": np.arange(4.0), "nested": {"b": np.ones((2, 2), np.float32)}}  # fmt: skip
    await softmax_trainer().fit(data, epochs=1, callbacks=[Hoarder(state)], checkpoint_dir=tmp_path)
    back = Hoarder(None)
    await softmax_trainer().fit(data, epochs=2, callbacks=[back], checkpoint_dir=tmp_path,
                                resume=True)  # fmt: skip
    assert back.loaded.keys() == state.keys()
    assert back.loaded["t"] == (1, None, True)
    assert back.loaded["inf"] == float("inf")
    np.testing.assert_array_equal(back.loaded["nested"]["b"], state["nested"]["b"])


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic("softmax", n=300, seed=2)


async def test_a_state_that_is_not_data_fails_the_save(tmp_path: Path, data: Dataset) -> None:
    with pytest.raises(at.CheckpointError, match=r"state_dict\(\) of Hoarder#0.*holds a object"):
        await softmax_trainer().fit(
            data, epochs=1, callbacks=[Hoarder({"x": object()})], checkpoint_dir=tmp_path
        )


async def test_a_refused_state_names_the_callback(tmp_path: Path, data: Dataset) -> None:
    await softmax_trainer().fit(
        data, epochs=1, callbacks=[Hoarder({"refuse": True})], checkpoint_dir=tmp_path
    )
    with pytest.raises(at.CheckpointError, match="Hoarder#0 could not take back its state"):
        await softmax_trainer().fit(
            data, epochs=2, callbacks=[Hoarder(None)], checkpoint_dir=tmp_path, resume=True
        )


async def test_an_early_stopping_state_for_another_model_is_refused(
    tmp_path: Path, data: Dataset
) -> None:
    fake = {"waited": 0, "best": 1.0, "best_epoch": 0, "best_params": {"W": np.zeros(3)}}
    await softmax_trainer().fit(data, epochs=1, callbacks=[Hoarder(fake)], checkpoint_dir=tmp_path)
    # The state was kept under Hoarder#0: rename the key to EarlyStopping#0 in the manifest.
    (path,) = list_checkpoints(tmp_path)
    rename = {"EarlyStopping#0": "Hoarder#0"}
    rezip(
        path, path, lambda m: m.update(callbacks={k: m["callbacks"][v] for k, v in rename.items()})
    )
    with pytest.raises(at.CheckpointError, match="best_params are not the model's parameters"):
        await softmax_trainer().fit(data, epochs=2, callbacks=[at.EarlyStopping(restore_best=True)],
                                    checkpoint_dir=tmp_path, resume=True)  # fmt: skip


@pytest.mark.parametrize(
    "section",
    [[1, 2], {"X#0": {"array": 7}}, {"X#0": {"float": "zz"}}, {"X#0": {"int": "3"}}],
    ids=["not-an-object", "missing-array", "bad-float", "int-as-text"],
)
async def test_a_crafted_callbacks_section_is_refused_on_read(
    tmp_path: Path, data: Dataset, section: Any
) -> None:
    await softmax_trainer().fit(
        data, epochs=1, callbacks=[Hoarder({"n": 1})], checkpoint_dir=tmp_path
    )
    (path,) = list_checkpoints(tmp_path)
    rezip(path, path, lambda m: m.update(callbacks=section))
    with pytest.raises(at.CheckpointError, match="callback"):
        Checkpoint.read(path)


async def test_a_deeply_nested_state_is_read_or_refused(tmp_path: Path, data: Dataset) -> None:
    await softmax_trainer().fit(
        data, epochs=1, callbacks=[Hoarder({"n": 1})], checkpoint_dir=tmp_path
    )
    (path,) = list_checkpoints(tmp_path)
    nested: Any = {"none": None}
    for _ in range(300):
        nested = {"dict": {"a": nested}}
    rezip(path, tmp_path / "deep.ckpt", lambda m: m.update(callbacks={"X#0": nested}))
    state = Checkpoint.read(tmp_path / "deep.ckpt").callback_states()["X#0"]
    for _ in range(300):
        state = state["a"]
    assert state is None
    # Where the stack runs out (json's reader or the state's), it is a CheckpointError.
    limit = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(len(inspect.stack()) + 350)
        with pytest.raises(at.CheckpointError):
            Checkpoint.read(tmp_path / "deep.ckpt")
    finally:
        sys.setrecursionlimit(limit)


async def test_a_save_after_the_fit_keeps_its_final_checkpoint(
    tmp_path: Path, split: tuple[Dataset, Dataset]
) -> None:
    # trainer.save(run) after the fit wrote step-<n>.ckpt over the fit's final checkpoint
    # of the same step: without the callbacks' states and the early-stop record, so a
    # resume=True rerun trained on instead of returning at once.
    run = tmp_path / "run"
    trainer, first = await _fit(split, [_stopper()], checkpoint_dir=run)
    assert first.stopped_early
    final = list_checkpoints(run)[-1]
    kept = final.read_bytes()
    for path in (run, f"{run}{os.sep}", final):
        with pytest.raises(at.CheckpointError, match=r"the early-stop record.*EarlyStopping#0"):
            await trainer.save(path)
        assert final.read_bytes() == kept
    assert await trainer.save(run / "manual.ckpt") == run / "manual.ckpt"  # another name
    _, again = await _fit(split, [_stopper()], checkpoint_dir=run, resume=True)
    assert (again.steps, again.stopped_early) == (0, True)

    # A fit's checkpoint that keeps nothing a save lacks may be written over.
    plain = tmp_path / "plain"
    trainer, _ = await _fit(split, [], checkpoint_dir=plain)
    assert await trainer.save(plain) == list_checkpoints(plain)[-1]


async def test_a_model_checkpoint_into_the_fits_checkpoint_dir_fails_before_a_step(
    tmp_path: Path, split: tuple[Dataset, Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was refused only at its first save: the fit trained a whole epoch first.
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    for saver in (
        at.ModelCheckpoint(run),
        at.ModelCheckpoint(f"run{os.sep}"),
        at.ModelCheckpoint("run/step-{epoch:012d}.ckpt", best_only=True),
    ):
        trainer = softmax_trainer()
        with pytest.raises(at.CheckpointError, match=r"running fit's checkpoint_dir run\b"):
            await trainer.fit(split[0], epochs=2, callbacks=[saver], checkpoint_dir="run")
        assert (trainer.state.step, saver.saved) == (0, [])  # no step was taken
        assert not list_checkpoints(run)
    saver = at.ModelCheckpoint("run/epoch-{epoch}.ckpt")  # not a step-<n>.ckpt: saved
    await softmax_trainer().fit(split[0], epochs=2, callbacks=[saver], checkpoint_dir="run")
    assert saver.saved == [Path("run/epoch-0.ckpt"), Path("run/epoch-1.ckpt")]
