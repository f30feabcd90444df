"""Limit BLAS threads while a backend is open, so workers × BLAS threads ≤ cores."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from threadpoolctl import ThreadpoolController

# BLAS pools belong to the process, so every holder shares one count: the first ``apply``
# limits, the last ``restore`` puts back what was there before the first, in whatever order
# backends (and scikit-learn fits) close.
_lock = threading.Lock()
_holders = 0
_limiters: list[Any] = []  # one per apply while held: each also limits libraries loaded since


class BlasLimit:
    """A hold on the process-wide BLAS limit of ``threads`` threads, reference counted.

    ``apply`` takes the hold (idempotent per object) and limits the BLAS libraries loaded
    by then (a scan of a few milliseconds: a library loaded since the last one, scipy's
    own OpenBLAS say, is limited too); ``restore`` releases it, and the last hold released
    restores the limits seen before the first. All holders ask for one thread today; a
    later holder asking for another count would change it for all until the last leaves.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._held = False

    def apply(self) -> None:
        """Take the hold and apply the limit (idempotent)."""
        global _holders
        with _lock:
            if self._held:
                return
            self._held = True
            _holders += 1
            _limiters.append(ThreadpoolController().limit(limits=self.threads, user_api="blas"))

    def restore(self) -> None:
        """Release the hold; the last one released restores the original limits."""
        global _holders
        with _lock:
            if not self._held:
                return
            self._held = False
            _holders -= 1
            if _holders == 0:
                while _limiters:
                    _limiters.pop().restore_original_limits()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the limit for the duration of a ``with`` block (a fresh hold each time)."""
        limit = BlasLimit(self.threads)
        limit.apply()
        try:
            yield
        finally:
            limit.restore()
