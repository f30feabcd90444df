"""Checkpoints attacked from outside: read-only and shared directories, other settings,
crafted manifests with valid checksums, and FIFOs planted under a checkpoint's name."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _crafting import reseal, rezip, unzip, zipped
from _reliability import softmax_trainer as _trainer
from _reliability import state_bits

import asynctrain as at
from asynctrain._checkpoint import read
from asynctrain._checkpoint._content import Checkpoint, checkpoint_name
from asynctrain._checkpoint._format import MANIFEST
from asynctrain._cli import main
from asynctrain.data import synthetic
from asynctrain.models import SoftmaxRegression


@pytest.fixture(scope="module")
def data() -> at.data.Dataset:
    return synthetic("softmax", n=500, seed=2)


class _Steps(at.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step(self, event: at.StepEvent) -> None:
        self.steps += 1


# -- 16: a read-only checkpoint_dir fails before the first step -----------------------------


async def test_a_read_only_checkpoint_dir_fails_before_the_first_step(
    tmp_path: Path, data: at.data.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    real_open = os.open

    def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        # The tests run as root, where chmod does not stop writes: EROFS is injected
        # for what a read-only mount refuses (creating or writing files in it).
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT
        if Path(path).parent == directory and flags & writes:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    counter = _Steps()
    trainer = _trainer()
    with pytest.raises(at.CheckpointError, match="read-only file system"):
        await trainer.fit(data, epochs=2, checkpoint_dir=directory, callbacks=[counter])
    assert counter.steps == 0
    assert trainer.state.step == 0


# -- 17: other optimizer or model settings need resume="params" ---------------------------


@pytest.mark.parametrize(
    ("changed", "difference"),
    [
        ({"optimizer": at.optim.adam(0.5)}, "optimizer.repr: '<GradientTransformation adam(0.01"),
        (
            {"model": SoftmaxRegression(128, 10, l2=0.1)},
            'model.repr: "SoftmaxRegression(n_features=128, n_classes=10, l2=0.0',
        ),
    ],
)
async def test_resuming_with_other_settings_is_refused_naming_them(
    tmp_path: Path, data: at.data.Dataset, changed: dict[str, Any], difference: str
) -> None:
    await _trainer().fit(data, epochs=1, checkpoint_dir=tmp_path)
    other = _trainer(**changed)
    with pytest.raises(at.CheckpointError, match='resume="params"') as caught:
        await other.fit(data, epochs=2, checkpoint_dir=tmp_path, resume=True)
    assert difference in str(caught.value)
    assert other.state.step == 0


@pytest.mark.parametrize(
    "changed",
    [
        {"model": SoftmaxRegression(128, 10, dtype="float64")},
        {"batch_size": 50, "optimizer": at.optim.adam(0.5)},
    ],
    ids=["dtype", "batch_size"],
)
async def test_resume_params_is_offered_only_where_it_would_do(
    tmp_path: Path, data: at.data.Dataset, changed: dict[str, Any]
) -> None:
    # The hint sent users to resume="params", which refuses these differences as well.
    await _trainer().fit(data, epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(at.CheckpointError) as caught:
        await _trainer(**changed).fit(data, epochs=2, checkpoint_dir=tmp_path, resume=True)
    assert "resume=" not in str(caught.value)
    with pytest.raises(at.CheckpointError, match="does not match"):
        await _trainer(**changed).fit(data, epochs=2, checkpoint_dir=tmp_path, resume="params")


async def test_resume_params_takes_the_parameters_and_starts_the_optimizer_afresh(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    first = _trainer()
    await first.fit(data, epochs=1, checkpoint_dir=tmp_path)
    saved = Checkpoint.read(tmp_path)
    # The oracle: a trainer given the saved parameters by hand, with a fresh adam(0.5).
    by_hand = _trainer(optimizer=at.optim.adam(0.5))
    state = by_hand.state
    params = {k: v for k, v in saved.params.items()}
    by_hand._set_state(state._replace(params=params, opt_state=by_hand.optimizer.init(params)))
    by_hand._set_state(by_hand.state._replace(step=5, version=5, epoch=1))
    await by_hand.fit(data, epochs=1)

    resumed = _trainer(optimizer=at.optim.adam(0.5))
    result = await resumed.fit(data, epochs=2, checkpoint_dir=tmp_path, resume="params")
    assert (result.steps, resumed.state.step, resumed.state.epoch) == (5, 10, 2)
    assert resumed.state.opt_state[0].count == 5  # 5 updates since the fresh start
    assert state_bits(resumed.state) == state_bits(by_hand.state)


# -- 18: one fit at a time per checkpoint_dir ---------------------------------------------


@contextlib.asynccontextmanager
async def _fit_held_at_its_first_step(
    trainer: at.Trainer, data: at.data.Dataset, directory: Path
) -> AsyncIterator[None]:
    """``trainer`` fits ``data`` into ``directory``, held at its first step for the block."""
    started, release = asyncio.Event(), asyncio.Event()

    class Hold(at.Callback):
        async def on_step(self, event: at.StepEvent) -> None:  # type: ignore[override]
            started.set()
            await release.wait()

    fit = asyncio.ensure_future(trainer.fit(data, checkpoint_dir=directory, callbacks=[Hold()]))
    await started.wait()
    try:
        yield
    finally:
        release.set()
        await fit


async def test_a_second_fit_on_a_locked_checkpoint_dir_is_refused(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    first, second = _trainer(), _trainer(seed=7)
    async with _fit_held_at_its_first_step(first, data, tmp_path):
        with pytest.raises(at.CheckpointError, match="in use by another fit"):
            await second.fit(data, epochs=1, checkpoint_dir=tmp_path, resume=True)
    assert second.state.step == 0
    assert Checkpoint.read(tmp_path).counter("step") == first.state.step
    await first.fit(data, epochs=1, checkpoint_dir=tmp_path)  # free again afterwards


async def test_another_trainers_save_into_a_running_fits_directory_is_refused(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    # trainer.save takes no lock: another trainer's save(run) wrote its step-<n>.ckpt
    # (step 15, another run's) among the running fit's (step 5), as the latest, which a
    # resume, load or restore of run then took.
    run, first, other = tmp_path / "run", _trainer(), _trainer(seed=7)
    await other.fit(data, epochs=3)
    async with _fit_held_at_its_first_step(first, data, run):
        for path in (run, run / checkpoint_name(other.state.step)):
            with pytest.raises(at.CheckpointError, match=f"{run} is in use by a running fit"):
                await other.save(path)
        assert await other.save(run / "other.ckpt") == run / "other.ckpt"  # another name
    assert [p.name for p in run.glob("step-*.ckpt")] == [checkpoint_name(first.state.step)]
    assert (await other.save(run)).name == checkpoint_name(other.state.step)  # free again


def _checkpoint_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.glob("step-*.ckpt")}


async def test_a_fresh_fit_in_the_directory_of_a_longer_run_is_refused(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    # A fresh fit wrote step files below the other run's latest (one of the same step
    # overwritten): resume and restore of the directory then took the other run's state.
    earlier = _trainer()
    await earlier.fit(data, epochs=3, checkpoint_dir=tmp_path, keep=2)
    before = _checkpoint_files(tmp_path)
    counter = _Steps()
    with pytest.raises(at.CheckpointError, match=r"holds the checkpoints of another run.*resume"):
        await _trainer(seed=7).fit(data, epochs=1, checkpoint_dir=tmp_path, callbacks=[counter])
    assert counter.steps == 0
    assert _checkpoint_files(tmp_path) == before
    await earlier.fit(data, epochs=1, checkpoint_dir=tmp_path)  # its own run goes on
    assert Checkpoint.read(tmp_path).counter("step") == earlier.state.step
    await _trainer(seed=7).fit(data, epochs=1, checkpoint_dir=tmp_path / "own")


# -- 19: crafted manifests with valid checksums -------------------------------------------


@pytest.fixture
async def saved(tmp_path: Path, data: at.data.Dataset) -> Path:
    trainer = _trainer(batch_size=128, shards=2)
    await trainer.fit(data, epochs=1, checkpoint_dir=tmp_path / "run", checkpoint_every=2)
    return tmp_path / "run" / checkpoint_name(2)  # mid-epoch: batch 2 of 4


def _set(section: str, key: str, value: Any) -> Any:
    return lambda manifest: manifest[section].__setitem__(key, value)


async def _restore_and_train(path: Path) -> None:
    restored = await at.Trainer.restore(path, SoftmaxRegression(128, 10))
    await restored.fit(synthetic("softmax", n=500, seed=2), epochs=1)


def _batch(value: int) -> Any:
    def edit(manifest: dict[str, Any]) -> None:  # consistently, in both places
        manifest["state"]["batch"] = manifest["rng"]["batch"] = value

    return edit


def _adam_count(value: int) -> Any:
    def edit(manifest: dict[str, Any]) -> None:
        manifest["optimizer"]["state"]["tuple"][0]["tuple"][0] = {"int": value}

    return edit


def _alias_moments(manifest: dict[str, Any]) -> None:
    # Adam's nu["W"] names mu["W"]'s array: one buffer, updated in place twice a step.
    manifest["optimizer"]["state"]["tuple"][0]["tuple"][2]["dict"]["W"] = {"array": 0}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_adam_count(-5), "count -5"),
        (_alias_moments, "names array opt_state/0 twice"),
        (lambda m: m["rng"].pop("samples"), "past the end of an epoch"),  # was a KeyError
        (_batch(1_000_000), "past the end of an epoch"),
        (_set("state", "step", 2**64), "counter 'step'|state.step"),
        (_set("rng", "order_sha256", 5), "rng.order_sha256"),
        (lambda m: m.update(created_unix=1e300), "created_unix"),
        (_set("config", "shards", "2"), "config.shards"),
        (_set("config", "nonfinite", "explode"), "settings are not valid"),
    ],
)
async def test_a_crafted_manifest_is_a_checkpoint_error(
    saved: Path, tmp_path: Path, edit: Any, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    crafted = tmp_path / "crafted.ckpt"
    rezip(saved, crafted, edit)  # the arrays and their checksums are untouched
    with pytest.raises(at.CheckpointError, match=match):
        await _restore_and_train(crafted)
    assert main(["inspect", str(crafted)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("literal", "match"),
    [("NaN", "holds NaN"), ("-Infinity", "holds -Infinity"), ("1e999", "holds the number 1e999")],
)
async def test_a_manifest_number_json_cannot_hold_is_refused(
    saved: Path, tmp_path: Path, literal: str, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Python's json reads NaN, Infinity and 1e999 (as inf); JSON has none of them, so
    # `inspect --json` would print a manifest that no strict JSON parser reads.
    contents = unzip(saved)
    text = contents[MANIFEST].decode()
    contents[MANIFEST] = text.replace('"rng":{', f'"extra":{literal},"rng":{{', 1).encode()
    assert contents[MANIFEST] != text.encode()
    crafted = tmp_path / "crafted.ckpt"
    crafted.write_bytes(zipped(contents))
    with pytest.raises(at.CheckpointError, match=match):
        Checkpoint.read(crafted)
    assert main(["inspect", "--json", str(crafted)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert match in captured.err


async def test_a_negative_adam_count_never_reaches_training(saved: Path, tmp_path: Path) -> None:
    crafted = tmp_path / "crafted.ckpt"
    rezip(saved, crafted, _adam_count(-5))
    trainer = _trainer(batch_size=128, shards=2)
    with pytest.raises(at.CheckpointError, match="count -5"):
        await trainer.load(crafted)  # not NonFiniteError at the next step
    assert trainer.state.step == 0


def _add_foreign_array(manifest: dict[str, Any], contents: dict[str, bytes]) -> None:
    contents["evil/0.npy"] = contents["params/b.npy"]
    manifest["arrays"]["evil/0"] = manifest["arrays"]["params/b"] | {"member": "evil/0.npy"}


def _store_elsewhere(manifest: dict[str, Any], contents: dict[str, bytes]) -> None:
    contents["arrays/1.npy"] = contents.pop("params/b.npy")
    manifest["arrays"]["params/b"]["member"] = "arrays/1.npy"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_add_foreign_array, "'evil/0' is not one a checkpoint holds"),
        (_store_elsewhere, "where asynctrain writes it"),
    ],
)
async def test_only_the_writers_array_names_are_read(
    saved: Path, tmp_path: Path, edit: Any, match: str
) -> None:
    contents = unzip(saved)
    manifest = json.loads(contents[MANIFEST])
    edit(manifest, contents)
    reseal(manifest, contents)
    contents[MANIFEST] = json.dumps(manifest).encode()
    crafted = tmp_path / "crafted.ckpt"
    crafted.write_bytes(zipped(contents))
    with pytest.raises(at.CheckpointError, match=match):
        Checkpoint.read(crafted)


# -- 20: a FIFO under a checkpoint's name ---------------------------------------------------


def test_reading_a_fifo_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / checkpoint_name(9)
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            read(fifo)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # blocked in open(): unblock it, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("reading a FIFO blocked")
    assert isinstance(outcome[0], at.CheckpointError)
    assert "not a regular file" in str(outcome[0])


async def test_resume_skips_a_fifo_named_like_the_latest_checkpoint(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    first = _trainer()
    await first.fit(data, epochs=1, checkpoint_dir=tmp_path)
    os.mkfifo(tmp_path / checkpoint_name(99))
    resumed = _trainer()
    fit = resumed.fit(data, epochs=2, checkpoint_dir=tmp_path, resume=True)
    try:
        result = await asyncio.wait_for(fit, 30)
    except TimeoutError:
        os.close(os.open(tmp_path / checkpoint_name(99), os.O_WRONLY | os.O_NONBLOCK))
        raise
    assert (result.steps, resumed.state.step) == (5, 10)


async def test_a_repr_that_shows_only_an_address_does_not_block_resume(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    def optimizer() -> at.optim.GradientTransformation:  # a new object each time
        base = at.optim.sgd(0.1)
        return at.optim.GradientTransformation(
            lambda params: base.init(params), lambda g, s, p=None: base.update(g, s, p)
        )

    assert " at 0x" in repr(optimizer())
    await _trainer(optimizer=optimizer()).fit(data, epochs=1, checkpoint_dir=tmp_path)
    resumed = _trainer(optimizer=optimizer())
    result = await resumed.fit(data, epochs=2, checkpoint_dir=tmp_path, resume=True)
    assert (result.steps, resumed.state.step) == (5, 10)


async def test_a_whole_number_optimizer_setting_resumes_as_the_same_float(
    tmp_path: Path, data: at.data.Dataset
) -> None:
    """adam(eps=1) was labelled ``eps=1`` and adam(eps=1.0) ``eps=1.0``: a checkpoint of
    one refused to resume with the other, though the settings are equal."""
    whole = at.optim.adam(0.01, b1=0, eps=1)
    given_as_floats = at.optim.adam(0.01, b1=0.0, eps=np.float64(1))
    await _trainer(optimizer=whole).fit(data, epochs=1, checkpoint_dir=tmp_path / "run")
    resumed = _trainer(optimizer=given_as_floats)
    await resumed.fit(data, epochs=2, checkpoint_dir=tmp_path / "run", resume=True)
    assert resumed.state.step == 10  # went on from step 5

    # A checkpoint whose label was written as the numbers were given (before 2027):
    # it resumes with the float settings too.
    (tmp_path / "old").mkdir()
    written = tmp_path / "run" / checkpoint_name(5)

    def as_given(manifest: dict[str, Any]) -> None:
        label = manifest["optimizer"]["repr"]
        manifest["optimizer"]["repr"] = label.replace("b1=0.0", "b1=0").replace("eps=1.0", "eps=1")
        assert "b1=0, b2=0.999, eps=1)" in manifest["optimizer"]["repr"]

    rezip(written, tmp_path / "old" / checkpoint_name(5), as_given)
    resumed = _trainer(optimizer=given_as_floats)
    await resumed.fit(data, epochs=2, checkpoint_dir=tmp_path / "old", resume=True)
    assert resumed.state.step == 10
    other = _trainer(optimizer=at.optim.adam(0.01, b1=0, eps=2))  # still told apart
    with pytest.raises(at.CheckpointError, match=r"eps=1\.0\)>' in the checkpoint"):
        await other.fit(data, epochs=2, checkpoint_dir=tmp_path / "run", resume=True)
