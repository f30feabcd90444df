"""Non-finite values injected at a chosen step and shard: "raise" and "skip" as promised.

The oracle is the trajectory of the same fit without poison, recorded step by step: with
``nonfinite="raise"`` the trainer must be left exactly at the state before the poisoned
step; with ``"skip"`` the poisoned step must change nothing but the counters.
"""

from __future__ import annotations

import functools
import random
from typing import Any, NamedTuple

import numpy as np
import pytest
from _reliability import Poisoned, Recorder, sample_of, skip_missing_backend, state_bits, with_ids

import asynctrain as at
from asynctrain.data import Dataset, synthetic
from asynctrain.optim._tree import leaves

N, BATCH, SHARDS, SEED = 600, 100, 4, 7
STEP, SHARD = 3, 2


@pytest.fixture(scope="module")
def data() -> Dataset:
    return with_ids(synthetic("softmax", n=N, seed=4))


def _trainer(
    model: Poisoned, backend: str, nonfinite: str, optimizer: object = None, **mode: Any
) -> at.Trainer:
    return at.Trainer(
        model,
        optimizer or at.optim.adam(1e-2),  # type: ignore[arg-type]
        backend=backend,
        workers=None if backend == "inline" else 2,
        batch_size=BATCH,
        shards=SHARDS,
        seed=SEED,
        nonfinite=nonfinite,
        **mode,
    )


def _poison(target: str, step: int = STEP, shard: int = SHARD) -> Poisoned:
    sample = sample_of(step, shard, n=N, batch_size=BATCH, shards=SHARDS, seed=SEED)
    return Poisoned(poison=frozenset({sample}), target=target)


async def _reference(backend: str, data: Dataset) -> Recorder:
    trainer = _trainer(Poisoned(), backend, "raise")
    recorder = Recorder(trainer)
    await trainer.fit(data, callbacks=[recorder])
    return recorder


@pytest.mark.parametrize("target", ["W", "b", "loss"])
async def test_raise_names_step_shard_and_parameter_and_leaves_state_untouched(
    backend_name: str, data: Dataset, target: str
) -> None:
    skip_missing_backend(backend_name)
    reference = await _reference(backend_name, data)
    trainer = _trainer(_poison(target), backend_name, "raise")
    with pytest.raises(at.NonFiniteError) as caught:
        await trainer.fit(data)
    error = caught.value
    assert (error.step, error.shard) == (STEP, SHARD)
    assert error.parameter == (None if target == "loss" else target)
    expected = "loss" if target == "loss" else f"gradient of {target!r}"
    assert f"step {STEP}: non-finite {expected} (first in shard {SHARD})" in str(error)
    assert state_bits(trainer.state) == reference.states[STEP]


async def test_skip_drops_exactly_the_poisoned_step(backend_name: str, data: Dataset) -> None:
    skip_missing_backend(backend_name)
    reference = await _reference(backend_name, data)
    trainer = _trainer(_poison("W"), backend_name, "skip")
    recorder = Recorder(trainer)
    result = await trainer.fit(data, callbacks=[recorder])
    assert result.skipped_steps == 1
    assert [e.step for e in recorder.events if e.skipped] == [STEP]
    assert np.isnan(recorder.events[STEP].grad_norm)
    for step in range(STEP + 1):  # identical to the clean run up to the poisoned step
        assert recorder.states[step] == reference.states[step]
    before, after = recorder.states[STEP], recorder.states[STEP + 1]
    assert after["counters"] == (STEP + 1, STEP, 1, 0, STEP + 1)  # step, version, skipped, ...
    assert {k: after[k] for k in ("params", "opt", "opt_scalars")} == {
        k: before[k] for k in ("params", "opt", "opt_scalars")
    }
    assert result.steps == len(recorder.events) == N // BATCH
    assert all(np.isfinite(v).all() for v in trainer.params.values())


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
async def test_an_update_that_overflows_the_parameters_is_refused(nonfinite: str) -> None:
    # The gradients are finite; the update (x 1e60, computed in float32) is not.
    data = with_ids(synthetic("softmax", n=N, seed=4))
    optimizer = at.optim.chain(at.optim.scale(1e30), at.optim.scale(1e30))
    trainer = _trainer(Poisoned(), "thread", nonfinite, optimizer)
    initial = state_bits(trainer.state)
    if nonfinite == "raise":
        with pytest.raises(at.NonFiniteError, match="step 0: non-finite parameter") as caught:
            await trainer.fit(data)
        assert caught.value.shard is None
        assert caught.value.parameter in ("W", "b")
        assert state_bits(trainer.state) == initial
    else:
        result = await trainer.fit(data)
        assert result.skipped_steps == result.steps == N // BATCH
        assert state_bits(trainer.state)["params"] == initial["params"]


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
async def test_an_optimizer_state_that_would_overflow_is_refused(nonfinite: str) -> None:
    # A finite gradient of 1e30 squares to inf in Adam's float32 second moment: the
    # parameters stay finite (the update is 0), but the moment would stay inf for ever.
    data = with_ids(synthetic("softmax", n=N, seed=4))
    reference = await _reference("inline", data)
    trainer = _trainer(_poison("huge"), "inline", nonfinite)
    recorder = Recorder(trainer)
    if nonfinite == "raise":
        with pytest.raises(at.NonFiniteError, match=f"step {STEP}: non-finite optimizer state"):
            await trainer.fit(data, callbacks=[recorder])
        assert state_bits(trainer.state) == reference.states[STEP]
    else:
        await trainer.fit(data, callbacks=[recorder])
        assert recorder.states[STEP + 1]["opt"] == reference.states[STEP]["opt"]
    assert all(np.isfinite(a).all() for _, a in leaves(trainer.state.opt_state))


def _learning_rate(valid_until: int, step: int) -> float:
    """1e-2, then an invalid -1.0 from step ``valid_until`` on."""
    return 1e-2 if step < valid_until else -1.0


async def test_an_update_that_raises_leaves_the_optimizer_state_untouched() -> None:
    # The learning rate comes last in the chain: Adam had updated its moments in place
    # when the schedule's value was refused, and they were kept, one gradient ahead of
    # the parameters and of Adam's own step count.
    data = with_ids(synthetic("softmax", n=N, seed=4))
    reference = _trainer(Poisoned(), "inline", "raise", at.optim.adam(_learning_rate_until(N)))
    recorder = Recorder(reference)
    await reference.fit(data, callbacks=[recorder])
    trainer = _trainer(Poisoned(), "inline", "raise", at.optim.adam(_learning_rate_until(STEP)))
    with pytest.raises(at.ConfigError, match=f"value at step {STEP} must be in"):
        await trainer.fit(data)
    assert state_bits(trainer.state) == recorder.states[STEP]


def _learning_rate_until(valid_until: int) -> at.optim.Schedule:
    return functools.partial(_learning_rate, valid_until)


async def test_nonfinite_setting_is_checked() -> None:
    with pytest.raises(at.ConfigError, match="nonfinite must be one of"):
        at.Trainer(Poisoned(), nonfinite="ignore")


# -- local mode: each shard runs the optimizer on its worker --------------------------------

LOCAL_STEPS = 2
ROUND = STEP - STEP % LOCAL_STEPS  # the first step of the round holding STEP


def _local_trainer(model: Poisoned, backend: str, nonfinite: str) -> at.Trainer:
    return _trainer(model, backend, nonfinite, mode="local", local_steps=LOCAL_STEPS)


async def test_a_local_round_that_overflows_its_optimizer_warns_on_no_backend(
    backend_name: str, data: Dataset
) -> None:
    # Adam's float32 second moment overflows on the worker. Sync mode's updater looks for
    # that explicitly and silences numpy's warning; the local shards did not, so with
    # warnings as errors (as here) the round died of a RuntimeWarning on the inline and
    # thread backends, while process workers (whose filters are their own) went on.
    skip_missing_backend(backend_name)
    trainer = _local_trainer(_poison("huge"), backend_name, "skip")
    result = await trainer.fit(data)
    assert result.steps == N // BATCH
    assert all(np.isfinite(v).all() for v in trainer.params.values())


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
async def test_a_local_round_whose_optimizer_state_overflows_is_refused(
    backend_name: str, data: Dataset, nonfinite: str
) -> None:
    # The shard's parameters stay finite (Adam's update of an inf moment is 0), so only
    # its optimizer state shows the overflow. Sync mode refuses such a step; local mode
    # committed the inf moment, whatever `nonfinite` said, and the coordinate never
    # moved again.
    skip_missing_backend(backend_name)
    reference = _local_trainer(Poisoned(), backend_name, "raise")
    recorder = Recorder(reference)
    await reference.fit(data, callbacks=[recorder])
    trainer = _local_trainer(_poison("huge"), backend_name, nonfinite)
    poisoned = Recorder(trainer)
    if nonfinite == "raise":
        pattern = rf"steps {ROUND}\.\.{ROUND + 1} \(one local round\): non-finite optimizer state"
        with pytest.raises(at.NonFiniteError, match=pattern) as caught:
            await trainer.fit(data, callbacks=[poisoned])
        assert (caught.value.step, caught.value.shard) == (ROUND, SHARD)
        assert state_bits(trainer.state) == recorder.states[ROUND]
    else:
        result = await trainer.fit(data, callbacks=[poisoned])
        assert result.skipped_steps == LOCAL_STEPS
        before, after = poisoned.states[ROUND], poisoned.states[ROUND + LOCAL_STEPS]
        assert {k: after[k] for k in ("params", "opt")} == {k: before[k] for k in ("params", "opt")}
    assert all(np.isfinite(a).all() for _, a in leaves(trainer.state.opt_state))


async def test_a_model_that_overflows_warns_on_no_backend(
    backend_name: str, capfd: pytest.CaptureFixture[str]
) -> None:
    # A huge learning rate overflows a built-in model's own math (its logits, its loss).
    # The non-finite policy reports it (the steps skipped, a NaN validation loss); numpy
    # warned as well, from the model on the worker: with warnings as errors (as here) the
    # step died of a RuntimeWarning on the inline and thread backends, and process workers
    # (whose filters are their own) printed it on stderr.
    skip_missing_backend(backend_name)
    logreg = synthetic("logreg", n=N, seed=4)
    data = Dataset(logreg.X * 10, logreg.y)
    model = at.models.LogisticRegression(data.X.shape[1])
    optimizer = at.optim.sgd(1e37)
    trainer = _trainer(model, backend_name, "skip", optimizer)  # type: ignore[arg-type]
    async with trainer:
        result = await trainer.fit(data, validation=data)
        evaluated = await trainer.evaluate(data)
    assert 0 < result.skipped_steps < result.steps  # the first step overflows nothing
    assert np.isnan(result.history[-1].val_loss)
    assert np.isnan(evaluated["loss"])
    if backend_name != "dask":  # Dask's workers' stderr is not the test's
        assert "Warning" not in capfd.readouterr().err


async def test_predict_on_overflowing_parameters_warns_nowhere() -> None:
    # Fit and evaluate ran their model calls with numpy's warnings off; Trainer.predict
    # and Job.predict did not: "overflow encountered in matmul", an error under
    # warnings-as-errors (as here). What the model makes of the overflow is the answer.
    logreg = synthetic("logreg", n=N, seed=4)
    data = Dataset(logreg.X * 10, logreg.y)
    model = at.models.LogisticRegression(data.X.shape[1])
    optimizer = at.optim.sgd(1e37)
    async with _trainer(model, "inline", "skip", optimizer) as trainer:  # type: ignore[arg-type]
        await trainer.fit(data)
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        model.predict(trainer.params, data.X)  # they do overflow on these rows
    with np.errstate(all="ignore"):
        expected = model.predict(trainer.params, data.X)
    assert np.array_equal(trainer.predict(data.X), expected, equal_nan=True)

    class Overflowing(at.Callback):
        def on_fit_end(self, fit: at.FitControl) -> None:
            fit.restore_params(trainer.params)

    async with at.TrainingService(backend="inline") as service:
        job = await service.start("a", model, data, epochs=1, callbacks=[Overflowing()])
        await job.result()
        prediction = await job.predict(data.X)
    assert np.array_equal(prediction.values, expected, equal_nan=True)


# -- the updater's own path: a step refused at any step, on one shard or several -----------

STEPS_PER_EPOCH = N // BATCH


def _refused_at(when: str, salt: str) -> int:
    """Step 0 (the state's first backup is taken there) or a random later step, seeded."""
    return 0 if when == "first" else random.Random(salt).randrange(1, STEPS_PER_EPOCH)


def _poisoned_at(target: str, step: int, shards: int) -> Poisoned:
    sample = sample_of(step, shards - 1, n=N, batch_size=BATCH, shards=shards, seed=SEED)
    return Poisoned(poison=frozenset({sample}), target=target)


def _check_refused(nonfinite: str, trainer: at.Trainer, recorder: Recorder, step: int) -> None:
    """The refused step left the parameters and the optimizer state as they were before it:
    the copy the recorder took after the step before (the oracle)."""
    before = recorder.states[step]
    if nonfinite == "raise":
        assert state_bits(trainer.state) == before
        return
    after = recorder.states[step + 1]
    assert {k: after[k] for k in ("params", "opt", "opt_scalars")} == {
        k: before[k] for k in ("params", "opt", "opt_scalars")
    }
    assert after["counters"][2] == 1  # one step skipped


@pytest.mark.parametrize("when", ["first", "random"])
@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("target", ["W", "huge"])
@pytest.mark.parametrize("backend", ["inline", "thread"])
@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
async def test_a_step_refused_at_any_step_leaves_parameters_and_state_as_they_were(
    data: Dataset, nonfinite: str, backend: str, target: str, shards: int, when: str
) -> None:
    # "W": a NaN gradient, refused before the optimizer runs; "huge": a finite gradient
    # whose square overflows Adam's second moment, refused after the optimizer has
    # written its state in place (which the updater must undo).
    step = _refused_at(when, f"{target}-{shards}-{backend}")
    model = _poisoned_at(target, step, shards)
    trainer = _one_epoch_trainer(model, backend, nonfinite, at.optim.adam(1e-2), shards)
    recorder = Recorder(trainer)
    if nonfinite == "raise":
        problem = "gradient of 'W'" if target == "W" else "optimizer state"
        with pytest.raises(at.NonFiniteError, match=f"step {step}: non-finite {problem}"):
            await trainer.fit(data, callbacks=[recorder])
    else:
        result = await trainer.fit(data, callbacks=[recorder])
        assert result.skipped_steps == 1
    _check_refused(nonfinite, trainer, recorder, step)


def _one_epoch_trainer(
    model: Poisoned, backend: str, nonfinite: str, optimizer: Any, shards: int
) -> at.Trainer:
    workers = None if backend == "inline" else 2
    return at.Trainer(
        model, optimizer, backend=backend, workers=workers, batch_size=BATCH, shards=shards,
        seed=SEED, nonfinite=nonfinite,
    )  # fmt: skip


class RebuiltState(NamedTuple):
    """State of the optimizer below: steps taken, and a running sum of squared gradients."""

    count: int  # type: ignore[assignment]  # shadows tuple.count, as in optax
    squares: dict[str, np.ndarray]


def _rebuilt_init(params: dict[str, np.ndarray]) -> RebuiltState:
    return RebuiltState(0, {k: np.zeros_like(v) for k, v in params.items()})


def _rebuilt_update(
    grads: dict[str, np.ndarray], state: RebuiltState, params: Any = None
) -> tuple[dict[str, np.ndarray], RebuiltState]:
    # The sum in new arrays every other step and in place the others, so the updater's
    # backup sees the state's arrays change from one step to the next. A gradient of 1e30
    # squares to inf in float32: the state overflows, the parameters do not.
    if state.count % 2:
        squares = {k: s + grads[k] * grads[k] for k, s in state.squares.items()}
    else:
        squares = state.squares
        for key, s in squares.items():
            s += grads[key] * grads[key]
    updates = {k: g * np.float32(-1e-2) for k, g in grads.items()}
    return updates, RebuiltState(state.count + 1, squares)


@pytest.mark.parametrize("when", ["first", "random"])
@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
async def test_a_refused_step_of_an_optimizer_that_rebuilds_its_state_changes_nothing(
    data: Dataset, nonfinite: str, when: str
) -> None:
    optimizer = at.optim.GradientTransformation(_rebuilt_init, _rebuilt_update)
    for step in {_refused_at(when, f"rebuilt-{salt}") for salt in range(3)}:
        model = _poisoned_at("huge", step, 1)
        trainer = _one_epoch_trainer(model, "inline", nonfinite, optimizer, 1)
        recorder = Recorder(trainer)
        if nonfinite == "raise":
            with pytest.raises(at.NonFiniteError, match=f"step {step}: non-finite optimizer state"):
                await trainer.fit(data, callbacks=[recorder])
        else:
            await trainer.fit(data, callbacks=[recorder])
        _check_refused(nonfinite, trainer, recorder, step)
