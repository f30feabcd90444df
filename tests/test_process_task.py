"""A task's head (function and shared handles) is pickled once by the parent and unpickled
once per worker; both caches follow releases, worker deaths and resizes."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
from typing import Any

import numpy as np
import pytest

from asynctrain._engine import _work
from asynctrain._engine._work import Gathered, ShardGroup, ShardTask
from asynctrain.backends import ProcessBackend
from asynctrain.backends._process_shared import Field, ProcessShared
from asynctrain.backends._process_task import TaskDecoder, TaskEncoder
from asynctrain.backends._process_worker import held_keys

# -- functions the workers run (module level, so they pickle by reference) --------------


def total(data: Any, scale: float) -> float:
    return float(data.read(0)["x"].sum() * scale)


def pid_and_total(data: Any, scale: float) -> tuple[int, float]:
    return os.getpid(), total(data, scale)


def handle_ids(a: Any, b: Any) -> tuple[int, int, int]:
    return os.getpid(), id(a), id(b)


class Counter:
    """A callable whose state changes with each call: never cached as a head."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.calls


def _handle(key: str) -> ProcessShared:
    return ProcessShared(key, (Field("x", (3,), "<f8", 0),), 1, 64)


def _decode(decoder: TaskDecoder, parts: tuple[bytes, ...]) -> tuple[Any, tuple[Any, ...]]:
    return decoder.decode(memoryview(b"".join(parts)))


# -- the codec ---------------------------------------------------------------------------


def test_a_head_is_pickled_once_and_unpickled_once() -> None:
    encoder, decoder = TaskEncoder(), TaskDecoder()
    a, b = _handle("a"), _handle("b")
    first = encoder.encode(total, (a, b, 1, np.arange(3)))
    second = encoder.encode(total, (a, b, 2, np.arange(4)))
    assert first[1] is second[1]  # the same head bytes, not pickled again
    assert len(encoder) == 1
    fn, args = _decode(decoder, first)
    fn2, args2 = _decode(decoder, second)
    assert fn is fn2 is total
    assert args[0] is args2[0]
    assert args[1] is args2[1]
    assert (args[0].key, args[1].key, args[2]) == ("a", "b", 1)
    np.testing.assert_array_equal(args2[3], np.arange(4))
    assert decoder.keys() == {"a", "b"}


def test_forgetting_a_key_drops_every_head_that_carries_it() -> None:
    encoder, decoder = TaskEncoder(), TaskDecoder()
    a, b = _handle("a"), _handle("b")
    parts = [encoder.encode(total, (a, 1)), encoder.encode(total, (a, b, 1))]
    parts.append(encoder.encode(total, (b, 1)))
    old = [_decode(decoder, p)[1][0] for p in parts]
    encoder.forget("a")
    decoder.forget("a")
    assert len(encoder) == len(decoder) == 1
    assert decoder.keys() == {"b"}
    assert _decode(decoder, encoder.encode(total, (a, 1)))[1][0] is not old[0]
    assert _decode(decoder, parts[2])[1][0] is old[2]  # b's own head stays


def test_a_callable_object_or_a_bound_builtin_is_never_a_head() -> None:
    encoder, decoder = TaskEncoder(), TaskDecoder()
    for fn in (Counter(), [1].append):
        parts = encoder.encode(fn, (_handle("a"),))
        assert parts[1] == b""  # no head: the function and its arguments in the tail
        first, second = (_decode(decoder, parts) for _ in range(2))
        assert first[0] is not second[0]
        assert first[1][0] is not second[1][0]
    assert len(encoder) == len(decoder) == 0


def test_a_handle_after_another_argument_travels_in_the_tail() -> None:
    encoder, decoder = TaskEncoder(), TaskDecoder()
    parts = encoder.encode(total, (np.ones(2), _handle("a")))
    _decode(decoder, parts)
    assert decoder.keys() == set()
    assert len(decoder) == 1


def test_the_caches_are_bounded() -> None:
    encoder, decoder = TaskEncoder(keep=3), TaskDecoder(keep=3)
    for i in range(10):
        _decode(decoder, encoder.encode(total, (_handle(f"k{i}"), 1)))
    assert len(encoder) == len(decoder) == 3
    assert decoder.keys() == {"k7", "k8", "k9"}


# -- through real workers -----------------------------------------------------------------


async def test_new_contents_of_a_handle_are_seen_and_a_new_handle_is_not_confused() -> None:
    async with ProcessBackend(workers=1) as backend:
        a = await backend.share({"x": np.arange(4.0)})
        assert await backend.run(total, a, 1.0) == 6.0
        a.write(0, {"x": np.full(4, 2.0)})  # contents live in shared memory: read anew
        assert await backend.run(total, a, 1.0) == 8.0
        b = await backend.share({"x": np.arange(4.0) * 10})  # same layout, another key
        assert await backend.run(total, b, 1.0) == 60.0
        assert await backend.run(total, a, 0.5) == 4.0
        assert {a.key, b.key} <= await backend.run(held_keys)


async def test_release_drops_the_heads_on_both_sides() -> None:
    async with ProcessBackend(workers=2) as backend:
        a = await backend.share({"x": np.arange(4.0)})
        b = await backend.share({"x": np.arange(3.0)})
        for _ in range(4):
            assert await backend.run(total, a, 1.0) == 6.0
        await backend.release(a)
        assert all(a.key not in head for head in backend._encoder._heads)
        for _ in range(4):  # each worker read the release before this task
            keys = await backend.run(held_keys)
            assert a.key not in keys
        assert await backend.run(total, b, 1.0) == 3.0


async def test_a_replacement_worker_decodes_heads_it_never_saw() -> None:
    async with ProcessBackend(workers=1) as backend:
        a = await backend.share({"x": np.arange(4.0)})
        pid, value = await backend.run(pid_and_total, a, 1.0)
        os.kill(pid, signal.SIGKILL)  # seen now or on the next task, which then re-runs
        new_pid, value2 = await backend.run(pid_and_total, a, 2.0)
        assert new_pid != pid
        assert (value, value2) == (6.0, 12.0)


async def test_heads_survive_a_resize_and_each_worker_keeps_its_own() -> None:
    async with ProcessBackend(workers=1) as backend:
        a, b = await backend.share({"x": np.ones(2)}), await backend.share({"x": np.ones(3)})
        await backend.run(handle_ids, a, b)
        await backend.resize(2)
        seen: dict[int, set[tuple[int, int]]] = {}
        for _ in range(10):
            both = await asyncio.gather(*(backend.run(handle_ids, a, b) for _ in range(2)))
            for pid, id_a, id_b in both:
                seen.setdefault(pid, set()).add((id_a, id_b))
        assert len(seen) == 2
        assert all(len(ids) == 1 for ids in seen.values())  # decoded once per worker
        await backend.resize(1)
        assert await backend.run(total, b, 1.0) == 3.0


async def test_a_callable_object_is_sent_with_its_state_each_time() -> None:
    async with ProcessBackend(workers=1) as backend:
        counter = Counter()
        assert [await backend.run(counter) for _ in range(3)] == [1, 1, 1]
        counter.calls = 10
        assert await backend.run(counter) == 11
        assert len(backend._encoder) == 0


# -- shard tasks travel as one buffer of 64-bit words -------------------------------------

_INDICES = np.array([7, 0, 2**40, 3], dtype=np.int64)


def _same_task(got: ShardTask, sent: ShardTask) -> None:
    assert got[:5] == sent[:5]
    assert got[6:] == sent[6:]
    assert all(type(field) is int for field in (*got[:5], *got[6:]))
    if isinstance(sent.indices, range):
        assert got.indices == sent.indices
    else:
        assert got.indices.dtype == sent.indices.dtype
        np.testing.assert_array_equal(got.indices, sent.indices)


@pytest.mark.parametrize(
    "ahead",
    [None, (), (_INDICES[::-1], np.empty(0, np.int64))],  # a strided view among them
    ids=["none", "empty", "strided"],
)
def test_a_shard_group_round_trips_packed(ahead: tuple[Any, ...] | None) -> None:
    tasks = (
        ShardTask(12, 3, 11, 1, 4, _INDICES, 0, 2**63 - 1),
        ShardTask(12, 4, 11, 1, 5, range(10, 20), 2, 0),
        ShardTask(12, 5, 11, 1, 6, np.empty(0, np.int64), 0, 0),
    )
    group = ShardGroup(12, 3, tasks, ahead if ahead is None else ahead[: len(tasks)])
    assert group.__reduce__()[0] is not ShardGroup  # packed, not field by field
    got = pickle.loads(pickle.dumps(group, protocol=pickle.HIGHEST_PROTOCOL))
    assert (got.step, got.shard) == (12, 3)
    for got_task, task in zip(got.tasks, tasks, strict=True):
        _same_task(got_task, task)
    if ahead is None:
        assert got.ahead is None
    else:
        assert len(got.ahead) == len(group.ahead)
        for got_rows, rows in zip(got.ahead, group.ahead, strict=True):
            np.testing.assert_array_equal(got_rows, rows)
    # Views of the one buffer: read-only, so nothing a worker does reaches another task's.
    assert not got.tasks[0].indices.flags.writeable


@pytest.mark.parametrize(
    "task",
    [
        ShardTask(1, 0, 1, 0, 0, _INDICES, 0, 2**64),  # a seed beyond 64 bits
        ShardTask(1, 0, 1, 0, 0, _INDICES.astype(np.int32)),  # indices of another dtype
        ShardTask(1, 0, 1, 0, 0, _INDICES.reshape(2, 2)),  # of another shape
        ShardTask(1, 0, 1, 0, 0, range(0, 10, 2)),  # a range with a step
        ShardTask(1, 0, 1, 0, 0, Gathered(np.ones((2, 2)), np.ones(2), None)),  # rows
    ],
    ids=["big-seed", "int32", "2d", "stepped-range", "gathered"],
)
def test_what_does_not_fit_is_pickled_field_by_field(task: ShardTask) -> None:
    for sent in (task, ShardGroup(1, 0, (task,), None)):
        assert sent.__reduce__()[0] is type(sent)
        got = pickle.loads(pickle.dumps(sent, protocol=pickle.HIGHEST_PROTOCOL))
        got_task = got if isinstance(got, ShardTask) else got.tasks[0]
        assert got_task.seed == task.seed
        if isinstance(task.indices, Gathered):
            np.testing.assert_array_equal(got_task.indices.X, task.indices.X)
        elif isinstance(task.indices, range):
            assert got_task.indices == task.indices
        else:
            assert got_task.indices.dtype == task.indices.dtype
            np.testing.assert_array_equal(got_task.indices, task.indices)


def test_indices_beyond_the_packing_limit_are_pickled_by_numpy() -> None:
    # Large index arrays cost more copied into one buffer than numpy's pickle saves.
    limit = _work._PACK_WORDS
    rows = np.arange(limit // 2, dtype=np.int64)
    task = ShardTask(3, 0, 2, 0, 0, rows)
    at_limit = ShardGroup(3, 0, (task,), (rows[::-1].copy(),))
    beyond = ShardGroup(3, 0, (task,), (np.arange(limit // 2 + 1, dtype=np.int64),))
    assert at_limit.__reduce__()[0] is not ShardGroup
    assert beyond.__reduce__()[0] is ShardGroup
    assert ShardTask(3, 0, 2, 0, 0, np.arange(limit + 1)).__reduce__()[0] is ShardTask
    got = pickle.loads(pickle.dumps(beyond, protocol=pickle.HIGHEST_PROTOCOL))
    _same_task(got.tasks[0], task)
    np.testing.assert_array_equal(got.ahead[0], beyond.ahead[0])


def test_a_lone_shard_task_round_trips_packed() -> None:
    task = ShardTask(5, 1, 4, 0, 1, _INDICES, 0, 9)
    assert task.__reduce__()[0] is not ShardTask
    _same_task(pickle.loads(pickle.dumps(task)), task)
    ahead = ShardGroup(5, 1, (task,), (np.array([1, 2], np.int32),))  # ahead of another dtype
    assert ahead.__reduce__()[0] is ShardGroup
