"""The backend contract: one suite, run on every backend through the ``backend`` fixture."""

from __future__ import annotations

import asyncio
import copy
import threading
import time

import numpy as np
import pytest
from conftest import BACKENDS

import asynctrain as at
from asynctrain.backends import InlineBackend, ThreadBackend, get_backend


@pytest.fixture(params=[*BACKENDS, pytest.param("dask", marks=pytest.mark.dask)])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The contract suite also runs on Dask (on the module's shared cluster); other suites
    keep to conftest.BACKENDS, whose names start a backend per test."""
    return str(request.param)


@pytest.mark.parametrize("name", ["inline", pytest.param("dask", marks=pytest.mark.dask)])
def test_only_the_dask_case_of_a_test_gets_the_cluster(
    name: str, request: pytest.FixtureRequest
) -> None:
    """The cluster fixture went to every case of a test with a Dask case, so without
    distributed installed the whole contract suite was skipped, every backend's case."""
    assert ("dask_cluster" in request.node.fixturenames) == (name == "dask")


def _boom(message: str) -> None:
    raise KeyError(message)


def _raise_on_overflow() -> str:
    np.seterr(over="raise")  # model code changing numpy's error state
    return str(np.geterr()["over"])


def _slow_identity(value: int, seconds: float) -> int:
    time.sleep(seconds)
    return value


class _BroadcastGrad:
    """A linear model whose gradient of ``w`` has shape (1,): numpy broadcasts it."""

    n_features, n_classes, dtype = 4, None, np.dtype(np.float32)

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return at.models.LinearRegression(4).init(rng)

    def predict(self, params: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
        return at.models.LinearRegression(4).predict(params, X)

    def loss_and_grad(
        self, params: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray
    ) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = at.models.LinearRegression(4).loss_and_grad(params, X, y)
        return loss, {**grads, "w": grads["w"][:1]}


async def test_a_gradient_shaped_unlike_its_parameter_fails_alike_everywhere(
    backend: at.backends.Backend,
) -> None:
    # Unchecked, inline and thread trained on the broadcast gradient while process refused it.
    X = np.ones((64, 4), np.float32)
    y = X.sum(axis=1)
    model, bad = _BroadcastGrad(), r"'w' of shape \(1,\) for a parameter of \(4,\)"
    async with at.Trainer(model, at.optim.sgd(0.1), backend=backend, batch_size=16) as trainer:
        with pytest.raises(at.ConfigError, match=bad):
            await trainer.fit((X, y), epochs=1)


async def test_run_returns_the_result(backend: at.backends.Backend) -> None:
    assert await backend.run(pow, 3, 4) == 81


async def test_user_exceptions_keep_their_type(backend: at.backends.Backend) -> None:
    with pytest.raises(KeyError, match="from user code"):
        await backend.run(_boom, "from user code")


async def test_share_round_trips_arrays(backend: at.backends.Backend) -> None:
    arrays = {"X": np.arange(6.0).reshape(3, 2), "y": np.arange(3)}
    shared = await backend.share(arrays, slots=2)
    assert shared.slots == 2
    for slot in range(2):
        np.testing.assert_array_equal(shared.read(slot)["X"], arrays["X"])
    shared.write(1, {"X": arrays["X"] * 2, "y": arrays["y"]})
    np.testing.assert_array_equal(shared.read(1)["X"], arrays["X"] * 2)
    np.testing.assert_array_equal(shared.read(0)["X"], arrays["X"])
    await backend.release(shared)


async def test_a_tasks_numpy_error_state_never_reaches_the_caller(
    backend: at.backends.Backend,
) -> None:
    before = np.geterr()
    try:
        assert await backend.run(_raise_on_overflow) == "raise"
        # Before the fix the inline backend left the caller's state at "raise".
        assert np.geterr() == before
    finally:
        np.seterr(**before)


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy], ids=["copy", "deepcopy"])
async def test_an_open_backend_refuses_to_be_copied(
    backend: at.backends.Backend, copier: object
) -> None:
    """A shallow copy shared the pool: closing it closed the original's workers."""
    with pytest.raises(at.StateError, match=r"cannot copy .* would share its workers"):
        copier(backend)  # type: ignore[operator]
    assert await backend.run(pow, 2, 5) == 32


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy], ids=["copy", "deepcopy"])
@pytest.mark.parametrize("name", BACKENDS)
async def test_an_unopened_backend_copies_into_an_independent_one(
    name: str, copier: object
) -> None:
    original, _ = get_backend(name, workers=None if name == "inline" else 2)
    twin = copier(original)  # type: ignore[operator]
    assert twin is not original
    assert repr(twin) == repr(original)
    async with original:
        async with twin:
            shared = await original.share({"x": np.arange(3.0)})
            assert await twin.run(pow, 3, 2) == 9
        # Closing the twin left the original's workers and what it shares alone.
        assert twin.state == "closed"
        assert original.state == "open"
        assert await original.run(pow, 2, 5) == 32
        assert shared.read(0)["x"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(at.StateError, match="it is closed"):
        copier(original)  # type: ignore[operator]


async def test_many_tasks_in_flight(backend: at.backends.Backend) -> None:
    results = await asyncio.gather(*(backend.run(_slow_identity, i, 0.001) for i in range(20)))
    assert results == list(range(20))


async def test_closed_backend_refuses_work(backend_name: str) -> None:
    backend, owned = get_backend(backend_name)
    assert owned
    async with backend:
        assert backend.state == "open"
    assert backend.state == "closed"
    with pytest.raises(at.StateError, match="closed"):
        await backend.run(pow, 2, 2)
    await backend.aclose()  # idempotent


async def test_cancelled_thread_work_is_not_left_running() -> None:
    finished = threading.Event()

    def work() -> None:
        time.sleep(0.2)
        finished.set()

    async with ThreadBackend(workers=1) as backend:
        task = asyncio.create_task(backend.run(work))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The awaiter got CancelledError only once the worker was no longer busy.
        assert finished.is_set()


async def test_thread_backend_limits_blas_threads() -> None:
    from threadpoolctl import threadpool_info

    async with ThreadBackend(workers=1):
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas
        assert all(p["num_threads"] == 1 for p in blas)


def test_unknown_backend_name_lists_the_choices() -> None:
    with pytest.raises(at.ConfigError, match="'inline', 'process', 'thread'"):
        get_backend("gpu")


def test_backend_object_is_not_owned() -> None:
    backend = InlineBackend()
    assert get_backend(backend) == (backend, False)
    with pytest.raises(at.ConfigError, match="workers"):
        get_backend(backend, workers=2)


def test_bad_backend_type() -> None:
    with pytest.raises(at.ConfigTypeError):
        get_backend(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [0, -1, True, 1.5])
def test_bad_worker_counts(workers: object) -> None:
    with pytest.raises((at.ConfigError, at.ConfigTypeError)):
        ThreadBackend(workers=workers)  # type: ignore[arg-type]


def test_repr_shows_state() -> None:
    assert repr(ThreadBackend(workers=2)) == "<ThreadBackend workers=2 unopened>"


async def test_trainer_service_and_backends_share_one_lifecycle() -> None:
    from asynctrain._types import State

    backend = at.backends.InlineBackend()
    trainer = at.Trainer(at.models.LogisticRegression(2), backend=backend)
    assert backend.state is State.UNOPENED
    async with trainer, at.TrainingService(backend=backend):
        assert backend.state is State.OPEN
        assert "open" in repr(trainer)
    await backend.aclose()
    assert backend.state == "closed"  # a StrEnum: compares with the old strings


async def test_inline_run_passes_through_the_loop_once() -> None:
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    async with at.backends.InlineBackend() as backend, asyncio.TaskGroup() as group:
        group.create_task(other())
        await backend.run(ran.append, "work")
    assert ran == ["other", "work"]
