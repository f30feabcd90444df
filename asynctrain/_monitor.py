"""LoopLagMonitor: how late the event loop runs its callbacks, measured by a heartbeat.

A heartbeat callback is scheduled with ``loop.call_later(interval)``; each time it runs,
the time past its due moment is one lag sample. A loop that is free runs it within a
fraction of a millisecond; a loop blocked by array math, a GIL-holding thread or a
synchronous call runs it late by the length of the block. No thread, no sleep loop:
the heartbeat is one timer callback at a time, on the loop being measured.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from types import TracebackType
from typing import NamedTuple, Self

from asynctrain._checks import check_float, check_int
from asynctrain._exceptions import StateError

TRAINING_INTERVAL = 0.01
"""Seconds between the heartbeats of a monitor that watches a loop while it trains
(``fit(monitor_lag=True)``, a :class:`~asynctrain.TrainingService`'s own monitor). Each
heartbeat takes the GIL from a thread backend's workers. Measured, the reference MLP on
the thread backend with 2 workers, epochs of a fit with a 1 ms and a 10 ms heartbeat over
epochs without, 7 interleaved repeats: 0.906 and 0.995; the service's training, 4 paired
runs twice: 0.938 / 0.926 with 1 ms, 0.977 / 0.971 with 10 ms."""


class LagStats(NamedTuple):
    """Loop lag over the monitor's window, in milliseconds (NaN before the first beat).

    Attributes:
        p50_ms: median lag.
        p99_ms: 99th percentile (nearest rank).
        max_ms: largest lag in the window.
        samples: heartbeats in the window.
        beats: heartbeats since the monitor started.
    """

    p50_ms: float
    p99_ms: float
    max_ms: float
    samples: int
    beats: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """The three figures as a flat dict, e.g. ``{"loop_lag_p99_ms": 0.4, ...}``."""
        return {
            f"{prefix}p50_ms": self.p50_ms,
            f"{prefix}p99_ms": self.p99_ms,
            f"{prefix}max_ms": self.max_ms,
        }


class LoopLagMonitor:
    """Measure the lag of the running event loop with a heartbeat every ``interval`` s.

    Use it as an async context manager around the code to watch, or call
    :meth:`start` / :meth:`stop` yourself (e.g. for the lifetime of a service). Reading
    :meth:`stats` is cheap (it sorts at most ``window`` floats) and works while running.

    Args:
        interval: seconds between heartbeats (default 1 ms).
        window: the newest lag samples kept for the statistics (memory stays bounded);
            the default, 1000, is the last second at 1 ms and sorts in ~30 µs.

    Raises:
        ConfigError: ``interval`` not in (0, 1] or ``window < 1``.

    Example:
        >>> import asynctrain as at
        >>> async def main():
        ...     async with at.LoopLagMonitor() as lag:
        ...         await asyncio.sleep(0.05)
        ...     return lag.stats().samples > 0
        >>> at.run(main())
        True
    """

    def __init__(self, *, interval: float = 0.001, window: int = 1000) -> None:
        self.interval = check_float("interval", interval, inclusive=False, maximum=1.0)
        self.window = check_int("window", window)
        self._lags: deque[float] = deque(maxlen=self.window)
        self._beats = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._handle is not None

    def start(self) -> None:
        """Start the heartbeat on the running loop (call from a coroutine or callback).

        Raises:
            StateError: the monitor is already running.
            RuntimeError: no event loop is running in this thread.
        """
        if self.running:
            raise StateError(f"{self!r} is already running; stop it first")
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        """Stop the heartbeat (idempotent); the samples stay readable."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def reset(self) -> None:
        """Forget the samples (e.g. to measure a new phase with a running monitor)."""
        self._lags.clear()
        self._beats = 0

    def stats(self) -> LagStats:
        """p50/p99/max lag over the window, in milliseconds."""
        ordered = sorted(self._lags)
        if not ordered:
            return LagStats(math.nan, math.nan, math.nan, 0, self._beats)
        return LagStats(
            _nearest_rank(ordered, 0.50) * 1e3,
            _nearest_rank(ordered, 0.99) * 1e3,
            ordered[-1] * 1e3,
            len(ordered),
            self._beats,
        )

    def _schedule(self) -> None:
        assert self._loop is not None
        # perf_counter, not loop.time(): uvloop's clock is cached at millisecond resolution.
        self._due = time.perf_counter() + self.interval
        self._handle = self._loop.call_later(self.interval, self._beat)

    def _beat(self) -> None:
        # A timer may fire slightly early against perf_counter (uvloop rounds to the
        # millisecond): that is no lag, not a negative one.
        self._lags.append(max(0.0, time.perf_counter() - self._due))
        self._beats += 1
        self._schedule()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<LoopLagMonitor interval={self.interval * 1e3:g}ms beats={self._beats} {state}>"


def _nearest_rank(ordered: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ascending ``ordered`` (numpy: inverted_cdf)."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
