"""Calling an object from a second event loop while the one that opened it is closed,
stopped, or running in a thread of its own (the cases every backend's aclose and
release must survive)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

OPENERS = ["closed", "stopped", "running"]
"""What becomes of the first loop once ``use()`` has run on it."""


@contextlib.contextmanager
def used_then_another_loop(
    new_loop: Any, opener: str, use: Callable[[], Awaitable[Any]]
) -> Iterator[tuple[Any, asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]]:
    """Run ``use()`` on a first loop, left ``opener`` ("closed", "stopped", or "running"
    in a thread of its own), then yield its result, that loop and a second one to call
    from; both loops are closed (the thread stopped) afterwards."""
    first = new_loop()
    thread = None
    if opener == "running":
        thread = threading.Thread(target=first.run_forever)
        thread.start()
        result = asyncio.run_coroutine_threadsafe(use(), first).result(timeout=60)
    else:
        result = first.run_until_complete(use())
        if opener == "closed":
            first.close()
    second = new_loop()
    try:
        yield result, first, second
    finally:
        second.close()
        if thread is not None:
            first.call_soon_threadsafe(first.stop)
            thread.join()
        first.close()
        # Tasks left pending on a closed loop (a Dask client's) are finalized now, not
        # inside whatever the collector next interrupts: one finalized during pytest's
        # ast.parse of a module broke CPython 3.11's AST recursion count (SystemError).
        gc.collect()
