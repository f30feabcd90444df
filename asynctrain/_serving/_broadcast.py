"""Broadcast: one producer, many subscribers that may join late, none of which can stall it.

The producer's ``publish`` never waits and never allocates beyond fixed bounds: the
stream keeps the newest ``history`` items for late joiners, and each subscriber has its
own buffer of ``buffer`` items. A subscriber that falls behind loses its oldest items and
receives a :class:`Lagged` marker saying how many it missed, in their place.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from asynctrain._checks import check_int

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Lagged:
    """In place of events a slow subscriber missed: ``missed`` of them, the oldest first."""

    missed: int
    kind: Literal["lagged"] = "lagged"


class _Subscriber(Generic[T]):
    __slots__ = ("items", "missed", "wakeup")

    def __init__(self, replay: Iterable[T], buffer: int, missed: int) -> None:
        self.items: deque[T] = deque(replay, maxlen=buffer)
        self.missed = missed
        self.wakeup = asyncio.Event()

    def push(self, item: T) -> None:
        if len(self.items) == self.items.maxlen:
            self.missed += 1  # deque drops the oldest on append
        self.items.append(item)
        self.wakeup.set()


class Broadcast(Generic[T]):
    """A bounded fan-out stream; see the module docstring.

    Args:
        history: newest items replayed to a subscriber when it joins.
        buffer: items held per subscriber before its oldest are dropped.

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

    def __init__(self, *, history: int = 1024, buffer: int = 256) -> None:
        self._history: deque[T] = deque(maxlen=check_int("history", history, minimum=0))
        self._buffer = check_int("buffer", buffer)
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
        self._history.append(item)
        for subscriber in self._subscribers:
            subscriber.push(item)

    def close(self) -> None:
        """End the stream: subscribers receive what they hold, then stop (idempotent)."""
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.wakeup.set()

    async def subscribe(self) -> AsyncGenerator[T | Lagged, None]:
        """Iterate over the recent history, then live items, until the stream closes.

        The subscriber joins when iteration starts; it yields a :class:`Lagged` marker
        wherever items were dropped because it read too slowly (or the history it joined
        was longer than its buffer).
        """
        missed = max(0, len(self._history) - self._buffer)
        subscriber = _Subscriber(self._history, self._buffer, missed)
        self._subscribers.add(subscriber)
        try:
            while True:
                if subscriber.missed:
                    yield Lagged(subscriber.missed)
                    subscriber.missed = 0
                elif subscriber.items:
                    yield subscriber.items.popleft()
                elif self._closed:
                    return
                else:
                    subscriber.wakeup.clear()
                    await subscriber.wakeup.wait()
        finally:
            self._subscribers.discard(subscriber)
