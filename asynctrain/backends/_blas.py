"""Limit BLAS threads while a backend is open, so workers × BLAS threads ≤ cores."""

from __future__ import annotations

from typing import Any

from threadpoolctl import ThreadpoolController


class BlasLimit:
    """Set BLAS thread pools to ``threads`` on ``apply`` and restore them on ``restore``.

    BLAS pools are process-wide, so nested limits restore in reverse order of application.
    The loaded libraries are scanned at each ``apply`` (a few milliseconds, once per
    backend): a library loaded since the last scan (scipy's own OpenBLAS, say) must be
    limited too.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._limiter: Any = None

    def apply(self) -> None:
        """Apply the limit (idempotent)."""
        if self._limiter is None:
            self._limiter = ThreadpoolController().limit(limits=self.threads, user_api="blas")

    def restore(self) -> None:
        """Restore the limits seen at ``apply`` (idempotent)."""
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.restore_original_limits()
