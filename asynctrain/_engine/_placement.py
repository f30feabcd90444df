"""Where a step's shards run: spread over the workers, or grouped into fewer tasks when a
shard's math is too small to pay for handing it to a worker.

Every shard task has a fixed cost besides its math: on threads an executor future, a
wake-up and GIL hand-offs; on processes a pickle, a pipe write and a reply. When a shard
computes for less than that, spreading a step's shards over more workers makes the step
slower, not faster. So a sync step on a thread, process or Dask backend hands its S shards
to the workers as ``k`` tasks of contiguous shards, each task computing its shards one
after another on one worker, with ``k`` chosen from what the fit has measured so far:

* ``t``: the median seconds one shard computes, as measured on the workers;
* ``h``: the median seconds a step spends beyond its slowest task's math, per task
  (hand-off, wake-ups, the wait for the last reply);
* the step is predicted to take ``ceil(S / k) * t + k * h``; ``k`` is the value in
  ``1 .. min(S, workers)`` that minimises it (the smaller on a tie).

A fit runs one task per shard (``k = S``, as a step always did) until it has measured
:data:`MEASURED` steps; its first :data:`WARM_UP` steps are not measured (first-touch page
faults, imports on the workers). A short fit (fewer than 11 steps) never groups. Each shard still
writes its own gradient slot and the updater still sums them in shard order, so the
parameters are bit-identical whatever ``k`` is: where shards run changes the time only.
Pure Python: no asyncio, no arrays.
"""

from __future__ import annotations

import collections
import math
import statistics
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

WARM_UP = 3
"""Steps of a fit that are not measured."""
MEASURED = 8
"""Measured steps before the first step that may group its shards."""
WINDOW = 16
"""Steps whose measurements the medians are taken over."""


class Placement:
    """Chooses how many tasks a step's shards go to; see the module docstring.

    Example:
        >>> placement = Placement()
        >>> [len(g) for g in placement.split(list(range(4)), workers=2)]  # measuring
        [1, 1, 1, 1]
        >>> for _ in range(WARM_UP + MEASURED):  # shards of 10 us, hand-offs of 200 us
        ...     placement.record([4], [40e-6], 240e-6)
        >>> [len(g) for g in placement.split(list(range(4)), workers=2)]
        [4]
    """

    def __init__(self) -> None:
        self._seen = 0
        self._shard_seconds: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self._handoff_seconds: collections.deque[float] = collections.deque(maxlen=WINDOW)

    def tasks(self, shards: int, workers: int) -> int:
        """How many tasks the next step of ``shards`` shards goes to on ``workers``."""
        if len(self._shard_seconds) < MEASURED:
            return max(shards, 1)
        most = max(1, min(shards, workers))
        t = statistics.median(self._shard_seconds)
        h = statistics.median(self._handoff_seconds)
        return min(range(1, most + 1), key=lambda k: math.ceil(shards / k) * t + k * h)

    def split(self, items: Sequence[T], workers: int) -> list[list[T]]:
        """``items`` (a step's shard tasks, in shard order) cut into :meth:`tasks`
        contiguous groups, as even as can be, the larger ones first."""
        k = self.tasks(len(items), workers)
        size, extra = divmod(len(items), k)
        groups, start = [], 0
        for i in range(k):
            stop = start + size + (i < extra)
            groups.append(list(items[start:stop]))
            start = stop
        return groups

    def record(self, sizes: Sequence[int], seconds: Sequence[float], wall: float) -> None:
        """Learn from a step that ran groups of ``sizes`` shards, each computing for
        ``seconds`` on its worker, in ``wall`` seconds on the loop's clock."""
        self._seen += 1
        if self._seen <= WARM_UP or not sizes:
            return
        shards = sum(sizes)
        self._shard_seconds.append(sum(seconds) / shards)
        self._handoff_seconds.append(max(wall - max(seconds), 0.0) / len(sizes))
