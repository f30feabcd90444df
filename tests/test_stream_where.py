"""Where a stream's batches are checked (``_streaming/_where.py``) and what the feed does to
save work: batches checked on the event loop (between steps while the steps compute
there), assembled batches written again once their step is done. The oracle for the
bits: the same rows fitted in memory on the inline backend."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from _sources import agen as _agen
from _sources import pieces as _pieces

import asynctrain as at
from asynctrain._engine import _step
from asynctrain._engine._step import LOOP_BUDGET, Placement
from asynctrain._engine._sync import Sync
from asynctrain._streaming import _feed
from asynctrain._streaming._batch import rows_of
from asynctrain._streaming._sources import OffLoop
from asynctrain._streaming._stream import DEFAULT_BUFFER
from asynctrain._streaming._where import CheckSite
from asynctrain.data import Dataset
from asynctrain.data._stream import SPARE, BatchAssembler
from asynctrain.models import SoftmaxRegression

BATCH, PIECE, ROWS = 64, 100, 3000


# -- the rule ----------------------------------------------------------------------------


def _placement(tasks: int) -> Placement:
    placement = Placement()
    placement.record(tasks, 4, 1e-4, math=1e-5)
    return placement


def test_placement_says_whether_its_last_step_ran_on_the_loop() -> None:
    placement = Placement()
    assert not placement.on_loop  # no step yet
    placement.record(0, 4, 1e-4)
    assert placement.on_loop
    placement.record(1, 4, 1e-4, math=1e-5)
    assert not placement.on_loop
    placement.record(2, 4, 1e-4)
    assert not placement.on_loop


def test_a_batch_is_checked_on_the_loop_once_steps_run_and_within_budget() -> None:
    site = CheckSite()
    site.record(1000, 100e-6)  # 0.1 us a row
    assert not site.here(1000)  # no placement followed: the fit's context is not open yet
    site.follow(Placement())
    assert site.here(1000)
    assert site.between_steps  # no step yet: the first may compute on the loop
    site.follow(_placement(1))
    assert site.here(1000)  # steps on a worker: checked on the idle loop meanwhile
    assert not site.between_steps
    site.follow(_placement(0))
    assert site.here(1000)
    assert site.between_steps  # steps on the loop: checked between two of them
    assert site.here(int(LOOP_BUDGET / 100e-9))  # exactly the budget
    assert not site.here(int(LOOP_BUDGET / 100e-9) + 10)  # over it
    assert not site.here(None)  # rows not known: the check says what the item is
    assert not site.here(0)


def test_nothing_is_checked_on_the_loop_before_a_check_was_timed() -> None:
    site = CheckSite()
    site.follow(_placement(0))
    assert not site.here(1)
    site.record(None, 1.0)  # rows unknown: nothing learned
    assert not site.here(1)


def test_the_cost_a_row_is_the_median_of_recent_checks() -> None:
    site = CheckSite()
    site.follow(_placement(0))
    for seconds in (1e-3, 1e-3, 1.0):  # one slow outlier (a page fault, a preemption)
        site.record(10, seconds)
    assert site.here(int(LOOP_BUDGET / 1e-4))  # 1e-4 s a row, the median
    assert not site.here(int(LOOP_BUDGET / 1e-4) + 1)


def test_rows_of_an_item_known_without_reading_it() -> None:
    X = np.zeros((7, 3), np.float32)
    assert rows_of((X, np.zeros(7))) == 7
    assert rows_of((X, np.zeros(7), np.ones(7))) == 7
    assert rows_of(Dataset(X, np.zeros(7, np.int64))) == 7
    assert rows_of(([[1.0, 2.0]], [0])) is None  # a list: read only by the check
    assert rows_of("not a batch") is None
    assert rows_of((np.float32(1), 0)) is None
    pd = pytest.importorskip("pandas")
    assert rows_of((pd.DataFrame(X), pd.Series(np.zeros(7)))) == 7


# -- the feed: checked where the steps run, with the same bits ---------------------------


def _data() -> Dataset:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((ROWS, 8)).astype(np.float32)
    return Dataset(X, (X[:, :3] + 0.3 * rng.standard_normal((ROWS, 3))).argmax(axis=1))


def _trainer(backend: str) -> at.Trainer:
    return at.Trainer(
        SoftmaxRegression(8, 3),
        at.optim.adam(1e-2),
        backend=backend,
        workers=None if backend == "inline" else 2,
        batch_size=BATCH,
        shards=4,
        seed=3,
    )


@pytest.fixture
def checked_on(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread each source batch was checked on, in stream order."""
    threads: list[int] = []
    assemble = _feed.assemble_batch

    def recorded(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return assemble(*args, **kwargs)

    monkeypatch.setattr(_feed, "assemble_batch", recorded)
    return threads


@pytest.fixture
def loop_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sync step that may compute on the loop does (no warm-up, no measuring), so
    which batches are checked where does not depend on timing."""

    def tasks(self: Placement, shards: int, workers: int, *, local: bool = False) -> int:
        return 0 if local else max(1, min(shards, workers))

    monkeypatch.setattr(_step.Placement, "tasks", tasks)


async def _oracle(data: Dataset) -> dict[str, bytes]:
    async with _trainer("inline") as trainer:
        params = (await trainer.fit(data, epochs=1)).params
    return {k: v.tobytes() for k, v in params.items()}


@pytest.mark.usefixtures("loop_steps")
async def test_an_async_source_is_checked_on_the_loop_beside_loop_steps(
    checked_on: list[int],
) -> None:
    data = _data()
    async with _trainer("thread") as trainer:
        loop = threading.get_ident()
        params = (await trainer.fit_stream(_agen(_pieces(data, PIECE)))).params
    assert len(checked_on) == ROWS // PIECE
    assert checked_on[0] != loop  # before the first step: no placement to follow yet
    assert checked_on[-1] == loop
    # Once the loop computes steps, every batch pulled after that is checked there too.
    first = checked_on.index(loop)
    assert all(thread == loop for thread in checked_on[first:])
    assert {k: v.tobytes() for k, v in params.items()} == await _oracle(data)


@pytest.mark.usefixtures("loop_steps")
async def test_a_check_on_the_loop_waits_for_the_step_in_progress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_step, checked_during = [False], []
    step, assemble = Sync.step, _feed.assemble_batch

    async def stepping(self: Sync, *args: Any, **kwargs: Any) -> Any:
        in_step[0] = True
        try:
            return await step(self, *args, **kwargs)
        finally:
            in_step[0] = False

    def recorded(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == loop:
            checked_during.append(in_step[0])
        return assemble(*args, **kwargs)

    monkeypatch.setattr(Sync, "step", stepping)
    monkeypatch.setattr(_feed, "assemble_batch", recorded)
    data = _data()
    async with _trainer("thread") as trainer:
        loop = threading.get_ident()
        params = (await trainer.fit_stream(_agen(_pieces(data, PIECE)))).params
    assert checked_during  # batches were checked on the loop...
    assert not any(checked_during)  # ...every one of them between two steps
    assert {k: v.tobytes() for k, v in params.items()} == await _oracle(data)


@pytest.mark.usefixtures("loop_steps")
async def test_a_sync_source_keeps_its_trip_off_the_loop(checked_on: list[int]) -> None:
    data = _data()
    async with _trainer("thread") as trainer:
        loop = threading.get_ident()
        params = (await trainer.fit_stream(list(_pieces(data, PIECE)))).params
    assert len(checked_on) == ROWS // PIECE
    assert loop not in checked_on  # its next() may block: it runs on the feed's thread
    assert {k: v.tobytes() for k, v in params.items()} == await _oracle(data)


async def test_beside_steps_in_worker_processes_batches_are_checked_on_the_loop(
    checked_on: list[int],
) -> None:
    pytest.importorskip("asynctrain.backends._process")
    data = _data()
    async with _trainer("process") as trainer:
        loop = threading.get_ident()
        params = (await trainer.fit_stream(_agen(_pieces(data, PIECE)))).params
    assert len(checked_on) == ROWS // PIECE
    assert checked_on[0] != loop  # before the first step
    assert checked_on[-1] == loop
    assert {k: v.tobytes() for k, v in params.items()} == await _oracle(data)


@pytest.mark.parametrize("cheap", [True, False])
async def test_ring_copies_are_made_where_the_checks_are(
    monkeypatch: pytest.MonkeyPatch, checked_on: list[int], cheap: bool
) -> None:
    # A copy into a process ring's slot is made on the loop when the batch's check would
    # be (it costs less a row than the check); a dear one (here: checks made to look
    # slow) keeps its trip to a feed thread. The bits are the same either way.
    pytest.importorskip("asynctrain.backends._process")
    trips: list[str] = []  # the feed's trips off the loop to copy into the ring
    went_off: list[bool] = []  # per _write: whether it took such a trip
    write, call = _feed.Feed._write, OffLoop.call
    if not cheap:
        monkeypatch.setattr(CheckSite, "here", lambda self, rows: False)

    async def tracked_call(self: OffLoop, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        name = getattr(fn, "__qualname__", "")
        if name.startswith("Feed._write."):
            trips.append(name)
        return await call(self, fn, *args, **kwargs)

    async def recorded(self: Any, batches: Any, jobs: Any) -> None:
        before = len(trips)
        await write(self, batches, jobs)
        went_off.append(len(trips) > before)

    monkeypatch.setattr(OffLoop, "call", tracked_call)
    monkeypatch.setattr(_feed.Feed, "_write", recorded)
    data = _data()
    async with _trainer("process") as trainer:
        loop = threading.get_ident()
        params = (await trainer.fit_stream(_agen(_pieces(data, PIECE)))).params
    assert went_off
    if cheap:  # once checks are timed and steps run, copies are made on the loop
        assert went_off[0]
        assert not went_off[-1]
        assert not any(went_off[went_off.index(False) :])
    else:
        assert all(went_off)
        assert loop not in checked_on
    assert {k: v.tobytes() for k, v in params.items()} == await _oracle(data)


@pytest.mark.usefixtures("loop_steps")
async def test_a_bad_batch_checked_on_the_loop_names_itself(checked_on: list[int]) -> None:
    data = _data()
    pieces = list(_pieces(data, PIECE))
    bad = pieces[-3][0].copy()
    bad[5, 2] = np.nan
    pieces[-3] = (bad, pieces[-3][1])
    async with _trainer("thread") as trainer:
        loop = threading.get_ident()
        with pytest.raises(at.DataError, match="stream batch 27: X has a non-finite value"):
            await trainer.fit_stream(_agen(iter(pieces)))
        assert checked_on[-1] == loop
        # Every full batch before the bad one was trained on, nothing after it.
        assert trainer.state.step == (len(pieces) - 3) * PIECE // BATCH


# -- assembled batches written again -----------------------------------------------------


def _stream_rows(seed: int, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((n, 3)), rng.integers(0, 5, n)) for n in sizes]


def test_reused_batches_hold_the_rows_of_the_stream_in_order() -> None:
    sizes = [7, 1, 16, 3, 9, 9, 2, 30, 5]
    items = _stream_rows(0, sizes)
    assembler, out = BatchAssembler(8), []
    for X, y in items:
        for arrays, rows in assembler.add(X, y, copy=True):
            out.append((arrays["X"][:rows].copy(), arrays["y"][:rows].copy()))
            assembler.reuse(arrays)  # its step is done: written again by a later batch
    last = assembler.flush()
    assert last is not None
    out.append((last[0]["X"][: last[1]], last[0]["y"][: last[1]]))
    # The oracle: the stream's rows concatenated, cut every 8.
    X, y = np.concatenate([X for X, _ in items]), np.concatenate([y for _, y in items])
    assert [len(part) for part, _ in out] == [8] * (len(X) // 8) + [len(X) % 8]
    np.testing.assert_array_equal(np.concatenate([part for part, _ in out]), X)
    np.testing.assert_array_equal(np.concatenate([part for _, part in out]), y)


def test_reuse_writes_into_the_handed_back_arrays() -> None:
    assembler = BatchAssembler(4)
    [(first, _)] = assembler.add(np.zeros((4, 2)), np.zeros(4), copy=True)
    assembler.reuse(first)
    [(second, _)] = assembler.add(np.ones((4, 2)), np.ones(4), copy=True)
    assert second["X"] is first["X"]
    assert second["y"] is first["y"]
    [(third, _)] = assembler.add(np.ones((4, 2)), np.ones(4), copy=True)
    assert not np.shares_memory(third["X"], second["X"])  # nothing handed back: new


def test_a_batch_the_assembler_did_not_make_is_never_written_again() -> None:
    assembler = BatchAssembler(4)
    X, y = np.zeros((4, 2)), np.zeros(4)
    [(whole, _)] = assembler.add(X, y)  # handed on as it is: the caller's arrays
    assert whole["X"] is X
    assembler.reuse(whole)
    [(made, _)] = assembler.add(np.ones((4, 2)), np.ones(4), copy=True)
    assert made["X"] is not X
    np.testing.assert_array_equal(X, 0)
    assembler.reuse(dict(made))  # a copy of the dict: not the assembler's own batch
    [(new, _)] = assembler.add(np.ones((4, 2)), np.ones(4), copy=True)
    assert new["X"] is not made["X"]


def test_a_spare_batch_of_another_layout_is_dropped() -> None:
    assembler = BatchAssembler(4)
    [(narrow, _)] = assembler.add(np.zeros((4, 2)), np.zeros(4), copy=True)
    assembler.reuse(narrow)
    [(wide, _)] = assembler.add(np.ones((4, 3)), np.ones(4), copy=True)
    assert wide["X"].shape == (4, 3)
    [(weighted, _)] = assembler.add(np.ones((4, 3)), np.ones(4), np.ones(4), copy=True)
    assembler.reuse(weighted)
    [(plain, _)] = assembler.add(np.ones((4, 3)), np.ones(4), copy=True)
    assert "w" not in plain
    assert plain["X"] is not weighted["X"]


def test_an_assembler_keeps_a_few_spare_batches_at_most() -> None:
    assembler = BatchAssembler(2)
    count = SPARE + 2
    made = [assembler.add(np.zeros((2, 1)), np.zeros(2), copy=True)[0][0] for _ in range(count)]
    for arrays in made:
        assembler.reuse(arrays)
    again = [assembler.add(np.zeros((2, 1)), np.zeros(2), copy=True)[0][0] for _ in range(count)]
    kept = {id(arrays["X"]) for arrays in made} & {id(arrays["X"]) for arrays in again}
    assert len(kept) == SPARE


@pytest.mark.parametrize("backend", ["thread", "process"])
async def test_a_feed_writes_its_batches_again_rather_than_making_new_ones(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """Batches handed back one a step and taken two at a time (source batches of about
    two batches each) are all written again: the feed makes only about as many batches
    as it has in flight, not one for every other batch of the stream."""
    made = 0
    new = BatchAssembler._new

    def counted(self: BatchAssembler, *args: Any) -> Any:
        nonlocal made
        made += not self._spare
        return new(self, *args)

    monkeypatch.setattr(BatchAssembler, "_new", counted)
    data = _data()
    async with _trainer(backend) as trainer:
        result = await trainer.fit_stream(_agen(_pieces(data, 2 * BATCH - 7)))
    assert result.steps == -(-ROWS // BATCH) == 47
    # In flight at most: the ring's slots, the queue's source batches (up to 3 batches
    # each, counting the batch being assembled) and the one being assembled.
    assert made <= _feed.RING_SLOTS + 3 * DEFAULT_BUFFER + 1
    assert {k: v.tobytes() for k, v in result.params.items()} == await _oracle(data)
