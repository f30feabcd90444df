"""Broadcast: late joiners get the history, slow readers lose their oldest items, never block."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import asynctrain as at
from asynctrain._serving._broadcast import Broadcast


async def _all(stream: Broadcast[int]) -> list[int | at.Lagged]:
    return [item async for item in stream.subscribe()]


async def test_a_late_subscriber_replays_the_history_then_ends() -> None:
    stream: Broadcast[int] = Broadcast(history=10, buffer=10)
    for i in range(5):
        stream.publish(i)
    stream.close()
    assert await _all(stream) == [0, 1, 2, 3, 4]
    assert await _all(stream) == [0, 1, 2, 3, 4]  # and again: the history stays


async def test_live_subscribers_see_every_item_in_order() -> None:
    stream: Broadcast[int] = Broadcast(history=0, buffer=4)
    readers = [asyncio.ensure_future(_all(stream)) for _ in range(3)]
    await asyncio.sleep(0)  # let them subscribe
    assert stream.subscribers == 3
    for i in range(20):
        stream.publish(i)
        await asyncio.sleep(0)  # readers keep up
    stream.close()
    assert [await r for r in readers] == [list(range(20))] * 3
    assert stream.subscribers == 0


async def test_a_slow_subscriber_loses_its_oldest_items_and_is_told() -> None:
    stream: Broadcast[int] = Broadcast(history=0, buffer=3)
    reader = stream.subscribe()
    async with contextlib.aclosing(reader):
        first = asyncio.ensure_future(anext(reader))
        await asyncio.sleep(0)
        stream.publish(0)
        assert await first == 0
        for i in range(1, 101):  # the reader does not read: publish must not wait
            stream.publish(i)
        stream.close()
        rest = [item async for item in reader]
    assert rest == [at.Lagged(missed=97), 98, 99, 100]


async def test_history_longer_than_the_buffer_is_reported_as_missed() -> None:
    stream: Broadcast[int] = Broadcast(history=50, buffer=5)
    for i in range(50):
        stream.publish(i)
    stream.close()
    assert await _all(stream) == [at.Lagged(missed=45), 45, 46, 47, 48, 49]


async def test_publish_after_close_is_refused() -> None:
    stream: Broadcast[int] = Broadcast()
    stream.close()
    with pytest.raises(RuntimeError, match="closed"):
        stream.publish(1)


def test_bad_sizes_name_the_value() -> None:
    with pytest.raises(at.ConfigError, match="buffer"):
        Broadcast(buffer=0)
