"""A task's head (function and shared handles) is pickled once by the parent and unpickled
once per worker; both caches follow releases, worker deaths and resizes."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import numpy as np

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
