"""Broadcast: one producer, many subscribers that may join late, none of which can stall it.

The producer's ``publish`` never waits and never allocates beyond fixed bounds: the
stream keeps the newest ``history`` items for late joiners, and each subscriber has its
own buffer of ``buffer`` items. A subscriber that falls behind loses its oldest items and
receives a :class:`Lagged` marker saying how many it missed, in their place.

A subscriber may ask for at most ``rate`` items a second of the kind the stream may
coalesce (progress, such as step events): of a run of such items arriving faster, it
receives only the latest, and it always receives the latest one before any other item
and before the stream ends. Other items are never delayed or dropped by the rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from asynctrain._checks import check_int
from asynctrain._exceptions import ConfigError, ConfigTypeError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Lagged:
    """In place of events a slow subscriber missed: ``missed`` of them, the oldest first."""

    missed: int
    kind: Literal["lagged"] = "lagged"


class _Subscriber(Generic[T]):
    __slots__ = ("coalesce", "interval", "items", "last_progress", "missed", "ready_at", "wakeup")

    def __init__(
        self,
        replay: Iterable[tuple[T, bool]],
        buffer: int,
        *,
        coalesce: Callable[[T], bool] | None = None,
        interval: float = 0.0,
    ) -> None:
        self.items: deque[T] = deque(maxlen=buffer)
        self.last_progress = False  # items[-1] may be coalesced (when there are items)
        self.missed = 0
        self.wakeup = asyncio.Event()
        self.coalesce = coalesce if interval > 0 else None
        self.interval = interval
        self.ready_at = -math.inf  # loop time before which no coalescable item is yielded
        for item, progress in replay:
            self.push(item, progress)

    def push(self, item: T, progress: bool) -> None:
        """Hold ``item`` (``progress``: it may be coalesced); on every publish, so cheap."""
        if progress and self.last_progress and self.coalesce is not None and self.items:
            self.items[-1] = item  # the waiting reader already knows an item is there
            return
        if len(self.items) == self.items.maxlen:
            self.missed += 1  # deque drops the oldest on append
        self.items.append(item)
        self.last_progress = progress
        self.wakeup.set()

    def held_back(self, now: float, closed: bool) -> float:
        """Seconds to wait before the head may be yielded (0: yield it now)."""
        if self.coalesce is None or closed or len(self.items) != 1:
            return 0.0  # the latest progress goes out before any other item, and at the end
        return max(0.0, self.ready_at - now) if self.coalesce(self.items[0]) else 0.0

    def taken(self, item: T, now: float) -> T:
        if self.coalesce is not None and self.coalesce(item):
            self.ready_at = now + self.interval
        return item


class Broadcast(Generic[T]):
    """A bounded fan-out stream; see the module docstring.

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
        # Each item with whether it may be coalesced: asked once per item, not once per
        # subscriber (publish runs on the loop for every subscriber of a fast fit).
        self._history: deque[tuple[T, bool]] = deque(
            maxlen=check_int("history", history, minimum=0)
        )
        self._buffer = check_int("buffer", buffer)
        self._coalesce = coalesce
        self._subscribers: set[_Subscriber[T]] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: subscribers end after the last item."""
        return self._closed

    @property
    def subscribers(self) -> int:
        """Subscribers currently reading."""
        return len(self._subscribers)

    def publish(self, item: T) -> None:
        """Hand ``item`` to every subscriber and the history; never waits."""
        if self._closed:
            raise RuntimeError("publish on a closed Broadcast")
        progress = self._coalesce is not None and self._coalesce(item)
        self._history.append((item, progress))
        for subscriber in self._subscribers:
            subscriber.push(item, progress)

    def close(self) -> None:
        """End the stream: subscribers receive what they hold, then stop (idempotent)."""
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.wakeup.set()

    async def subscribe(self, *, rate: float | None = None) -> AsyncGenerator[T | Lagged, None]:
        """Iterate over the recent history, then live items, until the stream closes.

        The subscriber joins when iteration starts; it yields a :class:`Lagged` marker
        wherever items were dropped because it read too slowly (or the history it joined
        was longer than its buffer).

        Args:
            rate: at most this many coalescable items a second (the latest of each run
                of them; see the module docstring); None or ``math.inf``: every item.

        Raises:
            ConfigError, ConfigTypeError: ``rate`` is not a positive number.
        """
        interval = _interval(rate)
        loop = asyncio.get_running_loop()
        subscriber = _Subscriber(
            self._history, self._buffer, coalesce=self._coalesce, interval=interval
        )
        self._subscribers.add(subscriber)
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
                    yield subscriber.taken(subscriber.items.popleft(), loop.time())
                elif self._closed:
                    return
                else:
                    subscriber.wakeup.clear()
                    await subscriber.wakeup.wait()
        finally:
            self._subscribers.discard(subscriber)


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
