"""The backend seam: how a shard's work reaches an executor and how arrays are shared.

A backend knows nothing of models, optimizers or queues. It offers three things:

* ``await backend.run(fn, *args)``: run a picklable function somewhere and return its result;
* ``await backend.share(arrays, slots=k)``: make arrays reachable from wherever ``run``
  executes, once, returning a small :class:`SharedArrays` handle that tasks carry instead of
  the arrays themselves (thread/inline: the arrays; process: shared memory);
* ``await backend.aclose()``: release everything it started.

Its pool may change size at any time (``await backend.resize(n)``; ``backend.workers`` is
the current size): shard results are reduced by shard index, never by worker, so a fit
neither knows nor cares which worker ran a shard.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from asynctrain._types import State

T = TypeVar("T")
Arrays = dict[str, npt.NDArray[Any]]


@runtime_checkable
class SharedArrays(Protocol):
    """A handle to ``slots`` sets of named arrays, reachable from a backend's workers.

    Slot contents have fixed names, shapes and dtypes (those given to ``share``). Workers
    and the owner both ``read`` and ``write`` slots; who writes which slot when is the
    caller's protocol (the trainer writes parameters, each shard task its own gradient
    slot), so a slot is never read while it is being written.
    """

    slots: int

    def read(self, slot: int = 0) -> Arrays:
        """Return the arrays in ``slot`` (views; copy before the slot is written again)."""
        ...

    def write(self, slot: int, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Make ``arrays`` the contents of ``slot`` (by reference or by copy)."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Runs shard functions on some executor; see the module docstring.

    Every backend is an async context manager with three states, unopened, open and
    closed: ``run`` and ``share`` open it on first use; after ``aclose`` they raise
    :class:`~asynctrain.StateError`.
    """

    name: str
    """A short name for reprs and reports, e.g. ``"process"``."""
    inline: bool
    """True when ``run`` computes on the event loop's own thread (the inline backend): the
    trainer then applies updates there too, instead of on a thread of their own."""

    @property
    def state(self) -> State:
        """Where the backend is in its lifecycle: unopened, open or closed."""
        ...

    @property
    def workers(self) -> int:
        """How many shard tasks it runs at once: the current size of its pool."""
        ...

    async def resize(self, workers: int) -> None:
        """Make the pool ``workers`` strong, even while a fit runs; see
        :meth:`ThreadBackend.resize <asynctrain.backends.ThreadBackend.resize>`.

        Returns once the pool has that size. Leaving workers finish their task first (or
        it re-runs elsewhere); the results of a fit stay bit-identical. An unopened backend
        records the size; a backend that cannot resize raises ConfigError.
        """
        ...

    def check_picklable(self, *objects: object) -> None:
        """Raise ConfigError naming the culprit if an object cannot reach the workers
        (workers in other processes need pickles); a no-op for in-process backends."""
        ...

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn(*args)`` on the backend and return its result.

        Exceptions raised by ``fn`` propagate with their own type. Cancelling the awaiting
        task cancels the work if it has not started and otherwise waits for it to finish or
        stops it (work is never left running behind the caller).
        """
        ...

    async def share(self, arrays: Mapping[str, npt.NDArray[Any]], *, slots: int = 1) -> Any:
        """Share ``arrays`` with the workers once; every slot starts as a copy of them.

        Returns a :class:`SharedArrays` handle that is cheap to pass to ``run``.
        """
        ...

    async def release(self, shared: Any) -> None:
        """Free what ``share`` allocated for ``shared`` (no-op for in-process backends)."""
        ...

    async def aclose(self) -> None:
        """Stop the workers and free every shared array; idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class LocalShared:
    """:class:`SharedArrays` for executors in this process: slots hold references.

    ``write`` stores the given arrays themselves (no copy). Callers hand over arrays they
    will not mutate afterwards: the trainer publishes each parameter version as new
    arrays, and a shard's gradient arrays are fresh from ``loss_and_grad``.
    """

    __slots__ = ("_slots", "slots")

    def __init__(self, arrays: Mapping[str, npt.NDArray[Any]], slots: int = 1) -> None:
        self.slots = slots
        self._slots: list[Arrays] = [dict(arrays) for _ in range(slots)]

    def read(self, slot: int = 0) -> Arrays:
        """Return the arrays last written to ``slot``."""
        return self._slots[slot]

    def write(self, slot: int, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Store ``arrays`` in ``slot`` by reference."""
        self._slots[slot] = dict(arrays)

    def __repr__(self) -> str:
        shapes = {k: v.shape for k, v in self._slots[0].items()}
        return f"<LocalShared slots={self.slots} arrays={shapes}>"


def readonly(arrays: Mapping[str, npt.NDArray[Any]]) -> Arrays:
    """Return read-only views of ``arrays`` (the caller's arrays stay writable)."""
    views: Arrays = {}
    for key, value in arrays.items():
        view = np.asarray(value).view()
        view.flags.writeable = False
        views[key] = view
    return views
