"""Broadcast: one producer, many subscribers that may join late, none of which can stall it.

The producer's ``publish`` never waits and never allocates beyond fixed bounds: the
stream keeps the newest ``history`` items for late joiners, and each subscriber holds at
most ``buffer`` unread items. A subscriber that falls behind loses its oldest items and
receives a :class:`Lagged` marker saying how many it missed, in their place. Nor does
``publish`` touch a subscriber that is not waiting for an item (see :class:`Broadcast`).

A subscriber may ask for at most ``rate`` items a second of the kind the stream may
coalesce (progress, such as step events): of a run of such items arriving faster, it
receives only the latest, and it always receives the latest one before any other item
and before the stream ends. Other items are never delayed or dropped by the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar, cast

from asynctrain._checks import check_int
from asynctrain._exceptions import ConfigError, ConfigTypeError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Lagged:
    """In place of events a slow subscriber missed: ``missed`` of them, the oldest first."""

    missed: int
    kind: Literal["lagged"] = "lagged"


class _Limited(Generic[T]):
    """A rate-limited subscriber's own bounded buffer, in which progress coalesces.

    While the last item it holds is progress, it is *parked*: every later progress item
    would only replace that one, so :meth:`Broadcast.publish` skips it and the reader
    takes the stream's latest progress in its place when it gets there (:meth:`take`).
    """

    __slots__ = ("coalesce", "interval", "items", "last_progress", "missed", "ready_at", "wakeup")

    def __init__(
        self,
        replay: Iterable[tuple[T, bool]],
        buffer: int,
        *,
        coalesce: Callable[[T], bool],
        interval: float,
    ) -> None:
        self.items: deque[T] = deque(maxlen=buffer)
        self.last_progress = False  # items[-1] is progress (when there are items)
        self.missed = 0
        self.wakeup = asyncio.Event()
        self.coalesce = coalesce
        self.interval = interval
        self.ready_at = -math.inf  # loop time before which no coalescable item is yielded
        for item, progress in replay:
            self.push(item, progress)

    @property
    def parked(self) -> bool:
        """Its last held item is progress: publishing progress need not touch it."""
        return self.last_progress and bool(self.items)

    def push(self, item: T, progress: bool) -> None:
        """Hold ``item`` (``progress``: it may be coalesced)."""
        if progress and self.parked:
            self.items[-1] = item  # the waiting reader already knows an item is there
            return
        if len(self.items) == self.items.maxlen:
            self.missed += 1  # deque drops the oldest on append
        self.items.append(item)
        self.last_progress = progress
        self.wakeup.set()

    def catch_up(self, latest: T | None) -> None:
        """Hold ``latest`` (the stream's latest progress) in place of a parked item."""
        if self.parked:  # so progress was published: ``latest`` is the newest of it
            self.items[-1] = cast(T, latest)

    def held_back(self, now: float, closed: bool) -> float:
        """Seconds to wait before the head may be yielded (0: yield it now)."""
        if closed or len(self.items) != 1 or not self.last_progress:
            return 0.0  # the latest progress goes out before any other item, and at the end
        return max(0.0, self.ready_at - now)

    def take(self, latest: T | None, now: float) -> T:
        """The head, the stream's ``latest`` progress standing for a parked last item."""
        self.catch_up(latest)
        item = self.items.popleft()
        if self.coalesce(item):
            self.ready_at = now + self.interval
        return item


class Broadcast(Generic[T]):
    """A bounded fan-out stream; see the module docstring.

    Publishing costs the loop the same whatever the number of subscribers that are not
    waiting for an item: the items are kept once, in one log, and a subscriber reading
    every item only keeps its position in it (it catches up when it reads, counting
    what went past it as missed); a rate-limited one holding back a progress item is
    not touched until another kind of item comes (progress is most of a fit's events).

    Args:
        history: newest items replayed to a subscriber when it joins.
        buffer: items held per subscriber before its oldest are dropped.
        coalesce: which items a rate-limited subscriber may skip for a later one
            (progress); None: no item is ever coalesced, ``rate`` has no effect.

    Example:
        >>> import asynctrain
        >>> async def main():
        ...     stream = Broadcast(history=8, buffer=2)
        ...     for i in range(4):
        ...         stream.publish(i)
        ...     stream.close()
        ...     return [item async for item in stream.subscribe()]
        >>> asynctrain.run(main())
        [Lagged(missed=2, kind='lagged'), 2, 3]
    """

    def __init__(
        self,
        *,
        history: int = 1024,
        buffer: int = 256,
        coalesce: Callable[[T], bool] | None = None,
    ) -> None:
        self._history = check_int("history", history, minimum=0)
        self._buffer = check_int("buffer", buffer)
        # The newest items, enough for the history and for every reader's buffer; each
        # with whether it may be coalesced: asked once per item, not once per subscriber.
        self._log: deque[tuple[T, bool]] = deque(maxlen=max(self._history, self._buffer))
        self._published = 0  # items ever published: the position after the newest
        self._coalesce = coalesce
        self._latest: T | None = None  # the latest progress item
        self._readers = 0  # subscribers reading every item (from the log)
        self._waiting: set[asyncio.Event] = set()  # theirs, while they wait for an item
        self._limited: set[_Limited[T]] = set()  # rate-limited subscribers
        self._unparked: set[_Limited[T]] = set()  # those a progress item must be pushed to
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: subscribers end after the last item."""
        return self._closed

    @property
    def subscribers(self) -> int:
        """Subscribers currently reading."""
        return self._readers + len(self._limited)

    def publish(self, item: T) -> None:
        """Hand ``item`` to every subscriber and the history; never waits."""
        if self._closed:
            raise RuntimeError("publish on a closed Broadcast")
        progress = self._coalesce is not None and self._coalesce(item)
        self._log.append((item, progress))
        self._published += 1
        if progress:
            self._latest = item
            for subscriber in self._unparked:
                subscriber.push(item, progress)
            self._unparked.clear()  # each is parked now
        else:
            for subscriber in self._limited:
                subscriber.catch_up(self._latest)
                subscriber.push(item, progress)
            self._unparked |= self._limited
        self._wake()

    def close(self) -> None:
        """End the stream: subscribers receive what they hold, then stop (idempotent)."""
        self._closed = True
        for subscriber in self._limited:
            subscriber.wakeup.set()
        self._wake()

    def _wake(self) -> None:
        for wakeup in self._waiting:
            wakeup.set()
        self._waiting.clear()

    def subscribe(self, *, rate: float | None = None) -> AsyncGenerator[T | Lagged, None]:
        """Iterate over the recent history, then live items, until the stream closes.

        The subscriber joins when iteration starts (a bad ``rate`` is refused at once);
        it yields a :class:`Lagged` marker
        wherever items were dropped because it read too slowly (or the history it joined
        was longer than its buffer).

        Args:
            rate: at most this many coalescable items a second (the latest of each run
                of them; see the module docstring); None or ``math.inf``: every item.

        Raises:
            ConfigError, ConfigTypeError: ``rate`` is not a positive number.
        """
        interval = _interval(rate)
        if interval > 0 and self._coalesce is not None:
            return self._limited_items(interval, self._coalesce)
        return self._every_item()

    async def _every_item(self) -> AsyncGenerator[T | Lagged, None]:
        """A subscriber that reads every item: a position in the log, nothing else."""
        position = self._published - min(self._history, len(self._log))
        wakeup = asyncio.Event()
        self._readers += 1
        try:
            while True:
                behind = self._published - position
                if behind > self._buffer:  # the oldest of its unread items are gone
                    missed = behind - self._buffer
                    position += missed
                    yield Lagged(missed)
                elif behind:
                    position += 1
                    yield self._log[-behind][0]
                elif self._closed:
                    return
                else:
                    wakeup.clear()
                    self._waiting.add(wakeup)
                    await wakeup.wait()
        finally:
            self._readers -= 1
            self._waiting.discard(wakeup)

    async def _limited_items(
        self, interval: float, coalesce: Callable[[T], bool]
    ) -> AsyncGenerator[T | Lagged, None]:
        """A rate-limited subscriber: its own buffer, where progress coalesces."""
        loop = asyncio.get_running_loop()
        replay = itertools.islice(self._log, max(0, len(self._log) - self._history), None)
        subscriber = _Limited(replay, self._buffer, coalesce=coalesce, interval=interval)
        self._limited.add(subscriber)
        if not subscriber.parked:
            self._unparked.add(subscriber)
        try:
            while True:
                if subscriber.missed:
                    # Reset before the yield: drops while the reader holds the marker
                    # count towards the next one.
                    missed, subscriber.missed = subscriber.missed, 0
                    yield Lagged(missed)
                elif delay := subscriber.held_back(loop.time(), self._closed):
                    await _wait(subscriber.wakeup, delay)
                elif subscriber.items:
                    item = subscriber.take(self._latest, loop.time())
                    if not subscriber.parked:
                        self._unparked.add(subscriber)
                    yield item
                elif self._closed:
                    return
                else:
                    subscriber.wakeup.clear()
                    await subscriber.wakeup.wait()
        finally:
            self._limited.discard(subscriber)
            self._unparked.discard(subscriber)


async def _wait(wakeup: asyncio.Event, delay: float) -> None:
    """Wait until ``wakeup`` is set (a new kind of item, or the end) or ``delay`` passes."""
    wakeup.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await wakeup.wait()


def _interval(rate: float | None) -> float:
    """Seconds between coalescable items for ``rate`` items a second (0: no limit)."""
    if rate is None:
        return 0.0
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ConfigTypeError(f"rate must be a number of events per second, got {rate!r}")
    if not rate > 0:
        raise ConfigError(f"rate must be > 0 events per second (or None for all), got {rate!r}")
    return 1.0 / rate
