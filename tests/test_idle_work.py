"""Process workers gather the next step's rows once they have replied: the same bits,
nothing carried from one fit to another, nothing lost when a worker dies in that gap.

The pieces: ``backends._idle`` (work a task defers until its reply is sent; only process
workers run it), ``_engine._work.KeptRows`` (the rows a worker keeps for its next task)
and the process pool sending a shard's task to the worker that ran the shard last. The
oracle for the fits is the same fit without it (``_sync._ahead`` switched off, every task
gathering its own rows) and the inline backend, compared bit for bit; each fit also
counts, on its one worker, the tasks that took kept rows, so a change that quietly stops
keeping them fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from _reliability import state_bits

import asynctrain as at
from asynctrain._engine import _sync
from asynctrain._engine._work import Gathered, KeptRows, ShardGroup, ShardTask
from asynctrain.backends import LocalShared, ProcessBackend
from asynctrain.backends._idle import defer, run_deferred, serve
from asynctrain.data import Dataset, synthetic
from asynctrain.models import SoftmaxRegression

# -- functions the workers run ------------------------------------------------------------


def _write_when_told(path: str, fifo: str) -> None:
    Path(fifo).read_text()  # blocks until the test writes to it
    Path(path).write_text("done")


def defer_a_note(path: str, fifo: str) -> int:
    """Defer writing ``path`` until the test writes to ``fifo``; reply at once with this
    worker's pid."""
    assert defer(lambda: _write_when_told(path, fifo))
    return os.getpid()


def read_note(path: str) -> tuple[int, str]:
    return os.getpid(), Path(path).read_text()


def defer_an_exit() -> int:
    """Reply, then exit in the deferred work (a worker dying in its idle time)."""
    assert defer(lambda: os._exit(3))
    return os.getpid()


def defer_a_failure(path: str) -> int:
    """Defer work that raises, then work that runs anyway."""
    defer(lambda: 1 / 0)
    defer(lambda: Path(path).write_text("after"))
    return os.getpid()


def kept_rows_taken() -> int:
    """Tasks of this worker that took rows it had gathered after a reply."""
    from asynctrain._engine import _work

    return _work._kept.taken


# -- the idle work itself -------------------------------------------------------------------


def test_deferred_work_runs_in_order_and_its_errors_are_dropped() -> None:
    ran: list[object] = []

    def worker() -> None:
        serve()
        assert defer(lambda: ran.append(1))
        assert defer(lambda: 1 / 0)
        assert defer(lambda: ran.append(2))
        run_deferred()
        run_deferred()  # nothing runs twice

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert ran == [1, 2]


async def test_no_work_is_deferred_where_no_worker_runs_it() -> None:
    assert defer(lambda: None) is False  # the loop's thread
    async with at.backends.ThreadBackend(workers=1) as backend:
        assert await backend.run(defer, lambda: None) is False
    async with at.backends.InlineBackend() as backend:
        assert await backend.run(defer, lambda: None) is False


async def test_deferred_work_runs_after_the_reply_and_before_the_next_task(
    tmp_path: Path,
) -> None:
    note, fifo = tmp_path / "note", tmp_path / "go.fifo"
    os.mkfifo(fifo)
    async with ProcessBackend(workers=1) as backend:
        pid = await backend.run(defer_a_note, str(note), str(fifo))
        assert not note.exists()  # the reply came before the work, which waits for us
        reading = asyncio.create_task(backend.run(read_note, str(note)))  # waits for it too
        await asyncio.to_thread(fifo.write_text, "go")
        assert await reading == (pid, "done")


async def test_a_deferred_error_is_dropped_and_the_work_after_it_runs(tmp_path: Path) -> None:
    note = tmp_path / "note"
    async with ProcessBackend(workers=1) as backend:
        pid = await backend.run(defer_a_failure, str(note))
        assert await backend.run(read_note, str(note)) == (pid, "after")
        assert backend.pids == [pid]


async def test_a_worker_dying_in_its_deferred_work_loses_no_task() -> None:
    async with ProcessBackend(workers=1) as backend:
        first = await backend.run(defer_an_exit)
        second = await backend.run(os.getpid)  # the dead worker's task is re-run elsewhere
        assert second != first
        assert backend.pids == [second]


# -- the rows kept --------------------------------------------------------------------------


class _Handle(LocalShared):
    """Shared arrays with a key, as a process worker's handles have."""

    __slots__ = ("key",)

    def __init__(self, key: str, arrays: dict[str, Any]) -> None:
        super().__init__(arrays)
        self.key = key


def _group(rows: list[np.ndarray], ahead: list[np.ndarray] | None = None) -> ShardGroup:
    tasks = tuple(ShardTask(0, s, 0, 0, s, r) for s, r in enumerate(rows))
    return ShardGroup(0, 0, tasks, None if ahead is None else tuple(ahead))


def _kept(data: _Handle, params: _Handle, rows: list[np.ndarray]) -> KeptRows:
    kept = KeptRows()
    kept.gather(data, params, _group([np.arange(0)] * len(rows), rows))
    return kept


def _took(tasks: tuple[ShardTask, ...]) -> list[bool]:
    return [isinstance(task.indices, Gathered) for task in tasks]


def test_kept_rows_are_taken_by_the_same_fit_for_the_same_rows_only() -> None:
    X = np.arange(20.0).reshape(10, 2)
    data = _Handle("data", {"X": X, "y": np.arange(10)})
    params, other = _Handle("params", {}), _Handle("other fit", {})
    rows = [np.array([3, 1]), np.array([7, 0])]
    tasks = _group(rows).tasks

    taken = _kept(data, params, rows).claim(data, params, tasks)
    assert _took(taken) == [True, True]
    assert np.array_equal(taken[1].indices.X, X[[7, 0]])
    assert np.array_equal(taken[1].indices.y, [7, 0])

    assert _took(_kept(data, params, rows).claim(data, other, tasks)) == [False, False]
    copy = _Handle("other data", data.read())
    assert _took(_kept(copy, params, rows).claim(data, params, tasks)) == [False, False]
    kept = _kept(data, params, rows)
    changed = _group([rows[0], np.array([7, 1])]).tasks  # one shard's rows differ
    assert _took(kept.claim(data, params, changed)) == [True, False]
    assert _took(kept.claim(data, params, tasks)) == [False, False]  # the rest was dropped
    slot_one = tuple(task._replace(data_slot=1) for task in tasks)
    assert _took(_kept(data, params, rows).claim(data, params, slot_one)) == [False, False]
    ranges = tuple(task._replace(indices=range(2)) for task in tasks)
    assert _took(_kept(data, params, rows).claim(data, params, ranges)) == [False, False]
    assert _took(KeptRows().claim(data, params, tasks)) == [False, False]


def test_rows_are_kept_only_for_handles_with_keys() -> None:
    data = LocalShared({"X": np.zeros((4, 1)), "y": np.zeros(4)})
    kept = KeptRows()
    kept.gather(data, data, _group([np.arange(0)], [np.array([1, 2])]))
    assert _took(kept.claim(data, data, _group([np.array([1, 2])]).tasks)) == [False]


# -- fits -----------------------------------------------------------------------------------


def _data(kind: str) -> Dataset:
    data = synthetic("softmax", n=530, seed=3)  # not a multiple of the batches below
    X: Any = data.X
    weights = None
    if kind == "csr":
        sparse = pytest.importorskip("scipy.sparse")
        keep = np.random.default_rng(5).random(X.shape) < 0.1
        keep[::7] = False  # empty rows
        X = sparse.csr_array(np.where(keep, X, 0.0))
    if kind == "weighted":
        weights = np.random.default_rng(4).uniform(0.0, 3.0, len(data)).astype(np.float32)
    return Dataset(X, data.y, sample_weight=weights)


async def _fit(backend: Any, data: Dataset, shards: int, batch: int, epochs: int = 2) -> Any:
    async with at.Trainer(
        SoftmaxRegression(128, 10),
        at.optim.adam(0.01),
        backend=backend,
        shards=shards,
        batch_size=batch,
        seed=7,
    ) as trainer:
        await trainer.fit(data, epochs=epochs)
        return state_bits(trainer.state)


def _off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sync, "_ahead", lambda *args: None)


@pytest.mark.parametrize("kind", ["dense", "csr", "weighted"])
# 530 rows in batches of 17: the last has 3 rows, so one of its 4 shards is empty.
@pytest.mark.parametrize(("shards", "batch"), [(1, 64), (2, 50), (4, 17)])
async def test_rows_kept_by_one_worker_give_the_bits_of_gathering_per_task(
    monkeypatch: pytest.MonkeyPatch, kind: str, shards: int, batch: int
) -> None:
    data = _data(kind)
    steps = -(-len(data) // batch)
    last = len(data) - (steps - 1) * batch  # rows of the last batch
    async with ProcessBackend(workers=1) as backend:
        before = await backend.run(kept_rows_taken)
        kept = await _fit(backend, data, shards, batch)
        taken = await backend.run(kept_rows_taken) - before
        with monkeypatch.context() as patch:
            _off(patch)
            own = await _fit(backend, data, shards, batch)
            assert await backend.run(kept_rows_taken) - before == taken
    assert kept == own == await _fit("inline", data, shards, batch)
    # One worker: every step but an epoch's first took its rows, each of its shards.
    per_epoch = (steps - 2) * shards + min(shards, last)
    assert taken == 2 * per_epoch


@pytest.mark.parametrize("kind", ["dense", "csr"])
async def test_rows_kept_by_two_workers_give_the_bits_of_gathering_per_task(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    data = _data(kind)
    async with ProcessBackend(workers=2) as backend:
        kept = await _fit(backend, data, 2, 64)
        with monkeypatch.context() as patch:
            _off(patch)
            own = await _fit(backend, data, 2, 64)
    assert kept == own == await _fit("inline", data, 2, 64)


@pytest.mark.parametrize("stop_at", [0, 3, 7])
async def test_a_fit_stopped_mid_epoch_leaves_nothing_to_the_next_fit(stop_at: int) -> None:
    """The stopped fit's last task left its worker the next step's rows; the next fit, on
    the same data with the same seed, gets the bits of the inline backend. (Its first task
    asks for other rows, so this checks that a stop leaves the worker serving, not the fit
    key: ``test_kept_rows_are_taken_by_the_same_fit_for_the_same_rows_only`` does that.)"""
    data = _data("csr")
    reference = await _fit("inline", data, 2, 64, epochs=1)
    async with ProcessBackend(workers=1) as backend:
        trainer = at.Trainer(
            SoftmaxRegression(128, 10),
            at.optim.adam(0.01),
            backend=backend,
            shards=2,
            batch_size=64,
            seed=7,
        )
        async with trainer, contextlib.aclosing(trainer.steps(data, epochs=1)) as events:
            async for event in events:
                if event.kind == "step" and event.step == stop_at:
                    break  # the steps' generator is closed mid-epoch
        again = await _fit(backend, data, 2, 64, epochs=1)
    assert again == reference


async def test_two_fits_at_once_on_one_worker_each_get_their_own_bits() -> None:
    """Their tasks take turns on the one worker, each leaving it the next rows of its own
    fit: a task that finds the other fit's rows there takes none and gathers its own."""
    dense, csr = _data("dense"), _data("csr")
    async with ProcessBackend(workers=1) as backend:
        both = await asyncio.gather(_fit(backend, dense, 2, 64), _fit(backend, csr, 2, 64))
    assert list(both) == [await _fit("inline", dense, 2, 64), await _fit("inline", csr, 2, 64)]


# -- the pool's shard affinity --------------------------------------------------------------


class Tagged(NamedTuple):
    """An argument naming the step and shard its task computes, as shard tasks do."""

    step: int
    shard: int


def pid_for(tag: Tagged) -> int:
    return os.getpid()


async def test_a_shard_goes_back_to_the_worker_that_ran_it() -> None:
    async with ProcessBackend(workers=2) as backend:
        await backend.resize(2)
        seen: dict[int, set[int]] = {0: set(), 1: set()}
        for round_ in range(8):  # submitted in turns: last in, first out would swap them
            order = [1, 0] if round_ % 2 else [0, 1]
            pids = await asyncio.gather(*(backend.run(pid_for, Tagged(round_, s)) for s in order))
            for shard, pid in zip(order, pids, strict=True):
                seen[shard].add(pid)
        assert [len(pids) for pids in seen.values()] == [1, 1]
        assert seen[0] != seen[1]


async def test_a_shard_whose_worker_is_busy_goes_to_another(tmp_path: Path) -> None:
    from test_process_pool import pid_when_told

    fifo = tmp_path / "go.fifo"
    os.mkfifo(fifo)
    async with ProcessBackend(workers=2) as backend:
        await backend.resize(2)
        ran = await backend.run(pid_for, Tagged(0, 0))
        busy = asyncio.create_task(backend.run(pid_when_told, str(fifo)))  # takes `ran`
        await asyncio.sleep(0.05)
        other = await backend.run(pid_for, Tagged(0, 0))  # not kept waiting for `ran`
        await asyncio.to_thread(fifo.write_text, "go")
        assert await busy == ran
        assert other != ran
