"""DaskBackend follows its cluster mid-fit and keeps its bits: resize, workers killed,
workers that never come back.

Each test starts its own cluster (these change its size); the reference is the inline
backend, so "bit-identical" means bit-identical to a fixed-size run on any backend.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import asynctrain as at
from asynctrain.data import Dataset, synthetic
from asynctrain.models import SoftmaxRegression

distributed = pytest.importorskip("distributed")

from asynctrain.backends import DaskBackend  # noqa: E402

pytestmark = pytest.mark.dask


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic("softmax", n=1600, seed=2)


async def _fit(
    backend: str | at.backends.Backend,
    data: Dataset,
    callbacks: list[Any] | None = None,
    shuffle: str = "global",
) -> at.FitResult:
    trainer = at.Trainer(
        SoftmaxRegression(128, 10),
        at.optim.adam(1e-2),
        backend=backend,
        batch_size=100,
        shards=4,
        seed=5,
        shuffle=shuffle,
    )
    async with trainer:
        return await trainer.fit(data, epochs=1, callbacks=callbacks or [])


def _same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def _one_worker_cluster() -> Any:
    """A cluster of its own (one worker process, loopback only), for a test that resizes it."""
    return distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        asynchronous=True,
    )


async def _until(ready: Any, pause: float = 0.01) -> None:
    """Return once ``ready()`` is true: a state the backend reaches on this loop (30 s at
    most)."""
    for _ in range(int(30 / max(pause, 0.001))):
        if ready():
            return
        await asyncio.sleep(pause)
    raise AssertionError(f"not ready within 30 s: {ready}")


async def _pids(backend: DaskBackend) -> set[int]:
    return set((await backend.client.run(os.getpid)).values())


class AtStep(at.Callback):
    """Awaits ``action(step)`` after the steps listed in ``plan``."""

    def __init__(self, plan: dict[int, Any]) -> None:
        self.plan = plan
        self.seen: dict[int, Any] = {}

    async def on_step(self, event: at.StepEvent) -> None:
        if event.step in self.plan:
            self.seen[event.step] = await self.plan[event.step]()


@pytest.mark.slow  # a cluster of its own, changing size
@pytest.mark.parametrize("shuffle", ["global", "shard"])
async def test_resize_2_1_3_mid_fit_is_bit_identical(shuffle: str, data: Dataset) -> None:
    """With shuffle="shard" a partition follows its shard to its new worker."""
    reference = await _fit("inline", data, shuffle=shuffle)
    async with DaskBackend(workers=2) as backend:

        def to(n: int) -> Any:
            async def resize() -> tuple[int, int]:
                await backend.resize(n)
                return backend.workers, len(await _pids(backend))

            return resize

        sizes = AtStep({3: to(1), 9: to(3)})
        result = await _fit(backend, data, [sizes], shuffle=shuffle)
        assert sizes.seen == {3: (1, 1), 9: (3, 3)}  # the pool really was that size
        used = {lane.address: lane.sent for lane in backend._order}
    assert len(used) == 3
    assert all(sent > 0 for sent in used.values())
    assert _same_bits(result.params, reference.params)


@pytest.mark.slow  # a cluster of its own, changing size
async def test_every_worker_killed_then_new_ones_join(data: Dataset) -> None:
    reference = await _fit("inline", data)
    async with DaskBackend(workers=2, wait_for_workers=60) as backend:
        before = await _pids(backend)

        async def kill_all() -> None:
            for pid in before:
                os.kill(pid, signal.SIGKILL)  # the nannies start new workers

        result = await _fit(backend, data, [AtStep({4: kill_all})])
        # The fit needs one new worker; on a loaded machine the second may join later.
        await backend.client.wait_for_workers(2, timeout=60)
        after = await _pids(backend)
    assert before.isdisjoint(after)
    assert len(after) == 2
    assert backend.lost_workers >= 2
    assert _same_bits(result.params, reference.params)


async def test_no_worker_joins_within_the_wait_is_a_clear_error(data: Dataset) -> None:
    async with (
        _one_worker_cluster() as cluster,
        DaskBackend(cluster.scheduler_address, wait_for_workers=1.5) as backend,
    ):

        async def leave() -> None:
            cluster.scale(0)
            await cluster

        began = time.monotonic()
        with pytest.raises(at.BackendError, match=r"wait_for_workers=1\.5 seconds"):
            await _fit(backend, data, [AtStep({2: leave})])
        assert time.monotonic() - began >= 1.5
        assert backend.workers == 0


async def test_a_worker_that_joins_takes_shards_from_the_next_step(data: Dataset) -> None:
    reference = await _fit("inline", data)
    async with (
        _one_worker_cluster() as cluster,
        DaskBackend(cluster.scheduler_address) as backend,
    ):

        async def grow() -> None:
            cluster.scale(2)
            await cluster
            await backend.client.wait_for_workers(2)
            await _until(lambda: backend.workers == 2)  # its store placed as it joined

        result = await _fit(backend, data, [AtStep({2: grow})])
        assert backend.workers == 2
        assert all(lane.sent > 0 for lane in backend._order)
    assert _same_bits(result.params, reference.params)


async def test_resize_refuses_a_cluster_it_did_not_start(dask_cluster: Any) -> None:
    async with DaskBackend(dask_cluster.scheduler_address) as backend:
        with pytest.raises(at.ConfigError, match="follows it"):
            await backend.resize(3)
        with pytest.raises(at.ConfigError):
            await backend.resize(0)


@pytest.mark.slow  # a cluster of its own, changing size
async def test_adaptive_scales_with_the_tasks_in_flight(data: Dataset) -> None:
    reference = await _fit("inline", data)
    async with DaskBackend(adaptive=(1, 2)) as backend:
        assert backend.workers == 1
        with pytest.raises(at.ConfigError, match="adapts"):
            await backend.resize(2)
        result = await _fit(backend, data)
    assert _same_bits(result.params, reference.params)


async def test_concurrent_resizes_take_effect_one_after_another() -> None:
    """A resize to 1 made while one to 2 waited for its new worker scaled the cluster back
    under it: the first waited for a second worker for ever."""
    async with DaskBackend(workers=1) as backend:
        await asyncio.wait_for(asyncio.gather(backend.resize(2), backend.resize(1)), 60)
        assert backend.workers == 1
        assert len(await _pids(backend)) == 1


async def test_a_call_cancelled_while_the_backend_met_a_new_worker_leaves_it_to_the_next() -> None:
    """A call cancelled (its fit was) while it gave a worker that had joined its store left
    the backend believing it knew the cluster: that worker never took a shard."""
    async with (
        _one_worker_cluster() as cluster,
        DaskBackend(cluster.scheduler_address) as backend,
    ):
        cluster.scale(2)
        await cluster
        await backend.client.wait_for_workers(2)
        await _until(lambda: backend._stale)  # the scheduler's add-worker event arrived
        call = asyncio.create_task(backend.run(pow, 2, 3))
        await _until(backend._sync_lock.locked, pause=0)  # it is meeting the new worker
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await backend.run(pow, 2, 3) == 8
        await _until(lambda: backend.workers == 2)  # its store is placed apart from calls
        assert len(backend.client.futures) == 2  # one store per worker, none left over


async def test_a_worker_that_dies_while_it_gets_its_store_stalls_nothing() -> None:
    """A worker removed while its store was being placed (here: it was busy with another
    client's task, then died) never answered, and every call waited for STORE_TIMEOUT
    (10 s) while the backend waited for that store; its placement is dropped."""
    from asynctrain.backends._dask import STORE_TIMEOUT

    async with (
        _one_worker_cluster() as cluster,
        DaskBackend(cluster.scheduler_address) as backend,
    ):
        new, busy = await _joins_busy(cluster, backend, time.sleep, 60)
        pid = (await backend.client.run(os.getpid, workers=[new]))[new]
        began = time.monotonic()
        call = asyncio.create_task(backend.run(pow, 2, 3))
        await _until(lambda: backend._placements)  # the new worker's store is on its way
        os.kill(pid, signal.SIGKILL)
        assert await call == 8
        assert time.monotonic() - began < STORE_TIMEOUT / 2
        await _until(lambda: not backend._placements)  # the scheduler removed it
        assert backend.workers == 1
        busy.release()


class _HeldReports:
    """The scheduler's reports to ``backend`` (workers joining, leaving), held back until
    :meth:`deliver`: the moments before they arrive, made as long as a test needs."""

    def __init__(self, backend: DaskBackend) -> None:
        self.backend = backend
        self.held: list[dict[str, Any]] = []
        backend._on_event = self.held.append  # type: ignore[method-assign,assignment]

    def about(self, action: str, worker: str) -> bool:
        return any(r.get("action") == action and r.get("worker") == worker for r in self.held)

    def deliver(self) -> None:
        del self.backend._on_event  # the class's handler again
        for report in self.held:
            self.backend._on_event(report)


async def _joins_busy(cluster: Any, backend: DaskBackend, task: Any, *args: Any) -> tuple[str, Any]:
    """A second worker joins, busy with ``task(*args)`` when the backend hears of it;
    its address and the task's future."""
    reports = _HeldReports(backend)
    cluster.scale(2)
    await cluster
    await backend.client.wait_for_workers(2)
    (new,) = [a for a in backend.client.scheduler_info()["workers"] if a not in backend._lanes]
    busy = backend.client.submit(task, *args, workers=[new], pure=False)
    for _ in range(1000):  # the worker runs that task
        if (await backend.client.processing()).get(new):
            break
        await asyncio.sleep(0.02)
    await _until(lambda: reports.about("add-worker", new))
    reports.deliver()
    return new, busy


def _busy_until(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.02)


async def test_a_worker_busy_when_it_joins_stalls_nothing_and_takes_calls_once_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker busy with another task when it joined places its store after that task:
    every call waited up to STORE_TIMEOUT (10 s; 60 here) for it, and one still busy
    then was left out until the cluster changed again."""
    from asynctrain.backends import _dask

    monkeypatch.setattr(_dask, "STORE_TIMEOUT", 60.0)
    free = tmp_path / "free"
    async with (
        _one_worker_cluster() as cluster,
        DaskBackend(cluster.scheduler_address) as backend,
    ):
        try:
            new, busy = await _joins_busy(cluster, backend, _busy_until, str(free))
            assert await asyncio.wait_for(backend.run(pow, 2, 3), 10) == 8
            assert new not in backend._lanes
            assert new in backend._placements  # its store waits for the busy task
        finally:
            free.touch()
        await busy
        await _until(lambda: new in backend._lanes)  # placed once the worker was free
        await asyncio.gather(*(backend.run(pow, 2, i) for i in range(4)))
        assert backend._lanes[new].sent > 0
        assert backend.workers == 2
        busy.release()


def _signal_calls(owner: Any, name: str) -> asyncio.Event:
    """An event set when ``owner.name(...)`` is called; the call itself goes on as before."""
    called = asyncio.Event()
    method = getattr(owner, name)

    def signalling(*args: Any, **kwargs: Any) -> Any:
        called.set()
        return method(*args, **kwargs)

    setattr(owner, name, signalling)
    return called


@pytest.mark.parametrize(
    ("owner", "method"),
    [("_cluster", "scale"), ("_client", "wait_for_workers"), ("_client", "nthreads")],
    ids=["while-the-cluster-scales", "while-it-waits-for-the-worker", "while-it-meets-it"],
)
async def test_closing_the_backend_while_it_resizes_is_a_state_error(
    owner: str, method: str
) -> None:
    """aclose does not wait for a resize: the resize went on with the client and cluster
    the close had dropped, and failed with "AttributeError: 'NoneType' object has no
    attribute 'wait_for_workers'" (or 'nthreads')."""
    backend = DaskBackend(workers=1)
    await backend.__aenter__()
    reached = _signal_calls(getattr(backend, owner), method)
    resize = asyncio.create_task(backend.resize(2))
    await asyncio.wait_for(reached.wait(), 30)  # the resize waits just past that call
    await backend.aclose()
    with pytest.raises(at.StateError, match="closed while it resized"):
        await asyncio.wait_for(resize, 30)
    assert backend.state == "closed"


def _first(shared: Any) -> float:
    return float(shared.read(0)["v"][0])


async def test_a_worker_dead_before_it_was_asked_stalls_neither_kept_nor_release() -> None:
    """kept() and the release of shared data (a fit's end) ask each worker holding some;
    a worker that had died was asked on a new connection, which distributed retries
    until its connect timeout: kept() took 30 s, then raised OSError, and the release
    took 30 s, though the scheduler had reported the worker gone meanwhile."""
    async with DaskBackend(workers=2) as backend:
        shared = await backend.share({"v": np.ones(1000)})
        both = await asyncio.gather(backend.run(_first, shared), backend.run(_first, shared))
        assert both == [1.0, 1.0]
        assert len(await backend.kept()) == 2  # each worker holds the array
        victim = backend._order[0].address
        pid = (await backend.client.run(os.getpid, workers=[victim]))[victim]
        reports = _HeldReports(backend)
        os.kill(pid, signal.SIGKILL)
        await _until(lambda: reports.about("remove-worker", victim))
        backend.client.rpc.remove(victim)  # its connection closed: asking it connects anew
        began = time.monotonic()
        asking = asyncio.gather(backend.kept(), backend.release(shared))
        await asyncio.sleep(0.5)  # both try to reach the dead worker
        reports.deliver()  # the scheduler's report that it is gone arrives
        kept, _ = await asyncio.wait_for(asking, 20)
        assert time.monotonic() - began < 10
        assert victim not in kept
        assert victim not in backend._lanes
