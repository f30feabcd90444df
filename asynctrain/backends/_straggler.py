"""An injected straggler: a backend wrapper whose tasks of one shard sleep on the worker.

Used by the modes benchmark and the tests to compare how sync, ssp and async mode cope
with one slow shard (one slow lane in async mode). The sleep happens on the worker, so a
straggling task occupies a worker as a slow machine would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import numpy.typing as npt

from asynctrain._types import State
from asynctrain.backends._base import Backend

T = TypeVar("T")


class Straggle:
    """Call ``fn``, first sleeping ``delay`` seconds if its last argument is a task of
    shard ``shard``. Picklable (for the process backend) when ``fn`` is.

    Example:
        >>> from asynctrain._engine._work import ShardTask
        >>> slow = Straggle(lambda task: task.shard, shard=0, delay=0.0)
        >>> slow(ShardTask(0, 0, 0, 0, 0, None))
        0
    """

    def __init__(self, fn: Callable[..., T], *, shard: int, delay: float) -> None:
        self.fn, self.shard, self.delay = fn, shard, delay

    def __call__(self, *args: Any) -> Any:
        if args and getattr(args[-1], "shard", None) == self.shard:
            time.sleep(self.delay)
        return self.fn(*args)


class StragglerBackend:
    """Wrap ``backend`` so that every task of shard ``shard`` sleeps ``delay`` seconds first.

    Everything else is the wrapped backend's: the trainer treats it as a backend object it
    does not own (close the wrapped backend yourself).

    Args:
        backend: the backend doing the work.
        shard: the straggling shard (in async mode, the straggling lane).
        delay: seconds each of its tasks sleeps on the worker.

    Example:
        >>> import asynctrain as at
        >>> async def demo():
        ...     async with at.backends.ThreadBackend(workers=2) as inner:
        ...         slow = StragglerBackend(inner, shard=0, delay=0.01)
        ...         return await slow.run(pow, 2, 5)
        >>> at.run(demo())
        32
    """

    def __init__(self, backend: Backend, *, shard: int = 0, delay: float = 0.05) -> None:
        self.backend, self.shard, self.delay = backend, shard, delay
        self.name = f"{backend.name}+straggler"
        self.inline = backend.inline

    @property
    def state(self) -> State:
        """The wrapped backend's state."""
        return self.backend.state

    @property
    def workers(self) -> int:
        """The wrapped backend's current number of workers."""
        return self.backend.workers

    async def resize(self, workers: int) -> None:
        """Resize the wrapped backend (the straggling shard stays slow whoever runs it)."""
        await self.backend.resize(workers)

    def check_picklable(self, *objects: object) -> None:
        """As the wrapped backend."""
        self.backend.check_picklable(*objects)

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn(*args)`` on the wrapped backend, late if it is the straggler's task."""
        result: T = await self.backend.run(Straggle(fn, shard=self.shard, delay=self.delay), *args)
        return result

    async def share(self, arrays: Mapping[str, npt.NDArray[Any]], *, slots: int = 1) -> Any:
        """Share through the wrapped backend."""
        return await self.backend.share(arrays, slots=slots)

    async def release(self, shared: Any) -> None:
        """Release through the wrapped backend."""
        await self.backend.release(shared)

    async def aclose(self) -> None:
        """Nothing of its own to close: the wrapped backend belongs to the caller."""

    async def __aenter__(self) -> Self:
        await self.backend.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leave the wrapped backend open: its owner closes it."""

    def __repr__(self) -> str:
        return f"<StragglerBackend {self.backend!r} shard={self.shard} delay={self.delay}>"
