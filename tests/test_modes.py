"""Training modes: equivalences, determinism, convergence, staleness, and their edges."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from conftest import BACKENDS
from copying_backend import CopyingBackend

import asynctrain as at
from asynctrain._config import MODE_OPTIONS
from asynctrain._engine import MODES
from asynctrain._engine._async import SlotPool
from asynctrain._engine._local import LocalOptState
from asynctrain.backends import StragglerBackend
from asynctrain.data import Dataset, synthetic
from asynctrain.models import SoftmaxRegression

DETERMINISTIC = [("sync", {}), ("local", {"local_steps": 3}), ("ssp", {"staleness": 2})]


@pytest.fixture(scope="module")
def data() -> tuple[Dataset, Dataset]:
    return synthetic("softmax", n=8000, seed=1).split(0.25, seed=0)


def _bits(params: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in params.items()}


def _trainer(backend: Any, mode: str, *, optimizer: Any = None, **options: Any) -> at.Trainer:
    dtype = options.pop("dtype", np.float32)
    return at.Trainer(
        SoftmaxRegression(128, 10, dtype=dtype),
        at.optim.adam(1e-2) if optimizer is None else optimizer,
        backend=backend,
        batch_size=128,
        shards=4,
        seed=3,
        mode=mode,
        **options,
    )


async def _fit(backend: Any, mode: str, train: Dataset, epochs: int = 1, **kw: Any) -> at.FitResult:
    async with _trainer(backend, mode, **kw) as trainer:
        return await trainer.fit(train, epochs=epochs)


@contextlib.asynccontextmanager
async def _open_backend(name: str, workers: int) -> AsyncIterator[at.backends.Backend]:
    try:
        backend: at.backends.Backend = (
            CopyingBackend(workers=workers)
            if name == "copying"
            else at.backends.get_backend(name, workers=workers)[0]
        )
    except ModuleNotFoundError as exc:  # the process backend lands on its own branch
        pytest.skip(f"backend {name!r} is not available here: {exc}")
    async with backend:
        yield backend


# -- equivalences ------------------------------------------------------------------------


async def test_ssp_with_staleness_zero_is_sync(data: tuple[Dataset, Dataset]) -> None:
    train, _ = data
    sync = await _fit("thread", "sync", train, epochs=2, workers=2)
    ssp = await _fit("thread", "ssp", train, epochs=2, workers=2, staleness=0)
    assert _bits(ssp.params) == _bits(sync.params)
    assert ssp.staleness_max == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
async def test_local_with_one_step_and_plain_sgd_is_sync(
    data: tuple[Dataset, Dataset], dtype: type[np.floating[Any]]
) -> None:
    train, _ = data
    sgd = at.optim.sgd(0.5)
    sync = await _fit("inline", "sync", train, epochs=2, optimizer=sgd, dtype=dtype)
    local = await _fit(
        "inline", "local", train, epochs=2, optimizer=sgd, dtype=dtype, local_steps=1
    )
    # Not bit for bit: local mode averages n_s * ((p - lr * g_s / n_s) - p) over the
    # shards where sync mode steps by -lr * sum(g_s) / n, and the two round differently
    # now and then. This convex problem does not amplify that: after these 94 steps the
    # parameters (|p| <= 1) differ by about one ulp; the bound allows 16.
    eps = float(np.finfo(dtype).eps)
    for key, value in sync.params.items():
        np.testing.assert_allclose(local.params[key], value, rtol=0, atol=16 * eps)


@pytest.mark.parametrize("backend_name", [*BACKENDS, "copying"])
@pytest.mark.parametrize(("mode", "options"), DETERMINISTIC, ids=[m for m, _ in DETERMINISTIC])
async def test_bit_identical_across_backends_and_workers(
    data: tuple[Dataset, Dataset], backend_name: str, mode: str, options: dict[str, int]
) -> None:
    train, _ = data
    reference = _bits((await _fit("inline", mode, train, **options)).params)
    for workers in (1, 2, 3):
        async with _open_backend(backend_name, workers) as backend:
            result = await _fit(backend, mode, train, **options)
        assert _bits(result.params) == reference, f"{backend_name}, workers={workers}"


async def test_validation_is_bit_identical_on_the_inline_and_thread_backends() -> None:
    """The inline backend ran its math on the caller's BLAS threads (2 here) where every
    other backend's workers run one, and OpenBLAS split this validation product over two
    threads rounds its loss otherwise: val_loss 1.0544309997558594 inline against
    1.0544310251871745 on threads, Dask and processes, on equal parameters."""
    train, val = synthetic("softmax", n=2400, seed=1).split(0.25, seed=0)
    events = []
    for backend in ("inline", "thread"):
        trainer = at.Trainer(
            SoftmaxRegression(128, 10), at.optim.adam(1e-2), backend=backend, mode="ssp",
            batch_size=100, shards=4, seed=3,
        )  # fmt: skip
        async with trainer:
            result = await trainer.fit(train, epochs=2, validation=val)
        events.append([(e.val_loss, e.val_accuracy) for e in result.history])
    assert events[0] == events[1]


@pytest.mark.parametrize(("mode", "options"), DETERMINISTIC[1:], ids=["local", "ssp"])
async def test_two_fits_equal_one_of_two_epochs(
    data: tuple[Dataset, Dataset], mode: str, options: dict[str, int]
) -> None:
    train, _ = data
    whole = await _fit("thread", mode, train, epochs=2, workers=2, **options)
    async with _trainer("thread", mode, workers=2, **options) as trainer:
        await trainer.fit(train, epochs=1)
        halves = await trainer.fit(train, epochs=1)
    assert _bits(halves.params) == _bits(whole.params)


# -- convergence -------------------------------------------------------------------------


class _Reached(at.Callback):
    """Stop once validation accuracy reaches ``target``."""

    def __init__(self, target: float) -> None:
        self.target = target

    def on_epoch(self, event: at.EpochEvent) -> bool:
        return event.val_accuracy >= self.target


async def _epochs_to(
    backend: Any,
    mode: str,
    data: tuple[Dataset, Dataset],
    target: float,
    epochs: int,
    **options: Any,
) -> at.FitResult:
    """Fit until validation accuracy reaches ``target``; fail if ``epochs`` do not do it."""
    train, val = data
    async with _trainer(backend, mode, **options) as trainer:
        result = await trainer.fit(
            train, epochs=epochs, validation=val, callbacks=[_Reached(target)]
        )
    assert result.stopped_early, f"{mode} {options}: {result.val_accuracy:.4f} < {target:.4f}"
    return result


SYNC_EPOCHS = 3


@pytest.fixture(scope="module")
def sync_accuracy(data: tuple[Dataset, Dataset]) -> float:
    train, val = data
    result = at.run(_fit_with_validation(train, val))
    return result.val_accuracy


async def _fit_with_validation(train: Dataset, val: Dataset) -> at.FitResult:
    async with _trainer("thread", "sync", workers=2) as trainer:
        return await trainer.fit(train, epochs=SYNC_EPOCHS, validation=val)


@pytest.mark.parametrize(
    ("mode", "options"),
    [("local", {"local_steps": 4}), ("ssp", {"staleness": 2}), ("async", {})],
    ids=["local", "ssp", "async"],
)
async def test_each_mode_reaches_sync_accuracy_within_twice_the_epochs(
    data: tuple[Dataset, Dataset], sync_accuracy: float, mode: str, options: dict[str, int]
) -> None:
    # On the copying double: process-backend semantics (pickled tasks, copied slots).
    assert sync_accuracy > 0.85
    async with CopyingBackend(workers=2) as backend:
        await _epochs_to(backend, mode, data, sync_accuracy - 0.01, 2 * SYNC_EPOCHS, **options)


async def test_async_with_a_straggler_converges_and_reports_staleness(
    data: tuple[Dataset, Dataset], sync_accuracy: float
) -> None:
    async with CopyingBackend(workers=2) as inner:
        slow = StragglerBackend(inner, shard=0, delay=0.02)
        result = await _epochs_to(slow, "async", data, sync_accuracy - 0.01, 2 * SYNC_EPOCHS)
    # Lane 0 sleeps 20 ms per batch while the other lanes apply many updates each.
    assert result.staleness_max > 3
    assert result.staleness_mean > 0


# -- staleness ---------------------------------------------------------------------------


async def _step_events(trainer: at.Trainer, train: Dataset) -> list[at.StepEvent]:
    events = trainer.steps(train, epochs=2)
    async with contextlib.aclosing(events):
        return [e async for e in events if isinstance(e, at.StepEvent)]


async def test_ssp_staleness_fills_to_the_bound_every_epoch(data: tuple[Dataset, Dataset]) -> None:
    train, _ = data
    trainer = _trainer("thread", "ssp", workers=2, staleness=2)
    events = await _step_events(trainer, train)
    per_epoch = len(events) // 2
    expected = [min(i, 2) for i in range(per_epoch)] * 2
    assert [e.staleness for e in events] == expected
    result = await _fit("thread", "ssp", train, epochs=2, workers=2, staleness=2)
    assert result.staleness_max == 2
    assert result.staleness_mean == pytest.approx(sum(expected) / len(expected))


@pytest.mark.parametrize(("mode", "options"), [("sync", {}), ("local", {"local_steps": 2})])
async def test_lock_step_modes_report_no_staleness(
    data: tuple[Dataset, Dataset], mode: str, options: dict[str, int]
) -> None:
    train, _ = data
    events = await _step_events(_trainer("inline", mode, **options), train)
    assert len(events) == 2 * 47  # 6000 samples in batches of 128
    assert [e.step for e in events] == list(range(len(events)))
    assert all(e.staleness == 0 for e in events)


async def test_async_staleness_counts_versions_applied_meanwhile(
    data: tuple[Dataset, Dataset],
) -> None:
    # On the inline backend each lane computes when launched, so the order is fixed: the
    # first 4 gradients all read version 0 and meet versions 0..3, later ones lag by 3.
    train, _ = data
    events = await _step_events(_trainer("inline", "async"), train)
    per_epoch = len(events) // 2
    assert [e.staleness for e in events[:per_epoch]] == [0, 1, 2, 3] + [3] * (per_epoch - 4)


# -- local mode's optimizer state --------------------------------------------------------


async def test_local_shards_keep_their_own_optimizer_state(
    data: tuple[Dataset, Dataset],
) -> None:
    train, _ = data
    train = Dataset(train.X[:1024], train.y[:1024])  # 8 batches: 2 rounds of 4
    opt = at.optim.sgd(0.1, momentum=0.9)
    async with _trainer("thread", "local", optimizer=opt, workers=2, local_steps=4) as trainer:
        start = trainer.params
        await trainer.fit(train)
        state = trainer.state
    assert isinstance(state.opt_state, LocalOptState)
    assert state.version == 2
    assert state.step == 8
    expected_params, expected_states = _local_sgd_by_hand(start, train, opt, rounds=2, k=4)
    for key, value in expected_params.items():
        np.testing.assert_allclose(state.params[key], value, rtol=1e-5, atol=1e-7)
    for got, want in zip(state.opt_state.shards, expected_states, strict=True):
        np.testing.assert_allclose(got[0].trace["W"], want[0].trace["W"], rtol=1e-5, atol=1e-7)


def _local_sgd_by_hand(
    params: dict[str, np.ndarray], train: Dataset, opt: Any, *, rounds: int, k: int
) -> tuple[dict[str, np.ndarray], list[Any]]:
    """The oracle: model averaging written out with plain numpy, one loop per shard."""
    model = SoftmaxRegression(128, 10)
    order = at.data.epoch_order(len(train), seed=3, epoch=0)
    states = [opt.init(params) for _ in range(4)]
    for r in range(rounds):
        ends: list[dict[str, np.ndarray]] = []
        for s in range(4):
            p = {key: value.copy() for key, value in params.items()}
            for j in range(k):
                batch = order[(r * k + j) * 128 : (r * k + j + 1) * 128]
                rows = batch[s * 32 : (s + 1) * 32]
                _, g = model.loss_and_grad(p, train.X[rows], train.y[rows])
                g = {key: value / len(rows) for key, value in g.items()}
                updates, states[s] = opt.update(g, states[s], p)
                p = {key: p[key] + updates[key] for key in p}
            ends.append(p)
        params = {key: sum(e[key] for e in ends) / 4 for key in params}
    return params, states


class _NaNGradients(SoftmaxRegression):
    """A model whose gradients are all NaN: every update is non-finite."""

    def loss_and_grad(self, params: Any, X: Any, y: Any) -> tuple[float, Any]:
        loss, grads = super().loss_and_grad(params, X, y)
        return loss, {key: np.full_like(value, np.nan) for key, value in grads.items()}


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
async def test_local_mode_applies_the_nonfinite_policy_per_round(
    data: tuple[Dataset, Dataset], nonfinite: str
) -> None:
    train, _ = data
    trainer = at.Trainer(
        _NaNGradients(128, 10),
        at.optim.sgd(0.1, momentum=0.9),
        backend="thread",
        workers=2,
        batch_size=128,
        mode="local",
        local_steps=4,
        nonfinite=nonfinite,
    )
    async with trainer:
        before = trainer.params
        if nonfinite == "raise":
            with pytest.raises(at.NonFiniteError, match=r"steps 0\.\.3 \(one local round\)"):
                await trainer.fit(train)
            assert trainer.state.step == 0
        else:
            result = await trainer.fit(train)
            assert result.skipped_steps == result.steps == 47
            states = trainer.state.opt_state.shards
            assert all(np.isfinite(s[0].trace["W"]).all() for s in states)
    assert _bits(trainer.params) == _bits(before)


@pytest.mark.parametrize(("mode", "options"), [("ssp", {"staleness": 2}), ("async", {})])
async def test_pipelined_modes_stop_cleanly_on_a_nonfinite_gradient(
    data: tuple[Dataset, Dataset], mode: str, options: dict[str, int]
) -> None:
    train, _ = data
    trainer = at.Trainer(
        _NaNGradients(128, 10), backend="thread", workers=2, batch_size=128, mode=mode, **options
    )
    async with trainer:
        before = trainer.params
        with pytest.raises(at.NonFiniteError, match="step 0: non-finite"):
            await trainer.fit(train)
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert trainer.state.step == 0
    assert _bits(trainer.params) == _bits(before)


# -- closing early, and misuse -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "options", "versions"),
    [
        ("sync", {}, 10),
        ("local", {"local_steps": 2}, 5),
        ("ssp", {"staleness": 3}, 10),
        ("async", {}, 10),
    ],
)
async def test_stopping_mid_epoch_leaves_the_last_applied_step(
    data: tuple[Dataset, Dataset], mode: str, options: dict[str, int], versions: int
) -> None:
    train, _ = data
    async with _trainer("thread", mode, workers=2, **options) as trainer:
        events = trainer.steps(train, epochs=1)
        async with contextlib.aclosing(events):
            async for event in events:
                if event.kind == "step" and event.step == 9:
                    break
        # Closed at once: no shard task is left running behind the trainer.
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert trainer.state.step == 10
        assert trainer.state.version == versions


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"mode": "local", "local_steps": 0}, "local_steps must be >= 1"),
        ({"mode": "local", "local_steps": 2.0}, "local_steps must be an integer"),
        ({"mode": "ssp", "staleness": -1}, "staleness must be >= 0"),
        ({"mode": "ssp", "staleness": True}, "staleness must be an integer"),
        ({"mode": "warp"}, "mode must be one of 'sync', 'local', 'ssp', 'async'"),
        ({"local_steps": 2}, "local_steps=2 is not an option of mode='sync'; use mode='local'"),
        ({"mode": "ssp", "local_steps": 2}, "not an option of mode='ssp'"),
        ({"mode": "local", "staleness": 1}, "staleness=1 is not an option of mode='local'; use"),
        ({"mode": "async", "staleness": 1}, "use mode='ssp' with it"),
    ],
)
def test_bad_mode_settings_fail_before_any_work(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises((at.ConfigError, at.ConfigTypeError), match=fragment):
        at.Trainer(SoftmaxRegression(4, 3), backend="inline", **options)


@pytest.mark.parametrize(
    ("name", "options", "mode"),
    [
        ("local", {"local_steps": 3}, at.modes.Local(steps=3)),
        ("ssp", {"staleness": 2}, at.modes.SSP(staleness=2)),
    ],
)
async def test_a_mode_object_trains_as_its_name_and_options(
    data: tuple[Dataset, Dataset], name: str, options: dict[str, int], mode: at.modes.Mode
) -> None:
    train, _ = data
    by_name = await _fit("thread", name, train, workers=2, **options)
    async with _trainer("thread", mode, workers=2) as trainer:  # type: ignore[arg-type]
        by_object = await trainer.fit(train)
        assert trainer.mode is mode
    assert _bits(by_object.params) == _bits(by_name.params)


@pytest.mark.parametrize(
    ("mode", "options", "error", "fragment"),
    [
        (at.modes.Local(steps=2), {"local_steps": 3}, at.ConfigError, "beside the mode object"),
        (object(), {}, at.ConfigTypeError, "a name .* or a mode object"),
        ("local", {"local_steps": 0}, at.ConfigError, "local_steps must be >= 1"),
    ],
)
def test_mode_objects_refuse_options_beside_them(
    mode: Any, options: dict[str, int], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        at.Trainer(SoftmaxRegression(4, 3), backend="inline", mode=mode, **options)


def test_mode_objects_check_their_own_options() -> None:
    with pytest.raises(at.ConfigError, match="local_steps must be >= 1"):
        at.modes.Local(steps=0)
    with pytest.raises(at.ConfigTypeError, match="staleness must be an integer"):
        at.modes.SSP(staleness=1.5)  # type: ignore[arg-type]


def test_every_mode_is_configurable() -> None:
    assert list(MODES) == list(MODE_OPTIONS)
    for name in MODES:
        trainer = at.Trainer(SoftmaxRegression(4, 3), backend="inline", mode=name)
        assert f"mode={name} " in repr(trainer)


def test_slot_pool_never_hands_out_a_slot_in_use() -> None:
    rng = np.random.default_rng(0)
    lanes = 4
    pool = SlotPool(lanes + 2, current=0)
    pinned: list[int] = []
    for _ in range(2000):
        if len(pinned) < lanes and rng.random() < 0.5:
            pinned.append(pool.pin())
        elif pinned:
            pool.unpin(pinned.pop(int(rng.integers(len(pinned)))))
        slot = pool.free()
        assert slot not in pinned
        assert slot != pool.current
        pool.current = slot


def test_ssp_takes_staleness_up_to_its_bound() -> None:
    from asynctrain._engine._ssp import MAX_STALENESS

    assert at.modes.SSP(staleness=MAX_STALENESS).param_slots(2) == MAX_STALENESS + 2
    with pytest.raises(at.ConfigError, match="1024 steps"):
        at.modes.SSP(staleness=MAX_STALENESS + 1)


class _ChainedBug(SoftmaxRegression):
    """Its gradient fails with a ValueError raised from the KeyError that caused it (or,
    ``implicit``, raised while handling it)."""

    implicit, broken = False, True

    def loss_and_grad(self, params, X, y, **options):  # type: ignore[no-untyped-def]
        if not self.broken:
            return super().loss_and_grad(params, X, y, **options)
        try:
            {}["W2"]
        except KeyError as cause:
            if self.implicit:
                raise ValueError("no such layer")  # noqa: B904 (the implicit chain is the point)
            raise ValueError("no such layer") from cause
        raise AssertionError("unreachable")


@pytest.mark.parametrize("implicit", [False, True], ids=["cause", "context"])
@pytest.mark.parametrize(("mode", "options"), [*DETERMINISTIC, ("async", {})])
async def test_a_shard_error_keeps_its_own_cause_and_context(
    data: tuple[Dataset, Dataset], mode: str, options: dict[str, Any], implicit: bool
) -> None:
    """The task group's unwrapping raised the shard's error ``from None``: that erased
    an explicit ``raise ... from cause`` and hid the exception it was raised while
    handling behind the group. Both reach the caller now, in fit and in evaluate."""
    model = _ChainedBug(128, 10)
    model.implicit = implicit
    async with at.Trainer(model, backend="inline", mode=mode, batch_size=128, **options) as trainer:
        model.broken = False
        await trainer.fit(data[1])  # trained: evaluate runs
        model.broken = True
        for call in (lambda: trainer.fit(data[0]), lambda: trainer.evaluate(data[1])):
            with pytest.raises(ValueError, match="no such layer") as caught:
                await call()
            chained = caught.value.__context__ if implicit else caught.value.__cause__
            assert isinstance(chained, KeyError), (chained, caught.value.__context__)
            assert caught.value.__suppress_context__ is not implicit
