"""Where a step's shards run: spread over the workers, or grouped into one task when a
shard's math is too small to pay for handing it to a worker.

Every shard task has a fixed cost besides its math: on threads an executor future, a
wake-up and GIL hand-offs; on processes a pickle, a pipe write and a reply. When a shard
computes for less than that, spreading a step's shards over more workers makes the step
slower, not faster. So a sync step on a thread, process or Dask backend hands its S
shards to the workers either spread (``min(S, workers)`` tasks of contiguous shards) or
grouped (one task that computes every shard in turn), whichever the fit has measured to
be faster:

* its first :data:`WARM_UP` steps run one task per shard, as a step always did, and are
  not timed (first-touch page faults, imports on the workers);
* the next :data:`MEASURED` steps alternate spread and grouped, timed on the loop's
  clock (per shard, so a short last batch counts alike);
* from then on a step takes the choice with the lower median time over its last
  :data:`WINDOW` steps (grouped on a tie), and every :data:`REPROBE`-th step tries the
  other, so a choice follows a fit whose costs change.

Measured, not predicted: on threads, two small tasks "in parallel" mostly wait for each
other's GIL, which no formula of compute and hand-off times captures. Each shard still
writes its own gradient slot and the updater still sums them in shard order, so the
parameters are bit-identical whatever is chosen: where shards run changes the time only.
Pure Python: no asyncio, no arrays.
"""

from __future__ import annotations

import collections
import statistics
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

WARM_UP = 8
"""Steps of a fit that run one task per shard and are not timed."""
MEASURED = 8
"""Timed steps, alternating spread and grouped, before the first choice."""
WINDOW = 16
"""Steps per choice whose times the medians are taken over."""
REPROBE = 32
"""Every this many steps, a step tries the choice not taken."""


class Placement:
    """Chooses how many tasks a step's shards go to; see the module docstring.

    Example:
        >>> placement = Placement()
        >>> [len(g) for g in placement.split(list(range(4)), workers=2)]  # warming up
        [1, 1, 1, 1]
        >>> for _ in range(WARM_UP + MEASURED):  # grouped steps take 100 us, spread 300
        ...     k = placement.tasks(4, workers=2)
        ...     placement.record(k, 4, 100e-6 if k == 1 else 300e-6)
        >>> [len(g) for g in placement.split(list(range(4)), workers=2)]
        [4]
    """

    def __init__(self) -> None:
        self._steps = 0
        self._times: dict[int, collections.deque[float]] = {}

    def tasks(self, shards: int, workers: int) -> int:
        """How many tasks the next step of ``shards`` shards goes to on ``workers``."""
        step = self._steps - WARM_UP
        if step < 0:
            return max(shards, 1)
        spread = max(1, min(shards, workers))
        if spread == 1:
            return 1
        if step < MEASURED:
            return 1 if step % 2 else spread
        best = min((1, spread), key=self._median)
        if step % REPROBE == 0:
            return spread if best == 1 else 1
        return best

    def _median(self, k: int) -> float:
        times = self._times.get(k)
        return statistics.median(times) if times else float("inf")

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

    def record(self, tasks: int, shards: int, seconds: float) -> None:
        """Learn from a step that ran ``shards`` shards as ``tasks`` tasks in ``seconds``
        (on the loop's clock, from handing them out to the last result)."""
        self._steps += 1
        if self._steps <= WARM_UP or shards < 1:
            return
        times = self._times.setdefault(tasks, collections.deque(maxlen=WINDOW))
        times.append(seconds / shards)
