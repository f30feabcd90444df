"""Recent timings and their median, kept current as each arrives.

The engine decides where work runs from the median of its last few timings: where a
step's shards compute (:class:`~._step.Placement`), whether an update runs on the loop
(:class:`~._update.Updater`), where a stream's batches are checked
(:class:`~asynctrain._streaming._where.CheckSite`). Those questions are asked once or
twice a step and the timings arrive once a step, so the median is worked out when a
timing arrives, not each time it is read (``statistics.median`` of a window of 16 costs a
few microseconds, a fair share of a small step's own bookkeeping).
"""

from __future__ import annotations

import collections
import math


class Window:
    """The last ``size`` values added and their :attr:`median` (infinity while empty).

    Example:
        >>> window = Window(3)
        >>> window.median
        inf
        >>> for seconds in (5.0, 1.0, 2.0, 4.0):
        ...     window.add(seconds)
        >>> window.median, len(window)  # of 1.0, 2.0 and 4.0: 5.0 has left
        (2.0, 3)
        >>> window.add(6.0)
        >>> window.median  # of 2.0, 4.0 and 6.0
        4.0
    """

    __slots__ = ("_values", "median")

    def __init__(self, size: int) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=size)
        self.median = math.inf
        """The median of the values in the window (the mean of the middle two of an even
        count, as ``statistics.median``); infinity while there is none."""

    def add(self, value: float) -> None:
        """Add ``value``, dropping the oldest once the window is full."""
        self._values.append(value)
        ordered = sorted(self._values)
        middle = len(ordered) // 2
        if len(ordered) % 2:
            self.median = ordered[middle]
        else:
            self.median = (ordered[middle - 1] + ordered[middle]) / 2

    def __len__(self) -> int:
        return len(self._values)
