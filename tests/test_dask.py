"""DaskBackend on real clusters: bit-identity, a killed worker, cancellation, security.

Most tests connect to the session's shared LocalCluster (conftest ``dask_cluster``); the
ones about a cluster the backend starts itself start their own, on the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _loops import OPENERS, used_then_another_loop
from conftest import LOOPS

import asynctrain as at
from asynctrain._engine import MODES
from asynctrain.data import Dataset, synthetic
from asynctrain.models import SoftmaxRegression

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

from asynctrain.backends import DaskBackend  # noqa: E402

pytestmark = pytest.mark.dask


@pytest.fixture(scope="module")
def data() -> tuple[Dataset, Dataset]:
    return synthetic("softmax", n=2400, seed=1).split(0.25, seed=0)


def _bits(params: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in params.items()}


async def _fit(
    backend: str | at.backends.Backend,
    data: tuple[Dataset, Dataset],
    *,
    model: Any = None,
    mode: str = "sync",
    callbacks: list[at.Callback] | None = None,
    shuffle: str = "global",
) -> at.FitResult:
    model = SoftmaxRegression(128, 10) if model is None else model
    trainer = at.Trainer(
        model,
        at.optim.adam(1e-2),
        backend=backend,
        batch_size=100,
        shards=4,
        seed=3,
        mode=mode,
        shuffle=shuffle,
    )
    async with trainer:
        return await trainer.fit(data[0], epochs=2, validation=data[1], callbacks=callbacks or [])


def _reference_backends() -> list[str]:
    names = ["inline", "thread"]
    with contextlib.suppress(ImportError):
        from asynctrain.backends import ProcessBackend  # noqa: F401

        names.append("process")
    return names


UNORDERED = {"async"}  # modes that apply results in arrival order: no bit-identity


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_bit_identical_to_the_other_backends(
    mode: str, data: tuple[Dataset, Dataset], dask_cluster: Any
) -> None:
    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        result = await _fit(backend, data, mode=mode)
    if mode in UNORDERED:
        assert result.history[-1].loss < result.history[0].loss
        assert result.steps == (await _fit("inline", data, mode=mode)).steps
        return
    for name in _reference_backends():
        reference = await _fit(name, data, mode=mode)
        assert _bits(result.params) == _bits(reference.params), f"{mode}: dask vs {name}"
        assert result.history[-1].val_loss == reference.history[-1].val_loss


@pytest.mark.parametrize("mode", ["sync", "local"])
async def test_weighted_data_travels_to_the_workers_bit_identically(
    mode: str, data: tuple[Dataset, Dataset], dask_cluster: Any
) -> None:
    """Sample weights are scattered as one more array and gathered with each shard's rows."""
    rng = np.random.default_rng(2)
    weighted = tuple(part.with_weights(rng.uniform(0.0, 2.0, len(part))) for part in data)
    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        result = await _fit(backend, weighted, mode=mode)  # type: ignore[arg-type]
    reference = await _fit("inline", weighted, mode=mode)  # type: ignore[arg-type]
    assert _bits(result.params) == _bits(reference.params)
    assert result.history[-1].val_loss == reference.history[-1].val_loss
    unweighted = await _fit("inline", data, mode=mode)
    assert _bits(unweighted.params) != _bits(reference.params)


class KillOnce:
    """A softmax model whose first shard after ``armed`` appears SIGKILLs its worker."""

    def __init__(self, armed: Path, fired: Path) -> None:
        self.inner = SoftmaxRegression(128, 10)
        self.n_features, self.n_classes, self.dtype = 128, 10, self.inner.dtype
        self.armed, self.fired = str(armed), str(fired)

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.inner.init(rng)

    def loss_and_grad(self, params: Any, X: np.ndarray, y: np.ndarray) -> Any:
        if os.path.exists(self.armed):
            with contextlib.suppress(FileExistsError):
                open(self.fired, "x").close()  # exactly one task, on one worker, dies
                os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.loss_and_grad(params, X, y)

    def predict(self, params: Any, X: np.ndarray) -> np.ndarray:
        return self.inner.predict(params, X)


class ArmAt(at.Callback):
    def __init__(self, step: int, armed: Path) -> None:
        self.step, self.armed = step, armed

    def on_step(self, event: at.StepEvent) -> None:
        if event.step == self.step:
            self.armed.touch()


@pytest.mark.parametrize("shuffle", ["global", "shard"])
async def test_a_killed_worker_costs_a_retried_shard_not_the_fit(
    shuffle: str, data: tuple[Dataset, Dataset], tmp_path: Path
) -> None:
    """With shuffle="shard" the dead worker's partitions are sent again, to the worker
    that takes its shards."""
    armed, fired = tmp_path / "armed", tmp_path / "fired"
    reference = await _fit("inline", data, shuffle=shuffle)
    async with DaskBackend(workers=2) as backend:
        pids = set((await backend.client.run(os.getpid)).values())
        result = await _fit(
            backend,
            data,
            model=KillOnce(armed, fired),
            callbacks=[ArmAt(3, armed)],
            shuffle=shuffle,
        )
        assert fired.exists(), "no worker was killed"
        after = set((await backend.client.run(os.getpid)).values())
    assert len(pids - after) == 1  # one worker died mid-task and was replaced
    assert _bits(result.params) == _bits(reference.params)


class _HangingRpc:
    """A client's connection pool whose calls never answer, like a connection to a dead
    worker that distributed keeps retrying until its connect timeout (30 s by default)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    def __call__(self, address: str) -> _HangingRpc:
        return self

    async def actor_execute(self, **_: Any) -> dict[str, Any]:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        raise AssertionError("unreachable")


async def test_a_lost_worker_fails_the_batch_in_flight_at_once() -> None:
    """The scheduler reports a worker gone while a batch is on its way to it: its calls
    hear LaneLost now (and run elsewhere), not when distributed's connect gives up. A
    fit whose every worker was killed waited 30 s here, one run in two."""
    from asynctrain.backends._dask_lane import Lane, LaneLost, Traffic
    from asynctrain.backends._dask_shared import Call

    rpc = _HangingRpc()
    lane = Lane("tcp://127.0.0.1:1", "store", rpc, Traffic())
    flying = lane.submit(Call(print, ()), [])
    await asyncio.wait_for(rpc.started.wait(), 5)
    queued = lane.submit(Call(print, ()), [])
    assert lane.outstanding == 2
    lane.lose(LaneLost("the scheduler removed it"))
    for future in (flying, queued):
        with pytest.raises(LaneLost, match="went away"):
            await asyncio.wait_for(future, 1)
    await asyncio.wait_for(rpc.cancelled.wait(), 1)  # the send is abandoned, not left
    assert lane.outstanding == 0
    await lane.close()


def _listening(pid: int) -> list[str]:
    process = psutil.Process(pid)
    found = []
    for proc in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            found += [c.laddr.ip for c in proc.net_connections("inet") if c.status == "LISTEN"]
    return found


async def test_own_cluster_listens_on_loopback_only_and_stops() -> None:
    """Also: its client gives up a connection after connect_timeout seconds, as one made
    for an address does (it kept distributed's 30 s: a worker gone from its address was
    retried that long)."""
    async with DaskBackend(workers=1, connect_timeout=1.0) as backend:
        assert backend.dashboard_link is None
        assert await backend.run(pow, 2, 5) == 32
        began = time.monotonic()
        with pytest.raises(OSError, match="after 1 s"):
            await asyncio.wait_for(
                backend.client.rpc(f"tcp://127.0.0.1:{_closed_port()}").identity(), 10
            )
        assert time.monotonic() - began < 5
        bound = _listening(os.getpid())
        assert bound, "the cluster listens somewhere"
        assert set(bound) == {"127.0.0.1"}, bound
        workers = backend.client.scheduler_info()["workers"]
        # glibc's default malloc tuning: Dask's MALLOC_TRIM_THRESHOLD_ is not exported
        # (it costs a quarter of a worker's CPU in page faults on an MLP's shards).
        nannies = list(backend._cluster.workers.values())
        assert nannies
        assert all("MALLOC_TRIM_THRESHOLD_" not in nanny.pre_spawn_env for nanny in nannies)
    assert all(address.startswith("tcp://127.0.0.1:") for address in workers)
    assert backend.state == "closed"


async def test_starting_workers_leaves_the_callers_environment_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dask's nannies set their workers' variables in this process's environment to spawn
    them; every process the caller started later inherited them. Also after a restart."""
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    before = dict(os.environ)
    async with DaskBackend(workers=2) as backend:
        assert dict(os.environ) == before
        # os.getenv runs there; os.environ.get would carry this process's environ along.
        seen = await backend.client.run(os.getenv, "OPENBLAS_NUM_THREADS")
        assert set(seen.values()) == {"1"}  # the workers still get Dask's settings
        seen = await backend.client.run(os.getenv, "OMP_NUM_THREADS")
        assert set(seen.values()) == {"7"}  # (where the caller's do not override them)
        await backend.client.restart()
        # The client may see the workers back before their nannies have finished
        # starting them (and put the environment back).
        for _ in range(200):
            if dict(os.environ) == before:
                break
            await asyncio.sleep(0.05)
        assert dict(os.environ) == before
    assert dict(os.environ) == before


@pytest.mark.parametrize(
    "address", ["tcp://10.1.2.3:8786", "10.1.2.3:8786", "scheduler.example.com:8786"]
)
def test_plain_tcp_remote_address_is_refused(address: str) -> None:
    with pytest.raises(at.ConfigError, match="allow_insecure"):
        DaskBackend(address)


def test_insecure_opt_in_warns_naming_the_address(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="asynctrain.dask"):
        DaskBackend("tcp://10.1.2.3:8786", allow_insecure=True)
    assert "tcp://10.1.2.3:8786" in caplog.text


@pytest.mark.parametrize("address", ["tls://10.1.2.3:8786", "tcp://127.0.0.1:8786", "[::1]:1"])
def test_tls_and_loopback_addresses_are_accepted(address: str) -> None:
    assert DaskBackend(address).state == "unopened"


def test_unpicklable_objects_are_named() -> None:
    backend = DaskBackend("tcp://127.0.0.1:1")
    backend.check_picklable(lambda x: x, SoftmaxRegression(4, 2))  # cloudpickle takes these
    with pytest.raises(at.ConfigTypeError, match="Dask worker"):
        backend.check_picklable(threading.Lock())


@pytest.mark.parametrize("address", ["tcp://", "tcp://host", "", 8786])
def test_malformed_addresses_are_refused(address: object) -> None:
    with pytest.raises(at.ConfigError, match="address"):
        DaskBackend(address)  # type: ignore[arg-type]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(at.ConfigError, match="not both"):
        DaskBackend("tcp://127.0.0.1:1", client=object())  # type: ignore[arg-type]
    with pytest.raises(at.ConfigError, match="asynchronous"):
        DaskBackend(client=object())  # type: ignore[arg-type]
    with pytest.raises(at.ConfigError):
        DaskBackend(max_in_flight=0)
    with pytest.raises(at.ConfigError, match="wait_for_workers"):
        DaskBackend(wait_for_workers=-1)
    with pytest.raises(at.ConfigTypeError, match="wait_for_workers"):
        DaskBackend(wait_for_workers="10")  # type: ignore[arg-type]
    for seconds in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(at.ConfigError, match=r"connect_timeout must be finite and > 0"):
            DaskBackend("tcp://127.0.0.1:1", connect_timeout=seconds)
    with pytest.raises(at.ConfigTypeError, match="connect_timeout"):
        DaskBackend("tcp://127.0.0.1:1", connect_timeout=True)
    with pytest.raises(at.ConfigError, match="exceeds its maximum"):
        DaskBackend(adaptive=(3, 2))
    with pytest.raises(at.ConfigTypeError, match="pair"):
        DaskBackend(adaptive=3)  # type: ignore[arg-type]
    with pytest.raises(at.ConfigError, match=r"cluster\.adapt"):
        DaskBackend("tcp://127.0.0.1:1", adaptive=(1, 2))


class Slow(SoftmaxRegression):
    def loss_and_grad(self, params: Any, X: np.ndarray, y: np.ndarray) -> Any:
        time.sleep(0.2)
        return super().loss_and_grad(params, X, y)


class StepSeen(at.Callback):
    """Sets ``seen`` once the first step has been applied."""

    def __init__(self) -> None:
        self.seen = asyncio.Event()

    def on_step(self, event: at.StepEvent) -> None:
        self.seen.set()


async def _scheduler_tasks(client: Any) -> list[str]:
    def keys(dask_scheduler: Any) -> list[str]:
        return [str(key) for key in dask_scheduler.tasks]

    return list(await client.run_on_scheduler(keys))


async def test_cancelling_a_fit_releases_the_cluster_futures(
    data: tuple[Dataset, Dataset], dask_cluster: Any
) -> None:
    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        trainer = at.Trainer(Slow(128, 10), backend=backend, batch_size=100, shards=8)
        stepped = StepSeen()
        fit = asyncio.create_task(trainer.fit(data[0], epochs=5, callbacks=[stepped]))
        await stepped.seen.wait()
        fit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fit
        assert trainer.state.step >= 1
        # The workers dropped the fit's data, parameters and gradients; the cluster holds
        # nothing of the backend's but its stores, one per worker.
        assert sum((await backend.kept()).values()) == 0
        stores = {str(future.key) for future in backend.client.futures.values()}
        assert len(stores) == 2
        assert all(key.startswith("asynctrain-store-") for key in stores)
        assert set(await _scheduler_tasks(backend.client)) == stores


def _write_slot(shared: Any, slot: int, value: float) -> None:
    shared.write(slot, {"v": np.full(3, value)})


def _read_slot(shared: Any, slot: int) -> float:
    return float(shared.read(slot)["v"][0])


async def test_slots_travel_both_ways(dask_cluster: Any) -> None:
    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        shared = await backend.share({"v": np.zeros(3)}, slots=3)
        big = {"v": np.full(300_000, 2.0)}  # 2.4 MB: scattered once, not carried
        shared_big = await backend.share({"v": np.zeros(300_000)}, slots=1)
        shared_big.write(0, big)
        assert await backend.run(_read_slot, shared_big, 0) == 2.0
        shared.write(1, {"v": np.full(3, 5.0)})  # the owner's write reaches tasks
        assert await backend.run(_read_slot, shared, 1) == 5.0
        await backend.run(_write_slot, shared, 2, 7.0)  # a task's write reaches the owner
        assert shared.read(2)["v"][0] == 7.0
        assert await backend.run(_read_slot, shared, 2) == 7.0  # ... and later tasks
        await backend.run(_write_slot, shared, 2, 8.0)
        assert await backend.run(_read_slot, shared, 2) == 8.0
        await backend.release(shared)
        with pytest.raises(at.StateError, match="released"):
            await backend.run(_read_slot, shared, 0)


async def test_a_worker_that_lost_what_it_kept_is_sent_it_again(dask_cluster: Any) -> None:
    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        shared = await backend.share({"v": np.full(3, 4.0)}, slots=2)
        assert await backend.run(_read_slot, shared, 1) == 4.0
        for lane in backend._order:  # as if each worker had been replaced at its address
            await backend.client.rpc(lane.address).actor_execute(
                actor=lane.actor, function="forget", args=[[shared.token]], kwargs={}
            )
        assert sum((await backend.kept()).values()) == 0
        assert await backend.run(_read_slot, shared, 1) == 4.0  # sent again, run again
        await backend.release(shared)


async def test_an_existing_client_is_used_and_left_open(dask_cluster: Any) -> None:
    async with distributed.Client(
        dask_cluster.scheduler_address, asynchronous=True, set_as_default=False
    ) as client:
        async with DaskBackend(client=client) as backend:
            assert backend.workers == 2
            assert await backend.run(pow, 2, 3) == 8
        assert client.status == "running"


async def test_a_client_closed_by_its_owner_mid_fit_is_a_state_error_saying_so(
    dask_cluster: Any, data: tuple[Dataset, Dataset]
) -> None:
    # The owner closing the client handed over: the step's calls failed with "could not
    # read a batch of calls ... the workers need every module", then the fit's clean-up
    # raised distributed's RuntimeError('ConnectionPool is closed') in its place.
    client = await distributed.Client(
        dask_cluster.scheduler_address, asynchronous=True, set_as_default=False
    )

    class CloseClient(at.Callback):
        async def on_step(self, event: at.StepEvent) -> None:
            if event.step == 3:
                await client.close()

    try:
        async with DaskBackend(client=client) as backend:
            with pytest.raises(at.StateError, match=r"Dask client .* was closed") as caught:
                await _fit(backend, data, callbacks=[CloseClient()])
            assert "could not read a batch" not in str(caught.value)
            with pytest.raises(at.StateError, match="was closed"):
                await backend.run(pow, 2, 3)
    finally:
        await client.close()


@pytest.mark.slow
async def test_a_scheduler_that_goes_away_mid_fit_is_a_backend_error_naming_it(
    data: tuple[Dataset, Dataset],
) -> None:
    # Its workers leave with it, and the backend asks the scheduler for new ones: that
    # raised distributed's own OSError ("Timed out trying to connect ...") or
    # CommClosedError ("ConnectionPool closing.") out of the fit.
    async with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        asynchronous=True,
    ) as cluster:

        class StopScheduler(at.Callback):
            async def on_step(self, event: at.StepEvent) -> None:
                if event.step == 3:
                    await cluster.scheduler.close()

        backend = DaskBackend(cluster.scheduler_address, connect_timeout=2, wait_for_workers=5)
        async with backend:
            with pytest.raises(at.BackendError, match="lost its Dask scheduler"):
                await asyncio.wait_for(_fit(backend, data, callbacks=[StopScheduler()]), 60)


async def test_a_step_ships_ids_and_indices_not_arrays(
    data: tuple[Dataset, Dataset], dask_cluster: Any
) -> None:
    """Sent: the dataset and the model once per worker, then each parameter version once
    per worker; returned: one gradient per shard and step. Counted from the sizes alone."""
    model = SoftmaxRegression(128, 10)
    param_bytes = sum(v.nbytes for v in model.init(np.random.default_rng(0)).values())
    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        trainer = at.Trainer(model, backend=backend, batch_size=100, shards=4, seed=3)
        async with trainer:
            result = await trainer.fit(data[0], epochs=1)
        workers = backend.workers
        sent, returned = backend.traffic.sent, backend.traffic.returned
        assert sum((await backend.kept()).values()) == 0  # all dropped after the fit
    steps = result.steps
    dataset = data[0].X.nbytes + data[0].y.nbytes
    model_blob = len(pickle.dumps(model, protocol=5)) + 16
    # Each worker: the dataset, the model, the first parameters and zeroed gradients,
    # then at most one parameter version per step (the last is written after the last
    # step). A step whose shards the placement grouped into one task sends its version to
    # that task's worker only, so the versions reach at least one worker each.
    expected = workers * (dataset + model_blob + 2 * param_bytes + steps * param_bytes)
    assert sent <= expected
    assert sent >= workers * dataset + (steps - 1) * param_bytes
    assert returned == steps * 4 * param_bytes


class HeldAtEpochEnd(at.Callback):
    """At every epoch's end, which worker keeps which partition (by its row labels)."""

    def __init__(self, backend: DaskBackend, partitions: list[np.ndarray]) -> None:
        self.backend, self.partitions = backend, partitions
        self.where: list[dict[int, list[int]]] = []  # per epoch: partition -> lanes

    async def on_epoch(self, event: at.EpochEvent) -> None:
        tokens = {}
        for handle in list(self.backend._handles):
            y = handle.read(0).get("y")
            for s, part in enumerate(self.partitions):
                if y is not None and np.array_equal(y, part):  # kept by its content's id
                    tokens[handle.content_id or handle.token] = s
        assert len(tokens) == len(self.partitions)
        where: dict[int, list[int]] = {s: [] for s in range(len(self.partitions))}
        for i, lane in enumerate(self.backend._order):
            reply = await self.backend.client.rpc(lane.address).actor_execute(
                actor=lane.actor, function="held", args=[], kwargs={}
            )
            for token in reply["result"]:
                if token in tokens:
                    where[tokens[token]].append(i)
        self.where.append(where)


@pytest.mark.parametrize("mode", ["sync", "local"])
async def test_shard_shuffle_keeps_each_partition_on_its_worker_only(
    mode: str, data: tuple[Dataset, Dataset], dask_cluster: Any
) -> None:
    """shuffle="shard": partition s is sent once, to the worker running shard s (the
    (s % 2)-th of 2), and no other worker ever holds it; the bits match inline's."""
    from asynctrain.data._partition import shard_partitions

    rows = shard_partitions(len(data[0]), batch_size=100, shards=4, seed=3)
    labels = [data[0].y[part] for part in rows]
    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        held = HeldAtEpochEnd(backend, labels)
        result = await _fit(backend, data, mode=mode, callbacks=[held], shuffle="shard")
        assert sum((await backend.kept()).values()) == 0  # all dropped after the fit
        dataset = data[0].X.nbytes + data[0].y.nbytes
        sent = backend.traffic.sent
    assert held.where == [{0: [0], 1: [1], 2: [0], 3: [1]}] * 2
    # Each row once, to one worker: less than one copy per worker would take on its own.
    assert dataset < sent < 2 * dataset
    reference = await _fit("inline", data, mode=mode, shuffle="shard")
    assert _bits(result.params) == _bits(reference.params)
    assert result.history[-1].val_loss == reference.history[-1].val_loss


def _read(view: Any, slot: int) -> float:
    return float(view.read(slot)["v"][0])


def test_a_worker_store_keeps_one_version_per_slot_and_reports_what_it_lacks() -> None:
    from asynctrain.backends._dask_shared import DaskShared, pack
    from asynctrain.backends._dask_worker import WorkerStore

    shared = DaskShared({"v": np.zeros(4)}, slots=2)
    store, known = WorkerStore(), set[str]()

    def run(fn: Any, *args: Any) -> Any:
        call, handles = pack(fn, args)
        envelope = store.execute([(call, [h.carried(known) for h in handles])])[0]
        for handle, written in zip(handles, envelope.writes, strict=False):
            handle.receive(written, known)  # none after a miss or an error
        return envelope

    assert run(_read, shared, 1).result == 0.0  # the first task carries the contents
    shared.write(0, {"v": np.full(4, 3.0)})
    assert run(_read, shared, 0).result == 3.0
    assert store.held() == {shared.token: 2 * 32}  # the new version and the first one
    shared.write(1, {"v": np.full(4, 4.0)})
    assert run(_read, shared, 1).result == 4.0
    assert store.held() == {shared.token: 2 * 32}  # the first contents were dropped
    store.forget([shared.token])
    missed = run(_read, shared, 1)  # the worker lost them: it names what it lacks
    assert missed.result is None
    assert [position for position, _ in missed.missed] == [0]
    known.clear()
    assert run(_read, shared, 1).result == 4.0
    error = run(_read, shared, 5)  # a user error keeps its type and the worker's traceback
    assert isinstance(error.error, IndexError)
    assert "raised on a Dask worker" in "".join(error.error.__notes__)


def test_content_ids_name_contents_and_a_read_only_array_is_hashed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Equal arrays get equal ids and any change (a byte in either half, a dtype, a name)
    a new one; a read-only array's digest is remembered while it lives, a writable
    array's never."""
    import hashlib

    from asynctrain.backends import _dask_shared as shared

    monkeypatch.setattr(shared, "HASH_SPLIT", 64)  # arrays of 64 bytes or more: in halves
    hashed: list[int] = []
    real = shared._sha256
    monkeypatch.setattr(shared, "_sha256", lambda data: hashed.append(len(data)) or real(data))
    x, y = np.arange(100, dtype=np.float64), np.arange(10)
    base = shared.content_id({"X": x, "y": y})
    assert shared.content_id({"X": x.copy(), "y": y.copy()}) == base
    for i in (0, 99):  # a byte in the first half, one in the helper thread's half
        changed = x.copy()
        changed[i] += 1
        assert shared.content_id({"X": changed, "y": y}) != base
    assert shared.content_id({"X": x.astype(np.float32), "y": y}) != base
    assert shared.content_id({"Z": x, "y": y}) != base
    raw = x.tobytes()  # the halves' digests, digested: hashlib is the oracle
    halves = hashlib.sha256(raw[:400]).digest() + hashlib.sha256(raw[400:]).digest()
    assert shared.array_digest(x) == hashlib.sha256(halves).digest()

    frozen = x.copy()
    frozen.flags.writeable = False
    hashed.clear()
    assert {shared.content_id({"X": frozen, "y": y}) for _ in range(3)} == {base}
    assert hashed == [800, 80, 80, 80]  # X once; the writable y every time
    y[0] = 7  # a writable array is hashed again: its change is seen
    assert shared.content_id({"X": frozen, "y": y}) != base
    key = id(frozen)
    del frozen
    gc.collect()
    assert key not in shared._digests  # nothing is kept for an array that died


@pytest.mark.parametrize("shuffle", ["global", "shard"])
async def test_a_second_fit_on_the_same_data_sends_no_rows(
    shuffle: str, data: tuple[Dataset, Dataset], dask_cluster: Any
) -> None:
    """The workers keep a fit's data (by content) for the next fit; the bits are those of
    a fresh backend's fit."""
    dataset = data[0].X.nbytes + data[0].y.nbytes
    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        first = await _fit(backend, data, shuffle=shuffle)
        sent = backend.traffic.sent
        later = await backend.kept(later=True)
        assert sum((await backend.kept()).values()) == 0  # no handle is open
        second = await _fit(backend, data, shuffle=shuffle)
        again = backend.traffic.sent - sent
    copies = 1 if shuffle == "shard" else 2  # partitions: each row on one worker
    validation = data[1].X.nbytes + data[1].y.nbytes  # evaluated on both workers
    assert copies * dataset <= sum(later.values()) <= copies * dataset + 2 * validation
    assert sent - again >= copies * dataset  # the second fit sent none of the rows
    assert _bits(second.params) == _bits(first.params)


async def test_kept_data_makes_room_least_recently_used_first(
    data: tuple[Dataset, Dataset], dask_cluster: Any
) -> None:
    """With room for one dataset, a fit on other data drops the first; keep_bytes=0
    keeps nothing."""
    other = synthetic("softmax", n=2400, seed=9).split(0.25, seed=0)
    size = data[0].X.nbytes + data[0].y.nbytes
    async with DaskBackend(dask_cluster.scheduler_address, keep_bytes=size) as backend:
        await _fit(backend, data)
        assert set((await backend.kept(later=True)).values()) == {size}  # not validation
        sent = backend.traffic.sent
        await _fit(backend, other)
        assert set((await backend.kept(later=True)).values()) == {size}
        await _fit(backend, data)  # dropped: sent again
        assert backend.traffic.sent - sent >= 2 * (size + size)
    async with DaskBackend(dask_cluster.scheduler_address, keep_bytes=0) as backend:
        await _fit(backend, data)
        assert sum((await backend.kept(later=True)).values()) == 0


class TwoArgError(Exception):
    """Pickles, but does not unpickle: ``__init__`` takes other arguments than it passes on."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def _raise_two_arg_error(a: int) -> None:
    raise TwoArgError(a, 2)


def _return_a_lock() -> Any:
    return threading.Lock()


async def test_an_error_or_result_that_cannot_travel_back_is_named_not_a_lost_worker(
    dask_cluster: Any,
) -> None:
    """Dask pickles a batch's reply after the store returns it: an exception that does not
    unpickle, or a result that does not pickle, failed the reply, which the backend took
    for the worker's death: the task re-ran on every worker, then "lost 4 workers"."""
    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        with pytest.raises(at.BackendError, match=r"TwoArgError\('1/2'\).*cannot be sent back"):
            await backend.run(_raise_two_arg_error, 1)
        with pytest.raises(at.BackendError, match="result cannot be pickled"):
            await backend.run(_return_a_lock)
        with pytest.raises(ZeroDivisionError):  # an ordinary error keeps its type
            await backend.run(divmod, 1, 0)
        assert backend.lost_workers == 0
        assert backend.traffic.calls == 3  # each ran once
        assert await backend.run(pow, 2, 3) == 8


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def test_closing_the_backend_under_a_running_call_is_a_state_error(
    dask_cluster: Any,
) -> None:
    """The call in flight hears LaneLost and looked for another lane on a backend with no
    client left: AttributeError ("'NoneType' object has no attribute ...")."""
    backend = DaskBackend(dask_cluster.scheduler_address)
    await backend.__aenter__()
    call = asyncio.create_task(backend.run(_sleep, 0.3))
    for _ in range(3000):  # the call is on its way to a worker
        if backend.traffic.calls:
            break
        await asyncio.sleep(0.01)
    await backend.aclose()
    with pytest.raises(at.StateError, match="closed while a call ran"):
        await asyncio.wait_for(call, 5)


async def test_a_function_the_workers_cannot_import_is_named_not_a_lost_worker(
    dask_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module only the caller has (not installed on the workers) failed the worker's
    read of the batch; that was taken for the worker's death, 4 times over, each costing
    a healthy worker its store and what it kept."""
    (tmp_path / "only_on_the_caller.py").write_text("def inc(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_the_caller  # type: ignore[import-not-found]

    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        stores = {lane.address: lane.actor for lane in backend._order}
        with pytest.raises(at.BackendError, match="only_on_the_caller") as raised:
            await backend.run(only_on_the_caller.inc, 1)
        assert isinstance(raised.value.__cause__, ModuleNotFoundError)
        assert backend.lost_workers == 0
        assert {lane.address: lane.actor for lane in backend._order} == stores
        assert await backend.run(pow, 2, 3) == 8


async def test_a_tls_address_without_tls_settings_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """distributed's own error was a bare TypeError ("TLS expects a `ssl_context`
    argument ... Instead got None"), naming neither the address nor security=. The
    client that failed to connect was left to its __del__ ("IOLoop is closed"); an
    unreachable scheduler's too."""
    from asynctrain.backends import _dask

    made: list[Any] = []

    def client(*args: Any, **kwargs: Any) -> Any:
        made.append(distributed.Client(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(_dask, "_Client", client)
    backend = DaskBackend("tls://127.0.0.1:1")
    with pytest.raises(at.ConfigError, match=r"security=distributed\.Security"):
        await backend.__aenter__()
    assert backend.state == "unopened"
    assert [each.status for each in made] == ["closed"]


async def test_a_client_not_started_yet_is_a_config_error(dask_cluster: Any) -> None:
    """A Client(asynchronous=True) not awaited has no scheduler yet: the backend failed
    with "'NoneType' object has no attribute 'ncores'"."""
    client = distributed.Client(
        dask_cluster.scheduler_address, asynchronous=True, set_as_default=False
    )
    backend = DaskBackend(client=client)
    with pytest.raises(at.ConfigError, match="await Client"):
        await backend.__aenter__()
    await client  # the backend neither started nor closed it
    await client.close()


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_scheduler_is_reported_within_connect_timeout() -> None:
    """Nothing listens at the address: distributed retried the connection until its own
    connect timeout, 30 s, before the backend said so."""
    address = f"tcp://127.0.0.1:{_closed_port()}"
    backend = DaskBackend(address, connect_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(at.BackendError, match=rf"{address}.*connect_timeout=1 seconds") as raised:
        await backend.__aenter__()
    assert time.monotonic() - began < 10
    assert isinstance(raised.value.__cause__, OSError)
    assert backend.state == "unopened"


async def test_connect_timeout_defaults_to_10_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """distributed's default is 30 s: the time an unreachable address took to report."""
    from asynctrain.backends import _dask

    made: list[dict[str, Any]] = []

    class Unreachable:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(kwargs)

        def __await__(self) -> Any:
            raise OSError("Timed out trying to connect")
            yield  # a generator: the error comes when the client is awaited

        async def close(self) -> None:
            pass

    monkeypatch.setattr(_dask, "_Client", Unreachable)
    with pytest.raises(at.BackendError, match="connect_timeout=10 seconds"):
        await DaskBackend("tcp://127.0.0.1:1").__aenter__()
    assert made[0]["timeout"] == 10.0


async def test_too_few_workers_at_open_is_reported_within_wait_for_workers(
    dask_cluster: Any,
) -> None:
    """workers=3 on a cluster of 2 waited at open for ever (distributed's wait has no
    deadline unless given one); now it fails after wait_for_workers seconds, naming how
    many it wanted and how many the scheduler has."""
    found = len(dask_cluster.scheduler_info["workers"])
    backend = DaskBackend(dask_cluster.scheduler_address, workers=found + 1, wait_for_workers=0.5)
    began = time.monotonic()
    with pytest.raises(
        at.BackendError,
        match=rf"wanted {found + 1} Dask workers.* found {found}.*wait_for_workers=0\.5 ",
    ):
        await asyncio.wait_for(backend.__aenter__(), 20)
    assert time.monotonic() - began < 10
    assert backend.state == "unopened"
    # Enough workers: it opens, even with no time to wait.
    async with DaskBackend(
        dask_cluster.scheduler_address, workers=found, wait_for_workers=0
    ) as backend:
        assert backend.workers == found


def _total(view: Any) -> float:
    return float(view.read(0)["x"].sum())


def _on(loop: asyncio.AbstractEventLoop, opener: str, coro: Any) -> Any:
    """Run ``coro`` on the first loop of :func:`used_then_another_loop`."""
    if opener == "running":
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)
    return loop.run_until_complete(coro)


def _scheduler_keys(cluster: Any) -> set[str]:
    """The keys of the shared cluster's scheduler, read on its own loop."""

    async def keys() -> set[str]:
        return {str(key) for key in cluster.scheduler.tasks}

    return set(cluster.sync(keys))


@pytest.mark.parametrize("new_loop", list(LOOPS.values()), ids=list(LOOPS))
@pytest.mark.parametrize("opener", OPENERS)
def test_release_and_aclose_on_another_loop_go_through_the_opening_one(
    new_loop: Any, opener: str, dask_cluster: Any
) -> None:
    """The client, its connections and its futures belong to the loop that opened the
    backend: release() from a second loop waited for ever for a worker's answer, and
    aclose() failed ("object NoneType can't be used in 'await' expression", "IOLoop is
    closed") or waited for ever, leaving the stores on the cluster. Now both run on the
    opening loop, or, once it is closed, drop the client's connections (the scheduler
    then drops the stores)."""
    backend = DaskBackend(dask_cluster.scheduler_address)

    async def use() -> tuple[Any, set[str]]:
        shared = await backend.share({"x": np.ones(100_000)})
        assert await backend.run(_total, shared) == 100_000.0
        assert sum((await backend.kept()).values()) == 800_000
        return shared, {str(future.key) for future in backend._actors.values()}

    with used_then_another_loop(new_loop, opener, use) as ((shared, stores), first, second):
        assert stores <= _scheduler_keys(dask_cluster)
        with pytest.raises(at.StateError, match="belongs to the event loop that opened it"):
            second.run_until_complete(asyncio.wait_for(backend.run(_total, shared), 20))
        second.run_until_complete(asyncio.wait_for(backend.release(shared), 20))
        assert "released" in repr(shared)  # refused by later tasks, whichever loop
        if opener != "closed":  # the workers were told, on the opening loop
            assert sum(_on(first, opener, backend.kept()).values()) == 0
        second.run_until_complete(asyncio.wait_for(backend.aclose(), 20))
        assert backend.state == "closed"
    deadline = time.monotonic() + 20  # the scheduler drops a client gone on its next turn
    while stores & _scheduler_keys(dask_cluster) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stores & _scheduler_keys(dask_cluster)


@pytest.mark.parametrize("new_loop", list(LOOPS.values()), ids=list(LOOPS))
def test_aclose_after_the_opening_loop_closed_stops_the_local_workers(new_loop: Any) -> None:
    """The LocalCluster the backend started lived on a loop now closed: its nannies cannot
    stop their workers, which were left running (and aclose raised "IOLoop is closed")."""
    backend = DaskBackend(workers=1)

    async def use() -> list[int]:
        assert await backend.run(pow, 2, 3) == 8
        return list((await backend.client.run(os.getpid)).values())

    with used_then_another_loop(new_loop, "closed", use) as (pids, _, second):
        assert pids
        second.run_until_complete(asyncio.wait_for(backend.aclose(), 20))
    assert backend.state == "closed"
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


async def test_a_handle_released_after_its_content_was_evicted_is_dropped_by_its_worker(
    data: tuple[Dataset, Dataset], dask_cluster: Any
) -> None:
    """Releasing a partition made room for it by evicting a partition still in use, whose
    id the owner then forgot for its worker; that handle's release found nothing of its
    own named on that worker (its contents are named by content, not by handle) and told
    it nothing: the worker held the partition for good, one more per fit."""
    rows = len(data[0]) // 4  # one partition per shard: the rows a shard reads an epoch
    partition = rows * (data[0].X.shape[1] * data[0].X.itemsize + data[0].y.itemsize)
    keep = 3 * partition + partition // 2  # room for 3 of the 4 partitions
    async with DaskBackend(dask_cluster.scheduler_address, keep_bytes=keep) as backend:
        trainer = at.Trainer(
            SoftmaxRegression(128, 10), backend=backend, batch_size=100, shards=4, shuffle="shard"
        )
        async with trainer:
            for _ in range(3):
                await trainer.fit(data[0], epochs=1)
                assert sum((await backend.kept()).values()) == 0  # no handle is open


async def test_cancelling_the_open_of_its_own_cluster_leaves_no_worker_running() -> None:
    """The LocalCluster was only the backend's once started: cancelled while it started
    its workers (a fit cancelled early on a backend opened on first use), nothing closed
    it and its worker processes ran on, one more cluster per cancel."""
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    backend = DaskBackend(workers=1)
    opening = asyncio.ensure_future(backend.__aenter__())
    started: set[int] = set()
    for _ in range(3000):  # until its worker process runs (30 s at most)
        started = {child.pid for child in me.children(recursive=True)} - before
        if started or opening.done():
            break
        await asyncio.sleep(0.01)
    assert started, "no worker process started"
    assert not opening.done()
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert backend.state == "unopened"
    assert not [pid for pid in started if psutil.pid_exists(pid)]


SIZES = {"1KB": 1 << 10, "1MB": 1 << 20, "64MB": 64 << 20}


def _made(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def _checksum(view: Any, slot: int) -> int:
    return int(view.read(slot)["v"].sum(dtype=np.uint64))


def _write_made(view: Any, slot: int, size: int, seed: int) -> None:
    view.write(slot, {"v": _made(size, seed)})


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
async def test_shards_of_every_size_cross_both_ways(size: int, dask_cluster: Any) -> None:
    """A shard's data reaches every worker whole, a slot a task writes (a gradient) comes
    back whole, and reaches a task on the other worker whole; checksums made here."""
    sent, written = _made(size, 1), _made(size, 2)
    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        shared = await backend.share({"v": sent}, slots=2)
        sums = await asyncio.gather(*(backend.run(_checksum, shared, 0) for _ in range(2)))
        assert len({lane.address for lane in backend._order if lane.sent}) == 2
        await backend.run(_write_made, shared, 1, size, 2)
        np.testing.assert_array_equal(shared.read(1)["v"], written)
        again = await asyncio.gather(*(backend.run(_checksum, shared, 1) for _ in range(2)))
        await backend.release(shared)
    assert set(sums) == {int(sent.sum(dtype=np.uint64))}
    assert set(again) == {int(written.sum(dtype=np.uint64))}
