"""Shared arrays for the Dask backend: what the owner keeps, and what a task carries.

A Dask worker is another process, often another machine, so a slot cannot be one piece of
memory. Instead each slot's contents travel in the way that suits how often they change:

* contents given to ``share`` (the dataset; the first parameters; zeroed gradient buffers)
  are scattered to every worker once, and a task carries only a reference to them;
* contents the owner ``write``s (a new parameter version every step) are carried by each
  task when small, or scattered to every worker once per write when large
  (``>= INLINE_LIMIT`` bytes), so no task pickles a megabyte of arrays;
* contents a task ``write``s (a shard's gradient) return to the owner inside the task's
  result envelope and are stored in the owner's slot. They are not sent out again until a
  task reads such a slot (local mode's per-shard optimizer state): that task is re-run
  once, and from then on the handle's task-written slots travel like owner writes.

So sync training never ships gradients back out, and every protocol still sees, in each
task, what the owner or an earlier task last wrote.

This module never imports ``distributed``: the worker side only needs numpy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import StateError
from asynctrain.backends._base import Arrays, readonly

INLINE_LIMIT = 1 << 20  # bytes: larger owner writes are scattered once, not carried per task

Scatter = Callable[["Payload"], Awaitable[Any]]


def nbytes(arrays: Mapping[str, npt.NDArray[Any]]) -> int:
    """Total bytes of ``arrays``."""
    return sum(np.asarray(value).nbytes for value in arrays.values())


def aligned(arrays: Mapping[str, npt.NDArray[Any]]) -> Arrays:
    """Read-only ``arrays``, copying any whose memory is not aligned to its item size.

    Dask may hand over arrays at odd offsets in a receive buffer; numpy computes on those
    through buffered loops whose reductions round differently, which would break
    bit-identity with the in-process backends.
    """
    return readonly({k: np.require(v, requirements="A") for k, v in arrays.items()})


class Payload:
    """Arrays in transit; unpickling aligns them and makes them read-only."""

    __slots__ = ("arrays",)

    def __init__(self, arrays: Arrays) -> None:
        self.arrays = arrays

    def __reduce__(self) -> tuple[Any, tuple[Arrays]]:
        return _unpack_payload, (self.arrays,)


def _unpack_payload(arrays: Arrays) -> Payload:
    return Payload(aligned(arrays))


class _Pending:
    """An owner write too large to carry: scattered on the next ``run``."""

    __slots__ = ("payload",)

    def __init__(self, arrays: Arrays) -> None:
        self.payload = Payload(arrays)


def carry_form(arrays: Arrays) -> Payload | _Pending:
    """How owner-held ``arrays`` travel: inside each task, or scattered once if large."""
    return Payload(arrays) if nbytes(arrays) < INLINE_LIMIT else _Pending(arrays)


class DaskShared:
    """:class:`~asynctrain.backends.SharedArrays` for :class:`DaskBackend`; see the module.

    The owner's ``read`` and ``write`` are local and cheap (the trainer's update thread
    writes each new parameter version here); the backend's ``run`` turns the handle into
    what a task carries. Pass the handle itself as an argument of ``run``.
    """

    def __init__(self, arrays: Arrays, slots: int, initial: Any) -> None:
        self.slots = slots
        self._local: list[Arrays] = [arrays] * slots
        self._carry: list[Any] = [initial] * slots  # Future | Payload | _Pending | None
        self._lock = asyncio.Lock()
        self._released = False
        self._carry_returned = False  # do tasks read slots that tasks wrote?

    def read(self, slot: int = 0) -> Arrays:
        """The arrays last written to ``slot`` (by the owner, or returned by a task)."""
        arrays = self._local[slot]
        if not all(value.flags.aligned for value in arrays.values()):
            arrays = self._local[slot] = aligned(arrays)
        return arrays

    def write(self, slot: int, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Make ``arrays`` the contents of ``slot``; tasks started afterwards see them."""
        owned = readonly(arrays)
        self._local[slot] = owned
        self._carry[slot] = carry_form(owned)

    def receive(self, written: Mapping[int, Arrays]) -> None:
        """Store the slots a task wrote (its result envelope's ``writes``)."""
        for slot, arrays in written.items():
            self._local[slot] = arrays
            # Payloads align on the receiving side: no copy here, on the event loop.
            self._carry[slot] = carry_form(arrays) if self._carry_returned else None

    def carry_returned(self) -> None:
        """From now on, send task-written slots to later tasks (a task needed one)."""
        self._carry_returned = True
        for slot, carry in enumerate(self._carry):
            if carry is None:
                self._carry[slot] = carry_form(self._local[slot])

    async def carried(self, scatter: Scatter) -> list[Any]:
        """What a task carries per slot, scattering large owner writes first (once each)."""
        if self._released:
            raise StateError(f"{self!r} was released; share the arrays again")
        async with self._lock:
            scattered: dict[int, Any] = {}  # slots sharing one pending payload share a scatter
            for slot, carry in enumerate(self._carry):
                if isinstance(carry, _Pending):
                    if id(carry) not in scattered:
                        scattered[id(carry)] = await scatter(carry.payload)
                    if self._carry[slot] is carry:  # not overwritten meanwhile
                        self._carry[slot] = scattered[id(carry)]
        return list(self._carry)

    def futures(self) -> list[Any]:
        """The scattered data this handle holds on the cluster."""
        return self._futures()

    def reshare(self, lost: set[str]) -> None:
        """Scatter again, from the owner's arrays, the data with ``lost`` keys (next run).

        Scattered data has no task to recompute it from: if every worker holding it dies
        (Dask may keep a single replica), the owner's copy is the only one left.
        """
        gone = {id(c): c for c in self._futures() if c.key in lost}
        again = {key: _Pending(self._local[self._carry.index(c)]) for key, c in gone.items()}
        self._carry = [again.get(id(c), c) for c in self._carry]

    def _futures(self) -> list[Any]:
        """The scattered data this handle holds on the cluster (to release)."""
        kinds = (Payload, _Pending, type(None))
        return [c for c in {id(c): c for c in self._carry}.values() if not isinstance(c, kinds)]

    def release(self) -> list[Any]:
        """Forget the cluster's copies; return the futures to release."""
        futures = self._futures()
        self._carry = [None] * self.slots
        self._released = True
        return futures

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{self!r} cannot be pickled: pass it directly as an argument of "
            "DaskBackend.run, which sends each task the slots' contents"
        )

    def __repr__(self) -> str:
        shapes = {k: v.shape for k, v in self._local[0].items()}
        state = " released" if self._released else ""
        return f"<DaskShared slots={self.slots} arrays={shapes}{state}>"


class HandleRef:
    """Stands in a task's arguments for the ``position``-th shared handle.

    A plain object, not a tuple: Dask looks for its own references inside containers.
    """

    __slots__ = ("position",)

    def __init__(self, position: int) -> None:
        self.position = position


class SlotNotCarried(BaseException):
    """A task read a slot its handle does not send yet; the backend re-runs the task.

    A BaseException so that user code catching ``Exception`` does not swallow it.
    """


class WorkerShared:
    """The worker's view of a :class:`DaskShared` handle during one task."""

    def __init__(self, carried: list[Payload | None]) -> None:
        self.slots = len(carried)
        self._carried = carried
        self.written: dict[int, Arrays] = {}
        self.missed = False

    def read(self, slot: int = 0) -> Arrays:
        """The slot's arrays as last written by the owner, an earlier task or this one."""
        if slot in self.written:
            return self.written[slot]
        payload = self._carried[slot]
        if payload is None:
            self.missed = True
            raise SlotNotCarried(slot)
        return payload.arrays

    def write(self, slot: int, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Record ``arrays`` for the owner; they return with the task's result."""
        self.written[slot] = dict(arrays)


class Call:
    """A function and its arguments, with shared handles replaced by :class:`HandleRef`.

    A plain object, so Dask sends it as one opaque value and never looks inside.
    """

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args


class Envelope(NamedTuple):
    """A task's result and the slots it wrote per shared handle, or, when the task read
    slots its handles did not send, the positions of those handles."""

    result: Any
    writes: list[dict[int, Arrays]]
    missed: list[int]


def run_on_worker(call: Call, carried: list[list[Payload | None]]) -> Envelope:
    """Run ``call`` on a Dask worker with views of its shared handles (Dask has resolved
    the scattered references in ``carried`` to their payloads)."""
    views = [WorkerShared(slots) for slots in carried]
    args = [views[a.position] if isinstance(a, HandleRef) else a for a in call.args]
    try:
        result = call.fn(*args)
    except SlotNotCarried:
        return Envelope(None, [], [i for i, view in enumerate(views) if view.missed])
    return Envelope(result, [view.written for view in views], [])


def pack(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Call, list[DaskShared]]:
    """Replace the :class:`DaskShared` handles among ``args`` by references to them."""
    handles: list[DaskShared] = []
    packed = []
    for arg in args:
        if isinstance(arg, DaskShared):
            packed.append(HandleRef(len(handles)))
            handles.append(arg)
        else:
            packed.append(arg)
    return Call(fn, tuple(packed)), handles
