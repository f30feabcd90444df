"""The shipped callbacks: EarlyStopping(restore_best), ModelCheckpoint, ReduceLROnPlateau,
CSVLogger and TensorBoardLogger, and the FitControl they use."""

from __future__ import annotations

import asyncio
import csv
import errno
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import asynctrain as at
from asynctrain.data import Dataset
from asynctrain.optim import PlateauRule, chain, plateau_states, scale_by_plateau, sgd


@pytest.fixture
def overfit() -> tuple[Dataset, Dataset]:
    """A small training set whose validation loss is lowest at epoch 7 of 10 (adam 1e-2)."""
    data = at.data.synthetic("softmax", n=2300, seed=1)
    return data.subset(np.arange(300)), data.subset(np.arange(300, 2300))


def _val_loss(model: at.models.Model, params: at.optim.OptState, val: Dataset) -> float:
    # One evaluation chunk (< 8192 rows): the trainer's sum is this very call.
    loss, _ = model.loss_and_grad(params, val.X, val.y)
    return float(loss) / len(val)


async def _fit_ten(
    model: at.models.Model, train: Dataset, val: Dataset, callbacks: list[at.Callback]
) -> at.FitResult:
    """Ten epochs of adam(1e-2) on ``overfit``'s data."""
    return await at.fit(
        model,
        train,
        optimizer=at.optim.adam(1e-2),
        epochs=10,
        validation=val,
        callbacks=callbacks,
        backend="inline",
        batch_size=64,
    )


@pytest.mark.parametrize("patience", [2, 5])
async def test_restore_best_returns_the_best_epochs_parameters(
    overfit: tuple[Dataset, Dataset], patience: int
) -> None:
    train, val = overfit
    model = at.models.SoftmaxRegression(128, 10)
    stopper = at.EarlyStopping(patience=patience, restore_best=True)
    async with at.Trainer(model, at.optim.adam(1e-2), backend="inline", batch_size=64) as tr:
        result = await tr.fit(train, epochs=10, validation=val, callbacks=[stopper])
        held = tr.params
    losses = [event.val_loss for event in result.history]
    best = min(losses)
    assert losses.index(best) != len(losses) - 1  # the last epoch is not the best one
    assert stopper.best_epoch == losses.index(best)
    assert _val_loss(model, result.params, val) == best
    assert all(np.array_equal(held[k], result.params[k]) for k in held)


async def test_without_restore_best_the_last_parameters_are_returned(
    overfit: tuple[Dataset, Dataset],
) -> None:
    train, val = overfit
    model = at.models.SoftmaxRegression(128, 10)
    stopper = at.EarlyStopping(patience=5)
    result = await _fit_ten(model, train, val, [stopper])
    assert _val_loss(model, result.params, val) == result.history[-1].val_loss
    assert result.history[-1].val_loss > min(e.val_loss for e in result.history)


async def test_early_stopping_on_a_chosen_metric() -> None:
    data = at.data.synthetic("softmax", n=1000)
    stopper = at.EarlyStopping(patience=1, min_delta=2.0, monitor="val_f1")  # f1 <= 1
    result = await at.fit(
        at.models.SoftmaxRegression(128, 10),
        data,
        epochs=5,
        validation=data,
        metrics=["f1"],
        callbacks=[stopper],
        backend="inline",
    )
    assert result.stopped_early
    assert result.epochs == 2
    missing = at.EarlyStopping(monitor="val_auc")
    with pytest.raises(at.ConfigError, match=r"metrics=\['auc'\]"):
        await at.fit(
            at.models.SoftmaxRegression(128, 10),
            data,
            validation=data,
            callbacks=[missing],
            backend="inline",
        )
    with pytest.raises(at.ConfigError, match="monitor must be one of"):
        at.EarlyStopping(monitor="val_rmse")


async def test_model_checkpoint_best_only_keeps_the_best_epoch(
    overfit: tuple[Dataset, Dataset], tmp_path: Path
) -> None:
    train, val = overfit
    model = at.models.SoftmaxRegression(128, 10)
    saver = at.ModelCheckpoint(tmp_path / "best.ckpt", best_only=True)
    every = at.ModelCheckpoint(tmp_path / "epoch-{epoch:02d}-{val_loss:.4f}.ckpt")
    result = await _fit_ten(model, train, val, [saver, every])
    losses = [event.val_loss for event in result.history]
    improvements = sum(1 for i, v in enumerate(losses) if v < min(losses[:i], default=math.inf))
    assert len(saver.saved) == improvements
    assert set(saver.saved) == {tmp_path / "best.ckpt"}
    restored = await at.Trainer.restore(
        tmp_path / "best.ckpt", model, at.optim.adam(1e-2), backend="inline"
    )
    assert _val_loss(model, restored.params, val) == min(losses)
    assert [p.name for p in every.saved] == [
        f"epoch-{e.epoch:02d}-{e.val_loss:.4f}.ckpt" for e in result.history
    ]
    bad = at.ModelCheckpoint(tmp_path / "{val_f1}.ckpt")
    with pytest.raises(at.ConfigError, match="'val_f1'"):
        await at.fit(model, train, validation=val, callbacks=[bad], backend="inline")


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("run{1}/best.ckpt", "field without a name"),  # a directory named with braces
        ("epoch-{}.ckpt", "field without a name"),
        ("loss-{loss:03d}.ckpt", "Unknown format code 'd'"),
        ("epoch-{epoch.ckpt", "not a template"),
        ("loss}.ckpt", "not a template"),
    ],
)
def test_model_checkpoint_refuses_a_path_it_cannot_fill_when_made(path: str, match: str) -> None:
    """Before: accepted, then the fit failed after training its first epoch, with a
    message naming the wrong problem ("names Unknown format code ...")."""
    with pytest.raises(at.ConfigError, match=match) as caught:
        at.ModelCheckpoint(path)
    assert "{{" in str(caught.value)  # says how to write a literal brace
    at.ModelCheckpoint("run{{1}}/epoch-{epoch:03d}-{val_loss:.3f}-{val_f1:.2f}.ckpt")


def test_plateau_rule_reduces_after_patience_with_cooldown_and_floor() -> None:
    state = chain(sgd(1.0), scale_by_plateau()).init({"w": np.zeros(1)})
    rule = PlateauRule(factor=0.5, patience=2, cooldown=1, min_scale=0.2)
    values = [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    scales = [rule.observe(plateau_states(state), v) for v in values]
    # wait 2 -> halve; 1 epoch of cooldown; wait 2 -> halve; ...; never below 0.2.
    assert scales == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2]


@pytest.mark.parametrize("min_scale", [1.5, 4.0])
def test_a_plateau_floor_above_the_starting_scale_is_refused(min_scale: float) -> None:
    # The scale starts at 1: max(1 * factor, min_scale) "reduced" it to min_scale, raising
    # the learning rate at the first plateau.
    with pytest.raises(at.ConfigError, match=r"min_scale must be in \[0\.0, 1\.0\]"):
        at.ReduceLROnPlateau(min_scale=min_scale)
    with pytest.raises(at.ConfigError, match="min_scale"):
        PlateauRule(min_scale=min_scale).checked()
    at.ReduceLROnPlateau(min_scale=1.0)  # a floor at the start: never lowered


def test_scale_by_plateau_scales_the_chain_by_hand() -> None:
    params, grads = {"w": np.zeros(3)}, {"w": np.array([1.0, -2.0, 4.0])}
    opt = chain(sgd(0.1), scale_by_plateau())
    state = opt.init(params)
    plateau_states(state)[0].scale[...] = 0.25
    updates, _ = opt.update({"w": grads["w"].copy()}, state, params)
    assert np.array_equal(updates["w"], -0.1 * grads["w"] * 0.25)


async def _plateau_fit(
    data: Dataset, epochs: int, directory: Path | None = None, *, resume: bool = False
) -> tuple[at.FitResult, at.ReduceLROnPlateau]:
    # min_delta=10: no epoch after the first improves, so with patience 2 the scale is
    # halved after epochs 2 and 4; the waited count of epoch 3 crosses the checkpoint.
    reducer = at.ReduceLROnPlateau(factor=0.5, patience=2, min_delta=10.0)
    model = at.models.SoftmaxRegression(128, 10)
    async with at.Trainer(
        model, chain(at.optim.adam(1e-2), scale_by_plateau()), backend="inline", batch_size=128
    ) as trainer:
        result = await trainer.fit(
            data,
            epochs=epochs,
            validation=data,
            callbacks=[reducer],
            checkpoint_dir=directory,
            resume=resume,
        )
    return result, reducer


async def test_reduce_lr_on_plateau_resumes_bit_identically(tmp_path: Path) -> None:
    data = at.data.synthetic("softmax", n=1000, seed=2)
    whole, reducer = await _plateau_fit(data, 6)
    assert reducer.scale == 0.25
    _first, early = await _plateau_fit(data, 4, tmp_path)
    assert early.scale == 0.5  # one reduction before the checkpoint
    resumed, late = await _plateau_fit(data, 6, tmp_path, resume=True)
    assert late.scale == 0.25  # and one after it
    assert resumed.epochs == 2
    for key in whole.params:
        assert np.array_equal(whole.params[key], resumed.params[key]), key
    plain = await at.fit(
        at.models.SoftmaxRegression(128, 10),
        data,
        optimizer=at.optim.adam(1e-2),
        epochs=6,
        batch_size=128,
        backend="inline",
    )
    assert not np.array_equal(plain.params["W"], whole.params["W"])  # the scale mattered


async def test_reduce_lr_on_plateau_needs_the_scale_before_any_step() -> None:
    data = at.data.synthetic("softmax", n=600)
    model = at.models.SoftmaxRegression(128, 10)
    async with at.Trainer(model, at.optim.adam(1e-2), backend="inline") as trainer:
        with pytest.raises(at.ConfigError, match="scale_by_plateau"):
            await trainer.fit(data, callbacks=[at.ReduceLROnPlateau()])
        assert trainer.state.step == 0
    with pytest.raises(at.ConfigError, match="factor must be below 1"):
        at.ReduceLROnPlateau(factor=1.5)


async def test_reduce_lr_on_plateau_in_local_mode_is_refused_as_such() -> None:
    # The optimizer has its scale_by_plateau(); the message said it had none, and to add it.
    data = at.data.synthetic("softmax", n=600)
    optimizer = at.optim.chain(at.optim.adam(1e-2), at.optim.scale_by_plateau())
    model = at.models.SoftmaxRegression(128, 10)
    async with at.Trainer(model, optimizer, backend="inline", mode="local") as trainer:
        with pytest.raises(at.ConfigError, match="does not reach mode='local'") as caught:
            await trainer.fit(data, callbacks=[at.ReduceLROnPlateau()])
        assert "has no scale_by_plateau" not in str(caught.value)
        assert trainer.state.step == 0


async def _logged_fit(logger: at.Callback, metric: str, backend: str) -> at.FitResult:
    """Three epochs of a small softmax fit with ``logger`` and one chosen metric."""
    data = at.data.synthetic("softmax", n=1000)
    model = at.models.SoftmaxRegression(128, 10)
    return await at.fit(
        model,
        data,
        epochs=3,
        validation=data,
        metrics=[metric],
        callbacks=[logger],
        backend=backend,
    )


async def test_csv_logger_writes_every_epoch_exactly(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    result = await _logged_fit(at.CSVLogger(path), "auc", "thread")
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == [
        "epoch",
        "loss",
        "val_loss",
        "val_accuracy",
        "seconds",
        "samples_per_s",
        "steps",
        "val_auc",
    ]
    assert len(rows) == 3
    for row, event in zip(rows, result.history, strict=True):
        assert int(row["epoch"]) == event.epoch
        assert int(row["steps"]) == event.steps
        assert float(row["val_loss"]) == event.val_loss
        assert float(row["val_auc"]) == event.metrics["val_auc"]
        assert float(row["loss"]) == event.loss


async def test_a_log_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    """Was a bare FileNotFoundError, though every error asynctrain raises is an
    AsyncTrainError (docs/guide.md); the fit fails before its first step, its thread
    gone (the leak check)."""
    logger = at.CSVLogger(tmp_path / "missing" / "log.csv")
    with pytest.raises(at.ConfigError, match=r"cannot open its log.*create its directory"):
        await _logged_fit(logger, "auc", "inline")


async def test_csv_logger_appends_rows_that_line_up_with_the_files_header(
    tmp_path: Path,
) -> None:
    # Appended rows were written in the fit's own columns under the file's header: a fit
    # with a metric the earlier one lacked wrote rows one cell longer than the header.
    path = tmp_path / "log.csv"
    logger = at.CSVLogger(path, append=True)
    data = at.data.synthetic("softmax", n=600)
    model = at.models.SoftmaxRegression(128, 10)
    options = {"validation": data, "callbacks": [logger], "backend": "inline"}
    await at.fit(model, data, epochs=1, metrics=["f1"], **options)  # type: ignore[arg-type]
    await at.fit(model, data, epochs=1, **options)  # type: ignore[arg-type]
    with path.open(newline="") as file:
        rows = list(csv.reader(file))
    assert [len(row) for row in rows] == [8, 8, 8]
    assert rows[0][-1] == "val_f1"
    assert rows[2][-1] == "nan"  # the second fit chose no f1
    with pytest.raises(at.ConfigError, match="also logs val_auc: log it to another file"):
        await at.fit(model, data, epochs=1, metrics=["f1", "auc"], **options)  # type: ignore[arg-type]
    with path.open(newline="") as file:
        assert [len(row) for row in csv.reader(file)] == [8, 8, 8]
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe not text\n")
    options["callbacks"] = [at.CSVLogger(binary, append=True)]
    with pytest.raises(at.ConfigError, match="is not a CSV file to append to"):
        await at.fit(model, data, epochs=1, **options)  # type: ignore[arg-type]


class _Crash(Exception):
    """Raised by a callback to stop a fit the hard way."""


class _CrashAfter(at.Callback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step(self, event: at.StepEvent) -> None:
        if event.step + 1 == self.steps:
            raise _Crash(f"after {self.steps} steps")


async def test_csv_logger_appending_to_a_resumed_fit_logs_each_epoch_once(
    tmp_path: Path,
) -> None:
    # The rows of the epochs after the checkpoint the fit resumed from stayed in the
    # file, and the resumed fit wrote those epochs again: epoch 2 twice here.
    data = at.data.synthetic("softmax", n=500, seed=2)  # 5 steps an epoch
    val = at.data.synthetic("softmax", n=300, seed=3)

    async def fit(
        path: Path, run: str, *more: at.Callback, epochs: int, resume: bool = False
    ) -> at.FitResult:
        model = at.models.SoftmaxRegression(128, 10)
        trainer = at.Trainer(model, at.optim.adam(1e-2), backend="inline", batch_size=100)
        return await trainer.fit(
            data,
            epochs=epochs,
            validation=val,
            callbacks=[at.CSVLogger(path, append=True), *more],
            checkpoint_dir=tmp_path / run,
            checkpoint_every=7,
            resume=resume,
        )

    def epochs(path: Path) -> list[str]:
        with path.open(newline="") as file:
            return [row["epoch"] for row in csv.DictReader(file)]

    whole = await fit(tmp_path / "whole.csv", "whole", epochs=6)
    path = tmp_path / "log.csv"
    await fit(path, "earlier", epochs=1)  # an earlier run's row: it stays
    with pytest.raises(_Crash):  # epochs 0-2 logged; the latest checkpoint: step 14
        await fit(path, "run", _CrashAfter(19), epochs=6)
    assert epochs(path) == ["0", "0", "1", "2"]
    await fit(path, "run", epochs=6, resume=True)  # goes on from step 14, in epoch 2
    assert epochs(path) == ["0", "0", "1", "2", "3", "4", "5"]
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))[1:]
    assert [float(row["val_loss"]) for row in rows] == [e.val_loss for e in whole.history]


async def test_loggers_close_when_the_fit_fails(tmp_path: Path) -> None:
    class Boom(at.Callback):
        def on_epoch(self, event: at.EpochEvent) -> None:
            raise RuntimeError("boom")

    logger = at.CSVLogger(tmp_path / "log.csv")
    data = at.data.synthetic("softmax", n=600)
    with pytest.raises(RuntimeError, match="boom"):
        await at.fit(
            at.models.SoftmaxRegression(128, 10),
            data,
            epochs=3,
            callbacks=[logger, Boom()],
            backend="inline",
        )
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 2  # header, epoch 0
    # (the autouse leak check fails the test if the logger's thread were left running)


async def test_a_logger_shared_by_two_running_fits_refuses_the_second(
    tmp_path: Path,
) -> None:
    # The second fit's start replaced the first's log (left open, its thread running),
    # its end closed the first fit's log, and the first fit then failed at its next epoch
    # with "runs inside a fit: pass it in callbacks=[...]", rows of both in one file.
    logger = at.CSVLogger(tmp_path / "log.csv")
    data = at.data.synthetic("softmax", n=3000)

    async def fit() -> at.FitResult:
        model = at.models.SoftmaxRegression(128, 10)
        return await at.fit(model, data, epochs=3, callbacks=[logger], backend="thread")

    first, second = await asyncio.gather(fit(), fit(), return_exceptions=True)
    assert isinstance(first, at.FitResult)
    assert isinstance(second, at.ConfigError)
    assert "is logging another fit already" in str(second)
    with (tmp_path / "log.csv").open(newline="") as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0", "1", "2"]
    assert not [t for t in threading.enumerate() if t.name.startswith("asynctrain-log")]
    await fit()  # once the first fit ended, the logger follows another
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 4


@pytest.mark.parametrize("make", ["stopper", "reducer", "saver"])
async def test_a_stateful_callback_shared_by_two_running_fits_refuses_the_second(
    tmp_path: Path, make: str
) -> None:
    # The second fit's start took the callback over: an EarlyStopping(restore_best=True)
    # gave the first fit the second fit's parameters (FitResult.params of one job were
    # the other's), a ReduceLROnPlateau scaled the second fit's learning rate by the
    # first fit's losses, a ModelCheckpoint saved the second fit under the first's epochs.
    callback = {
        "stopper": lambda: at.EarlyStopping(patience=100, monitor="loss", restore_best=True),
        "reducer": lambda: at.ReduceLROnPlateau(monitor="loss", patience=100),
        "saver": lambda: at.ModelCheckpoint(tmp_path / "epoch-{epoch}.ckpt"),
    }[make]()
    optimizer = at.optim.chain(at.optim.adam(1e-2), at.optim.scale_by_plateau())

    async def fit(seed: int) -> at.FitResult:
        data = at.data.synthetic("softmax", n=3000, seed=seed)
        model = at.models.SoftmaxRegression(128, 10)
        return await at.fit(
            model, data, optimizer=optimizer, epochs=3, callbacks=[callback], seed=seed
        )

    first, second = await asyncio.gather(fit(1), fit(2), return_exceptions=True)
    assert isinstance(first, at.FitResult)
    assert isinstance(second, at.ConfigError)
    assert "follows another fit already" in str(second)
    alone = await fit(1)  # once the first fit ended, it follows another
    assert all(np.array_equal(first.params[k], alone.params[k]) for k in alone.params)


async def test_every_on_fit_end_runs_when_one_raises(tmp_path: Path) -> None:
    # The first callback's failing on_fit_end skipped the logger's: its file stayed open
    # and its asynctrain-log thread kept running.
    class BadEnd(at.Callback):
        def on_fit_end(self, fit: at.FitControl) -> None:
            raise RuntimeError("end boom")

    class AlsoBad(at.Callback):
        async def on_fit_end(self, fit: at.FitControl) -> None:
            raise ValueError("second")

    logger = at.CSVLogger(tmp_path / "log.csv")
    data = at.data.synthetic("softmax", n=600)
    with pytest.raises(RuntimeError, match="end boom") as raised:
        await at.fit(
            at.models.SoftmaxRegression(128, 10),
            data,
            epochs=2,
            callbacks=[BadEnd(), logger, AlsoBad()],
            backend="inline",
        )
    assert any("ValueError: second" in note for note in raised.value.__notes__)
    assert logger._log is None
    assert not [t for t in threading.enumerate() if t.name.startswith("asynctrain-log")]
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 3  # header, 2 epochs


async def test_a_hook_answering_an_array_is_refused_naming_it() -> None:
    # An answer without a truth raised numpy's "truth value is ambiguous" from the engine.
    class Odd(at.Callback):
        async def on_epoch(self, event: at.EpochEvent) -> object:
            return np.array([1, 2])

    data = at.data.synthetic("softmax", n=600)
    refused = r"Odd\.on_epoch returned array\(\[1, 2\]\), which is neither"
    with pytest.raises(at.ConfigTypeError, match=refused):
        await at.fit(
            at.models.SoftmaxRegression(128, 10),
            data,
            epochs=3,
            callbacks=[Odd()],
            backend="inline",
        )


@pytest.mark.parametrize(("answer", "epochs"), [(np.True_, 1), (True, 1), (False, 3), (None, 3)])
async def test_true_stops_and_none_or_false_go_on(answer: object, epochs: int) -> None:
    class Hook(at.Callback):
        def on_epoch(self, event: at.EpochEvent) -> object:
            return answer

    data = at.data.synthetic("softmax", n=600)
    result = await at.fit(
        at.models.SoftmaxRegression(128, 10), data, epochs=3, callbacks=[Hook()], backend="inline"
    )
    assert result.epochs == epochs


class _StopAtSecondStep(at.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step(self, event: at.StepEvent) -> bool:
        self.steps += 1
        return self.steps == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_callbacks_given_as_a_generator_are_all_called(stream: bool) -> None:
    # The first walk of the callbacks (on_fit_start) used a generator up: every step
    # was then given to no callback, and the fit never stopped.
    data = at.data.synthetic("softmax", n=600)
    stopper = _StopAtSecondStep()
    callbacks = (c for c in [stopper])
    async with at.Trainer(at.models.SoftmaxRegression(128, 10), backend="inline") as trainer:
        if stream:
            result = await trainer.fit_stream([(data.X, data.y)] * 3, callbacks=callbacks)
        else:
            result = await trainer.fit(data, epochs=3, callbacks=callbacks)
    assert (stopper.steps, result.steps, result.stopped_early) == (2, 2, True)


@pytest.mark.parametrize(
    ("callbacks", "refused"),
    [
        (at.EarlyStopping(), r"callbacks must be a list of callbacks, got EarlyStopping\("),
        ([at.EarlyStopping(), 3], r"callbacks\[1\] is 3 \(int\), which has no on_step"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_callbacks_that_are_not_a_list_of_callbacks_are_refused_before_a_step(
    callbacks: object, refused: str, stream: bool
) -> None:
    # A bare TypeError ("not iterable"), or an AttributeError after a first step trained.
    data = at.data.synthetic("softmax", n=600)
    async with at.Trainer(at.models.SoftmaxRegression(128, 10), backend="inline") as trainer:
        run = (
            trainer.fit_stream([(data.X, data.y)], callbacks=callbacks)  # type: ignore[arg-type]
            if stream
            else trainer.fit(data, callbacks=callbacks)  # type: ignore[arg-type]
        )
        with pytest.raises(at.ConfigTypeError, match=refused):
            await run
        assert trainer.state.step == 0


async def test_callbacks_none_is_no_callbacks() -> None:
    data = at.data.synthetic("softmax", n=600)
    async with at.Trainer(at.models.SoftmaxRegression(128, 10), backend="inline") as trainer:
        assert (await trainer.fit(data, callbacks=None)).steps == 2  # type: ignore[arg-type]


async def test_restore_params_only_once_the_steps_ended() -> None:
    errors: list[Exception] = []

    class TooEarly(at.Callback):
        def on_fit_start(self, fit: at.FitControl) -> None:
            try:
                fit.restore_params(fit.params)
            except at.StateError as exc:
                errors.append(exc)

    data = at.data.synthetic("softmax", n=600)
    await at.fit(
        at.models.SoftmaxRegression(128, 10), data, callbacks=[TooEarly()], backend="inline"
    )
    assert len(errors) == 1
    assert "on_fit_end" in str(errors[0])


async def test_tensorboard_logger_writes_scalars_tensorboard_reads(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    result = await _logged_fit(at.TensorBoardLogger(tmp_path), "f1", "inline")
    reader = accumulator.EventAccumulator(str(tmp_path))
    reader.Reload()
    assert {"loss", "val_loss", "val_accuracy", "val_f1"} <= set(reader.Tags()["scalars"])
    for tag in ("loss", "val_loss", "val_f1"):
        scalars = reader.Scalars(tag)
        assert [s.step for s in scalars] == [0, 1, 2]
        expected = [np.float32(e.value(tag)) for e in result.history]
        assert [np.float32(s.value) for s in scalars] == expected


def _tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in every event file of ``logdir`` (in TensorBoard's order of the
    files, by name), read back with TensorBoard's own loader: ``{tag: [(step, value)]}``."""
    loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in loader.RawEventFileLoader(str(path)).Load():
            parsed = loader.event_pb2.Event.FromString(event)
            for value in parsed.summary.value:
                found.setdefault(value.tag, []).append((parsed.step, value.simple_value))
    return found


async def test_tensorboard_logger_of_a_resumed_fit_logs_each_epoch_once(
    tmp_path: Path,
) -> None:
    # A resumed fit wrote a new event file with the epochs it trained again, after the
    # checkpoint it resumed from, which the interrupted fit's file held already: epoch 2
    # three times here (the resumed fit is interrupted too, before its next checkpoint).
    pytest.importorskip("tensorboardX")
    data = at.data.synthetic("softmax", n=500, seed=2)  # 5 steps an epoch
    val = at.data.synthetic("softmax", n=300, seed=3)

    async def fit(logdir: Path, *more: at.Callback, resume: bool = False) -> at.FitResult:
        model = at.models.SoftmaxRegression(128, 10)
        trainer = at.Trainer(model, at.optim.adam(1e-2), backend="inline", batch_size=100)
        return await trainer.fit(
            data,
            epochs=6,
            validation=val,
            callbacks=[at.TensorBoardLogger(logdir), *more],
            checkpoint_dir=logdir.with_name(logdir.name + "-ckpt"),
            checkpoint_every=7,
            resume=resume,
        )

    whole = await fit(tmp_path / "whole")
    logdir = tmp_path / "run"
    with pytest.raises(_Crash):  # epochs 0-2 logged; the latest checkpoint: step 14
        await fit(logdir, _CrashAfter(19))
    with pytest.raises(_Crash):  # resumed at step 14: epoch 2 logged again, crashed again
        await fit(logdir, _CrashAfter(19), resume=True)
    assert [step for step, _ in _tensorboard_scalars(logdir)["loss"]] == [0, 1, 2]
    await fit(logdir, resume=True)  # goes on from step 14, in epoch 2
    logged = _tensorboard_scalars(logdir)
    expected = _tensorboard_scalars(tmp_path / "whole")
    for tag in ("loss", "val_loss", "val_accuracy", "seconds"):
        assert [step for step, _ in logged[tag]] == list(range(6)), tag
    for tag in ("val_loss", "val_accuracy"):  # (the resumed epoch 2's loss: of 1 step)
        assert logged[tag] == expected[tag]
    assert [value for _, value in logged["val_loss"]] == [
        np.float32(e.val_loss) for e in whole.history
    ]
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1  # the one run's file

    again = at.TensorBoardLogger(logdir)  # a state's file is only ever a file of logdir
    for name in ("../escape", "events.out.tfevents.1.host.1.0123abcd/../x", 3):
        with pytest.raises(TypeError, match="are not a path and its file"):
            again.load_state_dict({"logdir": str(logdir), "file": name, "size": 0})


def test_an_event_file_gone_or_shorter_than_at_the_checkpoint_is_left_alone(
    tmp_path: Path,
) -> None:
    pytest.importorskip("tensorboardX")
    from asynctrain._callbacks._tfevents import EventFile

    first = EventFile(tmp_path)
    first.add_scalars({"loss": 1.0}, step=0)
    at_checkpoint = first.size
    first.add_scalars({"loss": 2.0}, step=1)
    first.close()
    gone = EventFile(tmp_path)  # a name of a file that was never written: started afresh
    gone.continue_at(first.name[:-8] + "0" * 8, 999)
    gone.add_scalars({"loss": 3.0}, step=1)
    gone.close()
    shorter = EventFile(tmp_path)  # a file shorter than then: not that file, left alone
    shorter.continue_at(first.name, first.size + 1)
    shorter.add_scalars({"loss": 4.0}, step=2)
    shorter.close()
    assert shorter.name not in (first.name, gone.name)
    cut = EventFile(tmp_path)
    cut.continue_at(first.name, at_checkpoint)
    cut.add_scalars({"loss": 5.0}, step=1)
    cut.close()
    assert sorted(_tensorboard_scalars(tmp_path)["loss"]) == [
        (0, 1.0), (1, 3.0), (1, 5.0), (2, 4.0)
    ]  # fmt: skip
    assert len(list(tmp_path.iterdir())) == 3


async def test_a_log_write_that_fails_names_the_logger_and_its_file(tmp_path: Path) -> None:
    """A full disk (``/dev/full``: every write fails with ENOSPC) failed the fit with a
    bare ``OSError: [Errno 28] No space left on device``, raised by the close in
    ``on_fit_end`` (a second failed flush of the torn row), naming neither."""
    logger = at.CSVLogger("/dev/full")
    with pytest.raises(at.ConfigError) as raised:
        await _logged_fit(logger, "auc", "inline")
    message = str(raised.value)
    assert "CSVLogger('/dev/full'" in message
    assert "could not write /dev/full at epoch 0" in message
    assert "No space left on device" in message
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == errno.ENOSPC
    assert logger._log is None
    assert not [t for t in threading.enumerate() if t.name.startswith("asynctrain-log")]


class _FullAt(at.CSVLogger):
    """A CSVLogger whose disk fills up at epoch ``epoch``: that row is half written."""

    def __init__(self, path: Path, epoch: int) -> None:
        super().__init__(path)
        self.epoch = epoch

    def _write(self, log: Any, event: at.EpochEvent) -> None:
        if event.epoch == self.epoch:
            log.write("2,0.5")
            log.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super()._write(log, event)


async def test_a_log_write_that_fails_keeps_the_fits_checkpoints(tmp_path: Path) -> None:
    data = at.data.synthetic("softmax", n=500, seed=2)  # 5 steps an epoch
    logger = _FullAt(tmp_path / "log.csv", epoch=2)

    def trainer() -> at.Trainer:
        model = at.models.SoftmaxRegression(128, 10)
        return at.Trainer(model, at.optim.adam(1e-2), backend="inline", batch_size=100)

    options: dict[str, Any] = {"checkpoint_dir": tmp_path / "run", "checkpoint_every": 5}
    with pytest.raises(at.ConfigError, match=r"could not write .*log\.csv at epoch 2") as raised:
        await trainer().fit(data, epochs=4, callbacks=[logger], **options)
    assert raised.value.__cause__.errno == errno.ENOSPC  # type: ignore[union-attr]
    steps = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "run").glob("step-*.ckpt"))
    assert steps == [5, 10]  # the ends of epochs 0 and 1, which were logged
    resumed = await trainer().fit(data, epochs=4, resume=True, **options)
    assert [e.epoch for e in resumed.history] == [2, 3]
    assert resumed.steps == 10


async def test_a_tensorboard_write_that_fails_names_its_event_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboardX")
    from asynctrain._callbacks import _tfevents

    # The event file lands on a full disk: its writes go to /dev/full.
    monkeypatch.setattr(_tfevents.EventFile, "_opened", lambda self: open("/dev/full", "wb"))  # noqa: SIM115
    logger = at.TensorBoardLogger(tmp_path)
    with pytest.raises(at.ConfigError, match="No space left on device") as raised:
        await _logged_fit(logger, "f1", "inline")
    assert f"TensorBoardLogger({str(tmp_path)!r}) could not write {tmp_path}/events.out." in str(
        raised.value
    )
    assert raised.value.__cause__.errno == errno.ENOSPC  # type: ignore[union-attr]


@pytest.mark.parametrize("torn", [b"1,0.12", b"", b"1,0.12\r"])
async def test_csv_logger_appends_after_a_row_torn_by_a_failed_write(
    tmp_path: Path, torn: bytes
) -> None:
    """Rows were appended onto a last row a full disk had torn (no line end): the first
    new row ran on in the torn one's line, one long row of wrong values. The torn part
    is cut off (a row ended by its line end, ``\\r`` alone included, is whole)."""
    path = tmp_path / "log.csv"
    data = at.data.synthetic("softmax", n=600)
    model = at.models.SoftmaxRegression(128, 10)
    await at.fit(model, data, epochs=1, callbacks=[at.CSVLogger(path)], backend="inline")
    whole = path.read_bytes()
    path.write_bytes(whole + torn)
    await at.fit(
        model, data, epochs=2, callbacks=[at.CSVLogger(path, append=True)], backend="inline"
    )
    with path.open(newline="") as file:
        rows = list(csv.reader(file))
    kept = [["1", "0.12"]] if torn.endswith(b"\r") else []
    assert rows[:2] == list(csv.reader(whole.decode().splitlines()))
    assert rows[2 : 2 + len(kept)] == kept
    assert [row[0] for row in rows[2 + len(kept) :]] == ["0", "1"]
    assert all(len(row) == len(rows[0]) for row in rows[2 + len(kept) :])


async def test_csv_logger_appends_after_a_torn_header(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_bytes(b"epoch,lo")  # the disk filled up while the header was written
    data = at.data.synthetic("softmax", n=600)
    model = at.models.SoftmaxRegression(128, 10)
    result = await at.fit(
        model, data, epochs=1, callbacks=[at.CSVLogger(path, append=True)], backend="inline"
    )
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [float(row["loss"]) for row in rows] == [e.loss for e in result.history]


@pytest.mark.parametrize(
    "path", ["missing/best.ckpt", f"missing{os.sep}", "missing/epoch-{epoch:03d}.ckpt"]
)
async def test_a_model_checkpoint_into_a_missing_directory_fails_before_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """It failed only at its first save, once a whole epoch had trained."""
    monkeypatch.chdir(tmp_path)
    saver = at.ModelCheckpoint(path)
    data = at.data.synthetic("softmax", n=600)
    trainer = at.Trainer(at.models.SoftmaxRegression(128, 10), backend="inline")
    with pytest.raises(at.CheckpointError, match="the directory missing does not exist"):
        await trainer.fit(data, epochs=2, callbacks=[saver])
    assert (trainer.state.step, saver.saved) == (0, [])
    assert os.listdir(tmp_path) == []
    (tmp_path / "missing").mkdir()
    await trainer.fit(data, epochs=1, callbacks=[saver])
    assert len(saver.saved) == 1
    assert saver.saved[0].parent == Path("missing")


async def test_a_model_checkpoint_whose_directory_is_named_by_the_epoch_is_not_refused(
    tmp_path: Path,
) -> None:
    # Which directory it writes is known only at the epoch's end: it may exist then.
    (tmp_path / "epoch-0").mkdir()
    (tmp_path / "run{1}").mkdir()
    savers = [
        at.ModelCheckpoint(tmp_path / "epoch-{epoch}" / "last.ckpt"),
        at.ModelCheckpoint(tmp_path / "run{{1}}" / "last.ckpt"),  # a literal brace
    ]
    data = at.data.synthetic("softmax", n=600)
    model = at.models.SoftmaxRegression(128, 10)
    await at.fit(model, data, epochs=1, callbacks=savers, backend="inline")
    assert [s.saved for s in savers] == [
        [tmp_path / "epoch-0" / "last.ckpt"],
        [tmp_path / "run{1}" / "last.ckpt"],
    ]
