"""run(coro): the one place asynctrain creates an event loop (uvloop when installed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from asynctrain._exceptions import StateError

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when uvloop is importable, else None (asyncio's default)."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """Run ``main`` to completion on a new event loop (uvloop when available).

    For scripts and the CLI. Inside a running loop (a notebook, a service) ``await`` the
    training coroutine instead.

    Raises:
        StateError: called from a thread whose event loop is already running (a
            :class:`RuntimeError`); ``main`` is closed unstarted.

    Example:
        >>> async def answer():
        ...     return 42
        >>> run(answer())
        42
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop running in this thread: the normal case
        pass
    else:
        main.close()  # never started; closing it avoids "coroutine was never awaited"
        raise StateError(
            "asynctrain.run() was called inside a running event loop (a notebook, a "
            "service, another coroutine); await the coroutine there instead: "
            "`result = await main()`"
        )
    with asyncio.Runner(debug=debug, loop_factory=loop_factory()) as runner:
        return runner.run(main)
