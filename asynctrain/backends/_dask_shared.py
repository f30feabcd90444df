"""Shared arrays for the Dask backend: what the owner keeps, and what a task carries.

A Dask worker is another process, often another machine, so a slot cannot be one piece of
memory. Instead every slot's contents have an id, and each worker keeps the contents it
has been sent, by id, between tasks (:class:`~asynctrain.backends._dask_worker.WorkerStore`):

* the first task a worker runs on a handle carries the contents it lacks (the dataset;
  the first parameters); later tasks carry only their ids;
* an owner ``write`` (a new parameter version every step) gives the slot a new id: the
  next task on each worker carries it once, the worker's other tasks refer to it by id;
* contents a task ``write``s (a shard's gradient) return to the owner inside the task's
  result envelope and stay, by id, on the worker that wrote them. They are sent to other
  workers only once a task reads such a slot (local mode's per-shard optimizer state):
  that task is re-run once, and from then on the handle's task-written slots travel like
  owner writes. With the backend sending a shard to the same worker every step, a
  shard's optimizer state never leaves its worker.

A worker that lost what the owner thinks it holds (a new worker at an old address, an
evicted id) reports the ids it missed; the owner sends them again and re-runs the task.

This module never imports ``distributed``: the worker side only needs numpy.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import threading
import uuid
import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from asynctrain._exceptions import StateError
from asynctrain.backends._base import Arrays, readonly


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


class Content(NamedTuple):
    """A slot's contents sent to a worker that lacks them, with their id."""

    cid: str
    payload: Payload


Carried = Content | str | None
"""What a task carries for one slot: the contents, their id (the worker holds them), or
nothing (a task-written slot, not sent until a task reads one)."""


class Known(Protocol):
    """The ids one worker holds, as the owner believes (a set)."""

    def __contains__(self, cid: object, /) -> bool: ...

    def add(self, cid: str, /) -> None: ...


class _Slot(NamedTuple):
    cid: str
    arrays: Arrays
    by_task: bool


class DaskShared:
    """:class:`~asynctrain.backends.SharedArrays` for :class:`DaskBackend`; see the module.

    The owner's ``read`` and ``write`` are local and cheap (the trainer's update thread
    writes each new parameter version here); the backend turns the handle into what each
    task carries, per worker. Pass the handle itself as an argument of ``run``.
    """

    def __init__(self, arrays: Arrays, slots: int, *, content_id: str | None = None) -> None:
        self.slots = slots
        self.token = uuid.uuid4().hex
        self.content_id = content_id
        """The id of the first contents when it names them by content (see
        :func:`content_id`): workers may keep them for a later handle with the same."""
        self._serial = itertools.count()
        # Per slot: (id, arrays, written by a task?), replaced whole, so the loop never
        # sees an id with another version's arrays while the update thread writes.
        first = content_id or self._new_id()
        self._slots: list[_Slot] = [_Slot(first, arrays, False)] * slots
        self._carry_returned = False  # do tasks read slots that tasks wrote?
        self._released = False

    def _new_id(self) -> str:
        return f"{self.token}:{next(self._serial)}"

    def read(self, slot: int = 0) -> Arrays:
        """The arrays last written to ``slot`` (by the owner, or returned by a task)."""
        held = self._slots[slot]
        if not all(value.flags.aligned for value in held.arrays.values()):
            held = self._slots[slot] = held._replace(arrays=aligned(held.arrays))
        return held.arrays

    def write(self, slot: int, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Make ``arrays`` the contents of ``slot``; tasks started afterwards see them."""
        self._slots[slot] = _Slot(self._new_id(), readonly(arrays), False)

    def receive(self, written: Mapping[int, tuple[str, Arrays]], known: Known) -> None:
        """Store the slots a task wrote (its envelope's ``writes``) on the worker whose
        ids are ``known``: that worker keeps them."""
        for slot, (cid, arrays) in written.items():
            # Payloads align on the receiving side: no copy here, on the event loop.
            self._slots[slot] = _Slot(cid, arrays, True)
            known.add(cid)

    def holds_first(self) -> bool:
        """Whether slot 0 still holds the contents the handle was made with."""
        return self._slots[0].cid == self.content_id

    def carry_returned(self) -> None:
        """From now on, send task-written slots to later tasks (a task needed one)."""
        self._carry_returned = True

    def carried(self, known: Known) -> list[Carried]:
        """What a task on the worker holding ``known`` carries per slot; adds what it
        sends to ``known`` (the worker keeps it)."""
        if self._released:
            raise StateError(f"{self!r} was released; share the arrays again")
        out: list[Carried] = []
        for held in list(self._slots):
            if held.cid in known:
                out.append(held.cid)
            elif held.by_task and not self._carry_returned:
                out.append(None)
            else:
                out.append(Content(held.cid, Payload(held.arrays)))
                known.add(held.cid)
        return out

    def release(self) -> None:
        """Refuse further tasks (the backend tells the workers to drop their copies)."""
        self._released = True

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{self!r} cannot be pickled: pass it directly as an argument of "
            "DaskBackend.run, which sends each task the slots' contents"
        )

    def __repr__(self) -> str:
        shapes = {k: v.shape for k, v in self._slots[0].arrays.items()}
        state = " released" if self._released else ""
        return f"<DaskShared slots={self.slots} arrays={shapes}{state}>"


def content_id(arrays: Mapping[str, npt.NDArray[Any]]) -> str:
    """An id of ``arrays`` from their names, dtypes, shapes and bytes (SHA-256, 160 bits
    of it): equal arrays shared again get the same id, so a worker that kept them from an
    earlier fit is not sent them again.

    Hashes at about 1.3 GB/s per core (large arrays in two halves, one on a helper
    thread): call it off the loop. A read-only array's digest is remembered while the
    array lives, so sharing the same array object again (a Dataset's ``X`` in every fit)
    costs nothing; its memory must not change meanwhile (a Dataset's arrays must not).
    """
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = arrays[key]
        digest.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(array_digest(value))
    return "k" + digest.hexdigest()[:40]


HASH_SPLIT = 1 << 24  # bytes; larger arrays are hashed in two halves, on two threads
_digests: dict[int, tuple[weakref.ref[Any], bytes]] = {}  # id(array) -> (array, digest)


def array_digest(value: npt.NDArray[Any]) -> bytes:
    """The SHA-256 digest of ``value``'s bytes in C order; remembered for a read-only
    ndarray while it lives (its memory is taken not to change)."""
    key = id(value)
    held = _digests.get(key)
    read_only = isinstance(value, np.ndarray) and not value.flags.writeable
    if held is not None and held[0]() is value and read_only:
        return held[1]
    digest = _sha256(np.ascontiguousarray(value).reshape(-1).view(np.uint8).data)
    if read_only:
        _digests[key] = (weakref.ref(value, functools.partial(_forget_digest, key)), digest)
    return digest


def _forget_digest(key: int, _: object) -> None:
    _digests.pop(key, None)


def _sha256(data: memoryview) -> bytes:
    if len(data) < HASH_SPLIT:
        return hashlib.sha256(data).digest()
    half = len(data) // 2
    second: list[bytes] = []
    helper = threading.Thread(
        target=lambda: second.append(hashlib.sha256(data[half:]).digest()),
        name="asynctrain-hash",
    )
    helper.start()  # hashlib lets go of the GIL: the halves hash at once on two cores
    first = hashlib.sha256(data[:half]).digest()
    helper.join()
    return hashlib.sha256(first + second[0]).digest()


class HandleRef:
    """Stands in a task's arguments for the ``position``-th shared handle (with its
    ``token``, the key of what the worker keeps for it)."""

    __slots__ = ("position", "token")

    def __init__(self, position: int, token: str) -> None:
        self.position = position
        self.token = token


class Call:
    """A function and its arguments, with shared handles replaced by :class:`HandleRef`."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args

    @property
    def shard(self) -> int | None:
        """The shard of a shard task (its last argument's ``shard``), else None: the
        backend sends a shard to the same worker every step.

        A group of a sync step's shards (its last argument has ``tasks``) is None too, so
        it goes to the least busy worker: a sync step keeps no state on a worker, and the
        groups' first shards (0, 2, 3 for 4 shards on 3 workers) would not spread.
        """
        last = self.args[-1] if self.args else None
        if hasattr(last, "tasks"):
            return None
        shard = getattr(last, "shard", None)
        return shard if isinstance(shard, int) else None


class Envelope(NamedTuple):
    """A task's outcome: its result and the slots it wrote per handle (id and arrays);
    or the exception it raised; or, when it read what its worker lacked, the handles
    (positions) and ids it missed."""

    result: Any
    writes: list[dict[int, tuple[str, Arrays]]]
    missed: list[tuple[int, str | None]]
    error: BaseException | None = None


def pack(fn: Any, args: tuple[Any, ...]) -> tuple[Call, list[DaskShared]]:
    """Replace the :class:`DaskShared` handles among ``args`` by references to them."""
    handles: list[DaskShared] = []
    packed = []
    for arg in args:
        if isinstance(arg, DaskShared):
            packed.append(HandleRef(len(handles), arg.token))
            handles.append(arg)
        else:
            packed.append(arg)
    return Call(fn, tuple(packed)), handles
