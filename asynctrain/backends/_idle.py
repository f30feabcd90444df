"""Work a task leaves for its worker's idle time: run once the task's reply is on its way.

A process worker sits idle from its reply until the parent's next task arrives: the parent
reduces the step's gradients, updates the parameters and hands out the next step's
tasks, 0.3-1 ms a step on the benchmark problems. A task that knows what its worker will
need next (the next step's rows of its shards) can :func:`defer` fetching it into that
gap instead of paying for it at the start of the next task.

Only where a worker loop has called :func:`serve` (each process worker's main thread,
once) does :func:`defer` take work; everywhere else (thread workers, the event loop, the
inline backend) it returns False and the caller does without. Deferred work runs after the
reply is sent and before the next message is read: it never delays a reply, and a task
that arrives meanwhile waits at most for it. An exception it raises is dropped: deferred
work only prepares what a later task would otherwise do itself.

Example:
    >>> serve()
    >>> done = []
    >>> defer(lambda: done.append(1))
    True
    >>> run_deferred()
    >>> done
    [1]
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

_local = threading.local()


def serve() -> None:
    """Let tasks run on this thread :func:`defer` work (a worker loop calls it once)."""
    _local.pending = []


def defer(fn: Callable[[], object]) -> bool:
    """Run ``fn()`` on this worker once the current task's reply is sent; False (and
    ``fn`` never runs) where the task does not run on such a worker."""
    pending: list[Callable[[], object]] | None = getattr(_local, "pending", None)
    if pending is None:
        return False
    pending.append(fn)
    return True


def run_deferred() -> None:
    """Run what tasks deferred, in order, dropping their exceptions (the worker loop calls
    it after each reply)."""
    pending: list[Callable[[], object]] = _local.pending
    while pending:
        fn = pending.pop(0)
        with contextlib.suppress(Exception):  # preparation only: a later task does it itself
            fn()
