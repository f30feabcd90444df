"""Workers' CPU priority: below the event loop's, so a loop that wakes runs at once.

A worker (a thread of the thread backend, the main thread of a process-backend worker)
computes for milliseconds at a time; the event loop wakes often and works briefly. Two
settings, both kept per thread on Linux, keep the workers from holding the loop up:

* ``nice +``:data:`NICENESS`: when the loop and a worker both want a core, the loop gets
  more of it;
* the ``SCHED_BATCH`` policy: waking a worker never preempts the thread that woke it. The
  loop wakes a worker whenever it hands it a task (a write to its pipe, a lock released);
  under the normal policy the kernel may switch to the woken worker right there, on the
  loop's own core, and the loop waits for its core back, a hand-off half done, while the
  worker computes. Measured on the service benchmark's process scenario (2 workers, the
  reference MLP, a 1 ms heartbeat, quiet machine): 16-23 of about 1,050 pipe writes in
  3 s took 1-4 ms of wall time for 50-70 us of CPU, and the loop's p99 lag was 2.3-3.7 ms;
  with ``SCHED_BATCH`` no write took over 0.2 ms, and the p99 lag was 1.4 ms without
  the HTTP client (2.1-2.7 ms with it, against 3.2-3.7). A batch worker keeps its fair
  share of the CPU: only its wake-up preemption goes.
"""

from __future__ import annotations

import contextlib
import os
import sys

NICENESS = 5
"""What a worker adds to its nice value."""


def lower_priority() -> None:
    """Run the calling thread below the event loop's priority: nice +:data:`NICENESS`
    and ``SCHED_BATCH`` (Linux only).

    Linux keeps both per thread, so this affects the calling thread alone; elsewhere a
    nice value belongs to the whole process, event loop included, so it does nothing.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.nice(NICENESS)
        batch_policy()


def lower_process_priority(niceness: int) -> None:
    """Run this process (a worker of its own) below its parent: nice +``niceness``, and
    ``SCHED_BATCH`` for the calling thread where the platform has it."""
    os.nice(niceness)
    batch_policy()


def batch_policy() -> bool:
    """Give the calling thread the ``SCHED_BATCH`` policy (its nice value kept), where
    the platform has it and allows it, and say whether it did; otherwise leave it as
    it is."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux; refused by a sandbox
        return False
    return True
