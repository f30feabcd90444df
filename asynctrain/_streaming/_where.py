"""Where a stream's batches are checked and re-cut: on the feed's threads, or on the loop.

A source batch's check (a copy into the trainer's batches and a few passes over its rows:
:func:`._batch.assemble_batch`) runs on one of the feed's threads, beside training. But
when the fit's steps compute on the event loop's own thread (small steps on the thread
backend: :class:`~asynctrain._engine._step.Placement`), a thread beside them buys no
parallelism worth its cost: its Python shares one GIL with those steps, and each trip pays
a wake-up of the thread, a wake of the loop and GIL hand-offs that stall the step in
progress. Measured on the ``stream`` benchmark's problem (softmax 128→10, batch 512,
1,000-row source batches, thread backend, a shared machine at load 3): a step computed on
the loop took a median 179-184 us with the feed's thread checking batches beside it, and
157-160 us with the checks made on the loop. So a batch of an async source is checked on
the loop when the steps are computed there and its check is measured to take at most the
budget a step on the loop has (:data:`~asynctrain._engine._step.LOOP_BUDGET`); a larger
batch, a sync source (whose ``next()`` may block) and steps that run on workers keep the
trip. The feed makes such a check between steps, not while a step waits for its update
(:meth:`~._feed.Feed.step_ended`).
"""

from __future__ import annotations

import collections
import statistics

from asynctrain._engine._step import LOOP_BUDGET, WINDOW, Placement


class CheckSite:
    """Decides, batch by batch, whether a stream batch is checked on the event loop.

    Nothing is checked on the loop until :meth:`follow` names the fit's placement, the
    steps it places run on the loop, and a check has been timed (:meth:`record`): the
    cost per row is the median of the last :data:`~asynctrain._engine._step.WINDOW`
    checks, wherever they ran.

    Example:
        >>> site = CheckSite()
        >>> site.record(1_000, 100e-6)  # a 1,000-row batch took 100 us to check
        >>> site.here(1_000)  # no placement followed yet
        False
    """

    def __init__(self) -> None:
        self._placement: Placement | None = None
        self._per_row: collections.deque[float] = collections.deque(maxlen=WINDOW)
        self._cost = float("inf")  # seconds per row: the median of _per_row

    def follow(self, placement: Placement) -> None:
        """Check on the loop only while ``placement`` (the fit's) computes steps there."""
        self._placement = placement

    def here(self, rows: int | None) -> bool:
        """Whether a batch of ``rows`` rows (None: not known) is checked on the loop."""
        if self._placement is None or not self._placement.on_loop or not rows:
            return False
        return self._cost * rows <= LOOP_BUDGET

    def record(self, rows: int | None, seconds: float) -> None:
        """Learn that checking a batch of ``rows`` rows took ``seconds``."""
        if rows:
            self._per_row.append(seconds / rows)
            self._cost = statistics.median(self._per_row)
