"""What lives on a Dask worker between tasks: the slot contents it was sent, by id.

:class:`WorkerStore` is a Dask actor, one per worker, created by the backend. The backend
sends it a batch of calls at a time (every call of one step that goes to this worker);
it runs them in order, on the worker's actor thread, and returns one
:class:`~asynctrain.backends._dask_shared.Envelope` per call. It keeps each handle's slot
contents by id (see :mod:`asynctrain.backends._dask_shared`), one version per slot, so a
step's tasks carry parameter ids and sample indices, not arrays.

This module never imports ``distributed``.
"""

from __future__ import annotations

import collections
import pickle
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from asynctrain._exceptions import BackendError
from asynctrain.backends._base import Arrays
from asynctrain.backends._dask_shared import Call, Carried, Content, Envelope, HandleRef

KEPT = "kept:"
"""Binding prefix of contents kept after their handle was released."""


class SlotMissing(BaseException):
    """A task read a slot its worker does not hold; the backend re-runs the task.

    A BaseException so that user code catching ``Exception`` does not swallow it.
    """


class WorkerStore:
    """Slot contents kept on one worker, by id, and the batches of calls that use them."""

    def __init__(self) -> None:
        self._contents: dict[str, Arrays] = {}
        self._bound: dict[tuple[str, int], str] = {}  # (handle token, slot) -> id
        self._uses: collections.Counter[str] = collections.Counter()
        self._prefix = uuid.uuid4().hex[:12]
        self._writes = 0
        self.calls = 0

    def execute(self, batch: list[tuple[Call, list[list[Carried]]]]) -> list[Envelope]:
        """Run each ``(call, carried)`` of ``batch`` in order; one envelope per call."""
        return [self._run(call, carried) for call, carried in batch]

    def forget(
        self, tokens: list[str], keep: list[str] | None = None, drop: list[str] | None = None
    ) -> None:
        """Drop everything kept for the handles with these tokens (they were released),
        except the contents ``keep`` names: those stay, for a later fit, until a call's
        ``drop`` names them."""
        for cid in keep or []:
            if cid in self._contents:
                self._bind((KEPT + cid, 0), cid)
        dropped = set(tokens)
        for key in [key for key in self._bound if key[0] in dropped]:
            self._unbind(key)
        for cid in drop or []:
            self._unbind((KEPT + cid, 0))

    def held(self) -> dict[str, int]:
        """Bytes kept per handle token (per content id, for contents named by one), and
        under ``"kept"`` the contents kept for later fits that no handle uses now (for
        tests and reports)."""
        live = {cid for key, cid in self._bound.items() if not key[0].startswith(KEPT)}
        sizes: dict[str, int] = collections.defaultdict(int)
        for cid, arrays in self._contents.items():
            owner = cid.split(":")[0] if cid in live else "kept"
            sizes[owner] += sum(a.nbytes for a in arrays.values())
        return dict(sizes)

    def _run(self, call: Call, carried: list[list[Carried]]) -> Envelope:
        self.calls += 1
        refs = [a for a in call.args if isinstance(a, HandleRef)]
        views = [_View(self, ref.token, slots) for ref, slots in zip(refs, carried, strict=True)]
        args = [views[a.position] if isinstance(a, HandleRef) else a for a in call.args]
        try:
            result = call.fn(*args)
        except SlotMissing:
            missed = [(i, view.missed) for i, view in enumerate(views) if view.missing]
            return Envelope(None, [], missed)
        except Exception as exc:
            text = "".join(traceback.format_exc())
            exc.add_note("raised on a Dask worker:\n" + text)
            return Envelope(None, [], [], _sendable_error(exc, text))
        problem = _unpicklable(result)
        if problem is not None:
            error = BackendError(f"the task's result cannot be pickled ({problem!r})")
            return Envelope(None, [], [], error)
        writes = [
            {slot: self._keep(v.token, slot, a) for slot, a in v.written.items()} for v in views
        ]
        return Envelope(result, writes, [])

    def _keep(self, token: str, slot: int, arrays: Arrays) -> tuple[str, Arrays]:
        self._writes += 1
        cid = f"{token}:w{self._prefix}-{self._writes}"
        self._contents[cid] = arrays
        self._bind((token, slot), cid)
        return cid, arrays

    def lookup(self, token: str, slot: int, carried: Carried) -> Arrays | None:
        """The contents ``carried`` names for ``(token, slot)``, kept from now on; None
        if this worker does not hold them."""
        if carried is None:
            return None
        if isinstance(carried, Content):
            cid, arrays = carried.cid, carried.payload.arrays
            self._contents.setdefault(cid, arrays)
        else:
            cid = carried
            if cid not in self._contents:
                return None
        self._bind((token, slot), cid)
        return self._contents[cid]

    def _bind(self, key: tuple[str, int], cid: str) -> None:
        if self._bound.get(key) == cid:
            return
        self._unbind(key)
        self._bound[key] = cid
        self._uses[cid] += 1

    def _unbind(self, key: tuple[str, int]) -> None:
        old = self._bound.pop(key, None)
        if old is None:
            return
        self._uses[old] -= 1
        if self._uses[old] <= 0:
            del self._uses[old]
            self._contents.pop(old, None)


def _unpicklable(value: Any) -> Exception | None:
    """Why ``value`` cannot travel back to the owner, or None if it can.

    Dask pickles the batch's reply (pickle, else cloudpickle) after the store returns it:
    one result it cannot pickle fails the whole reply, which the owner took for the
    worker's death (re-running the batch on every worker, then "lost 4 workers"). Arrays
    are pickled out of band here (not copied); results are small (a shard's loss).
    """
    try:
        pickle.dumps(value, protocol=5, buffer_callback=_ignore)
    except Exception:
        import cloudpickle  # Dask's fallback; installed wherever distributed is

        try:
            cloudpickle.dumps(value, protocol=5, buffer_callback=_ignore)
        except Exception as problem:
            return problem
    return None


def _sendable_error(exc: Exception, text: str) -> Exception:
    """``exc``, if it survives the trip to the owner; else a BackendError with its repr and
    the worker's traceback ``text``.

    An exception that pickles but does not unpickle (one whose ``__init__`` takes other
    arguments than it passes to ``Exception``) failed the owner's read of the reply, and
    one holding a lock its pickling: both were taken for the worker's death. Checked by a
    round trip, on errors only.
    """
    import cloudpickle

    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
    except Exception as problem:
        return BackendError(
            f"the task raised {exc!r:.200}, which cannot be sent back from the Dask worker "
            f"({problem!r}); its traceback on the worker:\n{text.rstrip()}"
        )
    return exc


def _ignore(_: object) -> None:
    """A pickle buffer callback: out-of-band buffers are not needed for the check."""


class _View:
    """The worker's :class:`~asynctrain.backends.SharedArrays` view of one handle during
    one task."""

    def __init__(self, store: WorkerStore, token: str, carried: list[Carried]) -> None:
        self.slots = len(carried)
        self.token = token
        self._store = store
        self._carried = carried
        self.written: dict[int, Arrays] = {}
        self.missing = False
        self.missed: str | None = None
        for slot, entry in enumerate(carried):  # keep what came, whether read or not
            store.lookup(token, slot, entry)

    def read(self, slot: int = 0) -> Arrays:
        """The slot's arrays as last written by the owner, an earlier task or this one."""
        if slot in self.written:
            return self.written[slot]
        arrays = self._store.lookup(self.token, slot, self._carried[slot])
        if arrays is None:
            entry = self._carried[slot]
            self.missing, self.missed = True, entry if isinstance(entry, str) else None
            raise SlotMissing(slot)
        return arrays

    def write(self, slot: int, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Record ``arrays`` for the owner; they return with the task's result."""
        self.written[slot] = dict(arrays)
