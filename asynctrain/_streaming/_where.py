"""Where a stream's batches are checked and re-cut: on the event loop, or on the feed's threads.

A source batch's check (a copy into the trainer's batches and a few passes over its rows:
:func:`._batch.assemble_batch`) used to take a trip to one of the feed's threads. Once the
fit's first step has run, a batch of an async source whose check is measured to take at
most the budget a step on the loop has (:data:`~asynctrain._engine._step.LOOP_BUDGET`) is
checked on the loop instead, because the thread bought no parallelism worth its cost:

* when the steps compute on the loop's own thread (small steps on the thread backend:
  :class:`~asynctrain._engine._step.Placement`), the thread shares one GIL with them, and
  each trip paid a wake-up, a wake of the loop and GIL hand-offs that stalled the step in
  progress (measured on the ``stream`` benchmark's problem, softmax 128→10, batch 512,
  1,000-row source batches, at load 3: a step on the loop took a median 179-184 us with
  the thread checking beside it, 157-160 us with the checks on the loop). Such a check
  is made between two steps (:meth:`~._feed.Feed.step_ended`), not while a step waits
  for its update, whose Python would take turns at the GIL with it;
* when the steps run in worker processes, the loop is idle while they compute: a check
  made there overlaps their math without a trip (the ``stream`` benchmark's process
  throughput ratio went from a median 0.77 to 0.83 over 4 interleaved runs, load 3-4),
  and delays a result that arrives meanwhile by at most the budget.

A larger batch and a sync source (whose ``next()`` may block) keep the trip, and so does
a stream's first batch (it is checked before the first step; nothing is timed yet).
"""

from __future__ import annotations

from asynctrain._engine._step import LOOP_BUDGET, WINDOW, Placement
from asynctrain._engine._window import Window


class CheckSite:
    """Decides, batch by batch, whether a stream batch is checked on the event loop.

    Nothing is checked on the loop until :meth:`follow` names the fit's placement and a
    check has been timed (:meth:`record`): the cost per row is the median of the last
    :data:`~asynctrain._engine._step.WINDOW` checks, wherever they ran.

    Example:
        >>> site = CheckSite()
        >>> site.record(1_000, 100e-6)  # a 1,000-row batch took 100 us to check
        >>> site.here(1_000)  # no placement followed yet
        False
        >>> site.follow(Placement())
        >>> site.here(1_000), site.here(10_000)  # 100 us and 1 ms of checking
        (True, False)
    """

    def __init__(self) -> None:
        self._placement: Placement | None = None
        self._per_row = Window(WINDOW)  # seconds per row of recent checks

    def follow(self, placement: Placement) -> None:
        """Check on the loop from now on; ``placement`` (the fit's) says whether a check
        waits for the step in progress (:attr:`between_steps`)."""
        self._placement = placement

    def here(self, rows: int | None) -> bool:
        """Whether a batch of ``rows`` rows (None: not known) is checked on the loop."""
        if self._placement is None or not rows:
            return False
        return self._per_row.median * rows <= LOOP_BUDGET

    @property
    def between_steps(self) -> bool:
        """Whether a check on the loop waits until no step is in progress: while the
        steps compute on the loop, and before the placement has run a step (the first
        may compute there)."""
        placement = self._placement
        return placement is not None and (placement.on_loop or not placement.steps)

    def record(self, rows: int | None, seconds: float) -> None:
        """Learn that checking a batch of ``rows`` rows took ``seconds``."""
        if rows:
            self._per_row.add(seconds / rows)
