"""Broadcast: late joiners get the history, slow readers lose their oldest items, never block."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

import asynctrain as at
from asynctrain._serving import _broadcast
from asynctrain._serving._broadcast import Broadcast


async def _all(stream: Broadcast[int]) -> list[int | at.Lagged]:
    return [item async for item in stream.subscribe()]


async def _first_while_publishing(
    stream: Broadcast[int], reader: AsyncIterator[int | at.Lagged], items: Iterable[int]
) -> int | at.Lagged:
    """The reader's first item, waited for while ``items`` are published."""
    first = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0)  # it has subscribed and waits
    for item in items:
        stream.publish(item)
    return await first


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
        assert await _first_while_publishing(stream, reader, [0]) == 0
        for i in range(1, 101):  # the reader does not read: publish must not wait
            stream.publish(i)
        stream.close()
        rest = [item async for item in reader]
    assert rest == [at.Lagged(missed=97), 98, 99, 100]


async def test_items_dropped_while_the_reader_holds_a_lagged_marker_are_reported() -> None:
    # The count was reset once the reader came back for the next item, so what was
    # dropped while it held the marker (an SSE write of it blocked on a slow client)
    # was lost without a word.
    stream: Broadcast[int] = Broadcast(history=0, buffer=2)
    reader = stream.subscribe()
    async with contextlib.aclosing(reader):
        first = await _first_while_publishing(stream, reader, range(5))
        assert first == at.Lagged(missed=3)  # 0, 1, 2; it holds 3 and 4
        for i in range(5, 7):  # the reader is away with the marker: 3 and 4 go
            stream.publish(i)
        stream.close()
        rest = [item async for item in reader]
    assert rest == [at.Lagged(missed=2), 5, 6]


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


def _progress(item: int) -> bool:
    return item >= 0  # in these tests: negative items are "epochs", never coalesced


async def test_a_rate_limited_subscriber_gets_the_latest_progress_before_anything_else() -> None:
    # An interval of 1000 s: after the first item nothing coalescable is due by the
    # clock, so every later one is what the rule "the latest, before any other item and
    # before the end" delivers; no timing is involved.
    stream: Broadcast[int] = Broadcast(history=0, buffer=8, coalesce=_progress)
    reader = stream.subscribe(rate=1e-3)
    unlimited = stream.subscribe()
    async with contextlib.aclosing(reader), contextlib.aclosing(unlimited):
        first = asyncio.ensure_future(anext(reader))
        everything = asyncio.ensure_future(anext(unlimited))
        await asyncio.sleep(0)
        stream.publish(0)
        assert (await first, await everything) == (0, 0)
        for i in range(1, 1000):
            stream.publish(i)
        stream.publish(-1)  # an epoch: flushes the latest step, then itself
        for i in range(1000, 1500):
            stream.publish(i)
        stream.close()  # the end: flushes the latest step
        received = [item async for item in reader]
        rest = [item async for item in unlimited]
    assert received == [999, -1, 1499]
    assert rest[0] == at.Lagged(missed=1500 - 8)  # without a rate: a slow reader lags


async def test_a_held_back_step_arrives_when_its_interval_ends() -> None:
    stream: Broadcast[int] = Broadcast(history=0, buffer=8, coalesce=_progress)
    reader = stream.subscribe(rate=50.0)
    async with contextlib.aclosing(reader):
        first = asyncio.ensure_future(anext(reader))
        await asyncio.sleep(0)
        stream.publish(0)
        assert await first == 0
        stream.publish(1)
        stream.publish(2)
        # nothing else is published: the latest step still comes, once 20 ms have passed
        assert await asyncio.wait_for(anext(reader), timeout=30) == 2
        stream.close()
        assert [item async for item in reader] == []


async def test_publish_asks_whether_an_item_is_progress_once_whatever_the_subscribers() -> None:
    # Each subscriber asked it twice per item: a step published to 500 rate-limited
    # subscribers of one job (the SSE default) took 295 µs of the loop's time, now 92.
    asked: list[int] = []

    def progress(item: int) -> bool:
        asked.append(item)
        return _progress(item)

    stream: Broadcast[int] = Broadcast(history=0, buffer=8, coalesce=progress)
    readers = [stream.subscribe(rate=1e-3) for _ in range(100)]
    firsts = [asyncio.ensure_future(anext(reader)) for reader in readers]
    await asyncio.sleep(0)  # all have subscribed
    stream.publish(-1)
    assert await asyncio.gather(*firsts) == [-1] * 100  # and each waits for the next
    asked.clear()
    for i in [0, 1, 2, -2, 3]:
        stream.publish(i)
    assert asked == [0, 1, 2, -2, 3]
    stream.close()
    for reader in readers:
        assert [item async for item in reader] == [2, -2, 3]  # coalesced as before


async def test_history_replayed_to_a_rate_limited_subscriber_is_coalesced() -> None:
    stream: Broadcast[int] = Broadcast(history=100, buffer=5, coalesce=_progress)
    for i in [0, 1, 2, -1, 3, 4, -2, 5]:
        stream.publish(i)
    stream.close()
    assert [i async for i in stream.subscribe(rate=1e-3)] == [2, -1, 4, -2, 5]
    everything = [i async for i in stream.subscribe(rate=math.inf)]
    assert everything == [at.Lagged(missed=3), -1, 3, 4, -2, 5]


@pytest.mark.parametrize(("rate", "error"), [(0, at.ConfigError), (-1.0, at.ConfigError),
                                             ("4", at.ConfigTypeError)])  # fmt: skip
async def test_a_bad_rate_names_the_value(rate: object, error: type[Exception]) -> None:
    stream: Broadcast[int] = Broadcast()
    with pytest.raises(error, match="rate"):
        await anext(stream.subscribe(rate=rate))  # type: ignore[arg-type]


class _Spec:
    """What one subscriber receives, in the simplest terms: its own deque of ``buffer``
    items, the oldest dropped and counted; a rate-limited one (``limited``: its interval
    never ends within the test) replaces a held progress item by the next one, and holds
    a sole progress item back once it has taken one, unless the stream is closed."""

    def __init__(self, replay: list[int], buffer: int, *, limited: bool) -> None:
        self.items: collections.deque[int] = collections.deque()
        self.buffer, self.limited, self.missed, self.taken_progress = buffer, limited, 0, False
        for item in replay:
            self.push(item)

    def push(self, item: int) -> None:
        if self.limited and _progress(item) and self.items and _progress(self.items[-1]):
            self.items[-1] = item
            return
        if len(self.items) == self.buffer:
            self.items.popleft()
            self.missed += 1
        self.items.append(item)

    def read(self, closed: bool) -> object:
        """The next item; None if the reader waits; ``_END`` once it ends."""
        if self.missed:
            missed, self.missed = self.missed, 0
            return at.Lagged(missed)
        if not self.items:
            return _END if closed else None
        held_back = self.limited and self.taken_progress and len(self.items) == 1
        if held_back and _progress(self.items[0]) and not closed:
            return None
        item = self.items.popleft()
        self.taken_progress |= self.limited and _progress(item)
        return item


_END = object()


async def _settle() -> None:
    for _ in range(5):  # a woken reader takes one loop iteration to hand its item over
        await asyncio.sleep(0)


@pytest.mark.parametrize("seed", range(8))
async def test_every_subscriber_receives_what_its_own_buffer_would_hold(seed: int) -> None:
    """Random publishes, joins and reads, against :class:`_Spec`: readers that keep up,
    that read now and then, that never read, rate-limited or not, joining late. The
    stream's own bookkeeping (whichever way it avoids touching every subscriber on every
    publish) must give each one exactly what its own bounded buffer would."""
    rng = random.Random(seed)
    history, buffer = rng.choice([0, 3, 20]), rng.choice([1, 4, 16])
    stream: Broadcast[int] = Broadcast(history=history, buffer=buffer, coalesce=_progress)
    published: list[int] = []
    readers: list[tuple[AsyncIterator[int | at.Lagged], _Spec, list[Any]]] = []

    def join() -> None:
        limited = rng.random() < 0.5
        reader = stream.subscribe(rate=1e-3 if limited else None)
        replay = published[max(0, len(published) - history) :]
        readers.append((reader, _Spec(replay, buffer, limited=limited), [None]))

    async def read(i: int) -> object:
        reader, spec, pending = readers[i]
        if pending[0] is None:
            pending[0] = asyncio.ensure_future(anext(reader, _END))
        await _settle()
        expected = spec.read(stream.closed)
        if expected is None:
            assert not pending[0].done()
            return None
        assert pending[0].done()
        assert pending[0].result() == expected, (seed, i)
        pending[0] = None
        return expected

    for n in range(400):
        roll = rng.random()
        if roll < 0.03 or not readers:
            join()
            await read(len(readers) - 1)  # it subscribes on its first read
        elif roll < 0.7:
            item = n if rng.random() < 0.9 else -n - 1  # mostly progress
            stream.publish(item)
            published.append(item)
            for _, spec, _ in readers:
                spec.push(item)
            for i, (_, _, pending) in enumerate(readers):
                if pending[0] is not None:
                    await read(i)
        else:  # readers 0 and 1 keep up; the others read now and then, or never
            for i in range(len(readers)):
                if i < 2 or rng.random() < 0.2:
                    await read(i)
    stream.close()
    for i in range(len(readers)):
        while await read(i) is not _END:
            pass
    assert stream.subscribers == 0


async def test_publishing_touches_no_subscriber_that_is_not_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each item was appended to every subscriber's buffer: 2,000 subscribers that never
    read took a fit from 2,700 to 640 steps a second. Now a step reaches only the
    subscribers waiting for an item; the others catch up when they read."""
    pushed: list[int] = []
    push = _broadcast._Limited.push

    def counted(self: Any, item: int, progress: bool) -> None:
        pushed.append(item)
        push(self, item, progress)

    monkeypatch.setattr(_broadcast._Limited, "push", counted)
    stream: Broadcast[int] = Broadcast(history=0, buffer=4, coalesce=_progress)
    idle = [stream.subscribe(rate=rate) for rate in [None, 1e-3] * 50]
    firsts = [asyncio.ensure_future(anext(reader)) for reader in idle]
    await asyncio.sleep(0)  # all have joined
    stream.publish(0)
    assert await asyncio.gather(*firsts) == [0] * 100  # then they read no more
    stream.publish(1)  # each rate-limited subscriber holds a step now
    pushed.clear()
    for i in range(2, 1000):
        stream.publish(i)
    assert pushed == []  # not one subscriber touched
    stream.publish(-1)  # an epoch reaches every rate-limited subscriber
    assert pushed == [-1] * 50
    stream.close()
    for every, limited in zip(idle[::2], idle[1::2], strict=True):
        assert [item async for item in every] == [at.Lagged(missed=996), 997, 998, 999, -1]
        assert [item async for item in limited] == [999, -1]
    assert stream.subscribers == 0
