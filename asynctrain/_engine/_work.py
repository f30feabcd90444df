"""What crosses to a worker and what runs there: one shard's loss and gradient, one
chunk's evaluation, and the model, shipped once per fit.

These functions are module-level (picklable) and reach the data, parameters and gradient
buffers through :class:`~asynctrain.backends.SharedArrays` handles, so a task carries only
small values: the step, the shard, the parameter slot and the sample indices (or, for a
batch assembled from a stream, a data slot and a contiguous row range).

The model crosses once per fit, not with every task. Tasks on the process and Dask
backends pickle their arguments; a numpy model is a few hundred bytes, but a bridged model
(a PyTorch module, a JAX function) can be megabytes and costs milliseconds to unpickle. So
a fit shares the model's pickle like its data (:func:`ship_model`), tasks carry the small
handle in the model's place, and a worker unpickles it on the first task that needs it and
keeps it for the rest of the fit (:func:`resolve_model`, keyed by a token in the shared
bytes). In-process backends (inline, thread) carry the model object itself.
"""

from __future__ import annotations

import collections
import functools
import pickle
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple, TypeGuard

import numpy as np
import numpy.typing as npt

from asynctrain._engine._metrics import chunk_parts
from asynctrain._sparse import take_packed
from asynctrain.backends import LocalShared, SharedArrays
from asynctrain.backends._idle import defer
from asynctrain.models._protocol import (
    loss_and_predict_of,
    loss_value,
    quiet_float_errors,
    shard_loss_and_grad,
)


class Gathered:
    """A shard's rows already gathered out of the data (:func:`gather`): what
    :func:`compute_shard` would take out itself, taken ahead on another thread."""

    __slots__ = ("X", "w", "y")

    def __init__(self, X: Any, y: npt.NDArray[Any], w: npt.NDArray[Any] | None) -> None:
        self.X, self.y, self.w = X, y, w

    def __len__(self) -> int:
        return len(self.y)


Indices = npt.NDArray[np.int64] | range
"""Sample indices into the data, or a contiguous range of one data slot."""
Rows = Indices | Gathered
"""Rows of a shard: sample indices into the data, a contiguous range of one data slot, or
the rows themselves, gathered ahead (in-process backends only: tasks that cross to
another process carry indices)."""


class ShardTask(NamedTuple):
    """One shard of one step: which samples (rows of data slot ``data_slot``), on which
    parameter version."""

    step: int
    shard: int
    version: int
    param_slot: int
    grad_slot: int
    indices: Rows
    data_slot: int = 0
    seed: int = 0
    """The trainer's seed: with ``step`` and ``shard`` it keys a model's randomness."""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as one buffer of 64-bit integers where it can be (see
        :func:`_packed`), else field by field."""
        packed = _packed((), (self,), None)
        return (ShardTask, tuple(self)) if packed is None else (_unpacked_task, (packed,))


class ShardResult(NamedTuple):
    """What a shard sends back; its gradient waits in the gradient slot ``grad_slot``.

    ``loss`` and the gradient are sums over the shard's rows, weighted by the sample
    weights if the data has them; ``weight`` is the sum of those weights (``n`` without
    them), by which the reducer divides.
    """

    step: int
    shard: int
    version: int
    grad_slot: int
    n: int
    loss: float
    weight: float


def compute_shard(
    model: Any,
    data: SharedArrays,
    params: SharedArrays,
    grads: SharedArrays,
    task: ShardTask,
) -> ShardResult:
    """Compute the summed loss and gradient of ``task``'s samples into its gradient slot.

    ``model`` is the model or its shipped handle (see :func:`resolve_model`).
    """
    rows = task.indices
    shard = rows if isinstance(rows, Gathered) else gather(data.read(task.data_slot), rows)
    X, y, w = shard.X, shard.y, shard.w
    key = (task.seed, task.step, task.shard)
    current = params.read(task.param_slot)
    model = resolve_model(model)
    # Data without weights (the common case) takes no call that would only pass None on.
    if w is None:
        loss, shard_grads = shard_loss_and_grad(model, current, X, y, key)
        weight = float(len(y))
    else:
        loss, shard_grads = shard_loss_and_grad(model, current, X, y, key, w)
        weight = weight_sum(w, len(y))
    grads.write(task.grad_slot, shard_grads)
    return ShardResult(
        task.step, task.shard, task.version, task.grad_slot, len(y), float(loss), weight
    )


def gather(arrays: Mapping[str, npt.NDArray[Any]], rows: Indices) -> Gathered:
    """The features, labels and (weighted data) sample weights of ``rows`` of ``arrays``."""
    return Gathered(features(arrays, rows), _rows(arrays["y"], rows), _weights(arrays, rows))


def _weights(arrays: Mapping[str, npt.NDArray[Any]], rows: Indices) -> npt.NDArray[Any] | None:
    """The sample weights of ``rows`` (data shared with a ``"w"`` array), else None."""
    weights = arrays.get("w")
    return None if weights is None else _rows(weights, rows)


def weight_sum(weights: npt.NDArray[Any] | None, n: int) -> float:
    """The total weight of ``n`` rows: the sum of their weights (in float64), else ``n``."""
    return float(n) if weights is None else float(weights.sum(dtype=np.float64))


def features(arrays: Mapping[str, npt.NDArray[Any]], rows: Indices) -> Any:
    """The rows of the shared features ``X``: an array, or CSR gathered as CSR (a sparse
    ``X`` travels as its three arrays, :func:`asynctrain._sparse.pack`; a fit shares only
    a Dataset's, whose index arrays were checked, so its rows are marked checked)."""
    X = arrays.get("X")  # dense: one lookup, no probing (a packed CSR has no "X")
    return _rows(X, rows) if X is not None else take_packed(arrays, rows, checked=True)


class ShardGroup(NamedTuple):
    """Shard tasks of one step that one worker computes one after another (see
    :class:`._step.Placement`). ``step`` and ``shard`` (its first shard) name it in errors.

    ``ahead``: the same shards' rows in the fit's next step (indices, one per task), for a
    worker that gathers them once it has replied (:class:`KeptRows`); None: none."""

    step: int
    shard: int
    tasks: tuple[ShardTask, ...]
    ahead: tuple[Indices, ...] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as one buffer of 64-bit integers where it can be (see
        :func:`_packed`), else field by field."""
        packed = _packed((self.step, self.shard), self.tasks, self.ahead)
        return (ShardGroup, tuple(self)) if packed is None else (_unpacked_group, (packed,))


class GroupResult(NamedTuple):
    """A group's shard results, in shard order, and the seconds its math took where it
    ran (which :class:`._step.Placement` learns from)."""

    results: list[ShardResult]
    seconds: float


# -- the wire form of shard tasks ------------------------------------------------------------
#
# Every task a fit sends a process or Dask worker carries a ShardTask or a ShardGroup, whose
# sample indices pickled by numpy (a reduce, a dtype and a buffer per array) cost the parent
# 14 us a group to pickle and the worker 8.7 us to unpickle, whatever their length. Packed
# as one buffer of 64-bit integers (the fields, then the index arrays' values), a group
# pickles as that buffer and unpacks with one ``np.frombuffer``: its index arrays are
# read-only views of it, with the values, and so the bits, of the arrays sent. Anything
# that does not fit (a field that is not an int of 64 bits, indices of another dtype or
# shape, rows gathered ahead) is pickled field by field, as before; so are indices of more
# than _PACK_WORDS in all, whose copies cost more than numpy's pickle saves: packed, a
# group of two 65,536-index arrays took 1,375 us to pickle on the loop against 555.

_ARRAY, _RANGE = 0, 1  # how a task's rows are packed: indices, or a range's start and stop
_TASK_WORDS = 10  # step, shard, version, param_slot, grad_slot, data_slot, seed, kind, a, b
_INDEX = np.dtype("<i8")
_PACK_WORDS = 16_384
"""Index words a packed task holds at most (128 KiB: packing gains below it, 8.8 -> 5.1 us
for 8,192 words, and loses above, where every copy of that size page-faults)."""
_COUNT = struct.Struct("<q")


def _packed(
    head: tuple[int, ...], tasks: tuple[ShardTask, ...], ahead: tuple[Indices, ...] | None
) -> bytes | None:
    """``head``, the ``tasks`` and the ``ahead`` indices as little-endian 64-bit words: their
    count, ``head``, the task and ahead counts, per task its fields and how its rows are
    held, per ahead entry its length, then every index array's values; None if any part
    does not fit."""
    words: list[int] = [*head, len(tasks), -1 if ahead is None else len(ahead)]
    arrays: list[npt.NDArray[Any]] = []
    for task in tasks:
        rows = task.indices
        if type(rows) is range and rows.step == 1:
            words += (*task[:5], task.data_slot, task.seed, _RANGE, rows.start, rows.stop)
        elif _packable(rows):
            words += (*task[:5], task.data_slot, task.seed, _ARRAY, len(rows), 0)
            arrays.append(rows)
        else:
            return None
    for rows in ahead or ():
        if not _packable(rows):
            return None
        words.append(len(rows))
        arrays.append(rows)
    if sum(len(rows) for rows in arrays) > _PACK_WORDS:
        return None
    try:
        fields = struct.pack(f"<{len(words) + 1}q", len(words), *words)
    except struct.error:  # a field that is no integer of 64 bits (a seed beyond them)
        return None
    return b"".join([fields, *(rows.tobytes() for rows in arrays)])


def _packable(rows: object) -> TypeGuard[npt.NDArray[np.int64]]:
    return type(rows) is np.ndarray and rows.ndim == 1 and rows.dtype == _INDEX


def _unpacked(
    blob: bytes, head: int
) -> tuple[tuple[int, ...], list[ShardTask], tuple[Indices, ...] | None]:
    """What :func:`_packed` packed with ``head`` words of its own: those words, the tasks
    and the ahead indices."""
    (count,) = _COUNT.unpack_from(blob)
    fields: tuple[int, ...] = struct.unpack_from(f"<{count}q", blob, _COUNT.size)
    words = np.frombuffer(blob, dtype=_INDEX)
    at = 1 + count  # the next index array's first word
    n_tasks, n_ahead = fields[head], fields[head + 1]
    tasks = []
    for i in range(head + 2, head + 2 + _TASK_WORDS * n_tasks, _TASK_WORDS):
        step, shard, version, param_slot, grad_slot, data_slot, seed, kind, a, b = fields[
            i : i + _TASK_WORDS
        ]
        rows: Indices
        if kind == _RANGE:
            rows = range(a, b)
        else:
            rows, at = words[at : at + a], at + a
        tasks.append(ShardTask(step, shard, version, param_slot, grad_slot, rows, data_slot, seed))
    if n_ahead < 0:
        return fields[:head], tasks, None
    ahead = []
    for length in fields[head + 2 + _TASK_WORDS * n_tasks :]:
        ahead.append(words[at : at + length])
        at += length
    return fields[:head], tasks, tuple(ahead)


def _unpacked_task(blob: bytes) -> ShardTask:
    return _unpacked(blob, 0)[1][0]


def _unpacked_group(blob: bytes) -> ShardGroup:
    (step, shard), tasks, ahead = _unpacked(blob, 2)
    return ShardGroup(step, shard, tuple(tasks), ahead)


def compute_group(
    model: Any,
    data: SharedArrays,
    params: SharedArrays,
    grads: SharedArrays,
    group: ShardGroup,
) -> GroupResult:
    """:func:`compute_shard` of each task of ``group`` in turn, timed. A task whose rows
    this worker gathered after its last reply takes them (:class:`KeptRows`); with
    ``group.ahead``, the worker gathers the next step's, once it has replied, where it
    can (a process worker)."""
    started = time.perf_counter()
    tasks = _kept.claim(data, params, group.tasks)
    results = [compute_shard(model, data, params, grads, task) for task in tasks]
    if group.ahead is not None:
        defer(functools.partial(_kept.gather, data, params, group))
    return GroupResult(results, time.perf_counter() - started)


class KeptRows:
    """The rows a worker gathered after its last reply, for its next task's shards.

    A process worker sits idle from its reply until the parent's next task arrives (the
    parent reduces, updates and hands out the next step: 0.3-1 ms a step on the benchmark
    problems), and then spends the first part of that task gathering its rows out of the
    shared data (1 ms for 4,096 rows of the sparse benchmark's data, 0.1-0.2 ms for a
    dense shard). The rows of the next step are known before it starts, so a sync step's
    groups carry them (``ShardGroup.ahead``) and the worker gathers them in the gap
    (``backends._idle``); the process pool sends a shard's task to the worker that ran
    that shard last, so the next task finds its rows here. (Gathering them on a second
    thread of the worker while the group computes, where a core is free, was slower: the
    sparse problem's math on one worker took 1.75 ms a step instead of 1.0 beside it.)

    A task takes rows kept for its shard only if they are for the same fit (the shared
    data's and parameters' keys: the parameters are shared anew for every fit) and the
    very same indices of data slot 0, so it computes on the same values as the rows it
    would have gathered, and gets the same bits. Whatever the next task does not take is
    dropped by it: a worker keeps at most one group's rows, and none once a fit's last
    step (which has no next) is done.
    """

    def __init__(self) -> None:
        self._fit: tuple[str, str] | None = None
        self._rows: dict[int, tuple[Indices, Gathered]] = {}  # shard -> indices, rows
        self.taken = 0  # tasks that took kept rows (for tests)

    def claim(
        self, data: SharedArrays, params: SharedArrays, tasks: tuple[ShardTask, ...]
    ) -> tuple[ShardTask, ...]:
        """``tasks``, each with its kept rows in place of its indices where they match;
        the rest are dropped."""
        if not self._rows:  # the common case, and always on threads and the loop
            return tasks
        rows, fit = self._rows, self._fit
        self._rows, self._fit = {}, None
        if fit is None or fit != _fit_of(data, params):
            return tasks
        found = []
        for task in tasks:
            kept = rows.get(task.shard)
            if kept is not None and task.data_slot == 0 and _same(kept[0], task.indices):
                task = task._replace(indices=kept[1])
                self.taken += 1
            found.append(task)
        return tuple(found)

    def gather(self, data: SharedArrays, params: SharedArrays, group: ShardGroup) -> None:
        """Gather and keep the rows of ``group.ahead`` (on the worker, after its reply)."""
        fit = _fit_of(data, params)
        if fit is None or group.ahead is None:
            return
        arrays = data.read(0)
        pairs = zip(group.tasks, group.ahead, strict=True)
        self._rows = {task.shard: (rows, gather(arrays, rows)) for task, rows in pairs}
        self._fit = fit


def _fit_of(data: SharedArrays, params: SharedArrays) -> tuple[str, str] | None:
    """The keys of a fit's shared data and parameters, where they have keys (handles of
    shared memory); None otherwise (nothing is kept)."""
    data_key, params_key = getattr(data, "key", None), getattr(params, "key", None)
    if isinstance(data_key, str) and isinstance(params_key, str):
        return data_key, params_key
    return None


def _same(kept: Indices, rows: Rows) -> bool:
    # Their bytes compared: a fraction of np.array_equal's cost on a few thousand indices.
    return (
        isinstance(rows, np.ndarray)
        and isinstance(kept, np.ndarray)
        and kept.dtype == rows.dtype
        and kept.shape == rows.shape
        and kept.tobytes() == rows.tobytes()
    )


_kept = KeptRows()  # this process's (only a process worker's main thread keeps any)


def _rows(array: npt.NDArray[Any], rows: Indices) -> npt.NDArray[Any]:
    # A range (a stream's batch, already the feed's own copy) is viewed, not copied again:
    # a model modifies none of its inputs, and a contiguous view computes the same bits
    # as the fresh array gathered indices give (tests/test_stream.py holds it to that).
    if isinstance(rows, range):
        return array[rows.start : rows.stop]
    return array.take(rows, axis=0)  # the method: np.take's Python wrapper costs ~1 us


class EvalResult(NamedTuple):
    """Summed loss and correct predictions over a chunk of a dataset (weighted by the
    sample weights, if the data has them), the chunk's total ``weight`` (its row count
    without weights), and what the chunk contributes to each requested metric (see
    :mod:`._metrics`; metrics are not weighted)."""

    loss: float
    correct: float
    n: int
    weight: float
    parts: dict[str, Any] | None = None


def evaluate_chunk(
    model: Any,
    data: SharedArrays,
    params: SharedArrays,
    slot: int,
    start: int,
    stop: int,
    metrics: tuple[str, ...] = (),
) -> EvalResult:
    """Evaluate rows ``start:stop``: loss sum, for classifiers correct predictions (both
    weighted, if the data has sample weights), and the chunk's part of each of
    ``metrics``. An overflow shows as a non-finite loss, not as numpy's warnings."""
    model = resolve_model(model)
    arrays = data.read(0)
    X, y = features(arrays, range(start, stop)), arrays["y"][start:stop]  # CSR stays CSR
    w = _weights(arrays, range(start, stop))
    current = params.read(slot)
    options = {} if w is None else {"sample_weight": w}
    n_classes = getattr(model, "n_classes", None)
    correct, predicted, scores = 0.0, np.empty(0), None
    together = loss_and_predict_of(model)  # one forward pass, no gradient
    with quiet_float_errors():
        if together is not None:
            loss, predicted = together(current, X, y, **options)
            loss = loss_value(model, loss, "loss_and_predict")
        else:
            loss = loss_value(model, model.loss_and_grad(current, X, y, **options)[0])
            if n_classes is not None or metrics:
                predicted = model.predict(current, X)
        if "auc" in metrics:
            scores = model.predict_proba(current, X)
    if n_classes is not None:
        hits = predicted == y
        correct = float(
            np.count_nonzero(hits) if w is None else w.sum(where=hits, dtype=np.float64)
        )
    weight = weight_sum(w, stop - start)
    if not metrics:
        return EvalResult(float(loss), correct, stop - start, weight)
    parts = chunk_parts(metrics, y, predicted, scores, n_classes)
    return EvalResult(float(loss), correct, stop - start, weight, parts)


# -- the model, shipped once per fit ------------------------------------------------------

_KEEP = 4  # models a worker keeps unpickled: this fit's, and a few concurrent fits'
_cache: collections.OrderedDict[bytes, Any] = collections.OrderedDict()
_lock = threading.Lock()
_loads = 0


async def ship_model(
    model: Any, data: SharedArrays, share: Callable[[Mapping[str, Any]], Awaitable[Any]]
) -> Any:
    """What tasks carry for ``model``: the model itself when the backend shares by
    reference (``data``, the fit's shared data, is a :class:`LocalShared`: its workers are
    in this process), else the handle of its pickle shared through ``share`` (the fit
    releases it)."""
    if isinstance(data, LocalShared):  # threads and inline: nothing is pickled
        return model
    # Arrays that own their bytes: a view of a bytes object is not something every
    # backend's share expects.
    blob = np.frombuffer(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    token = np.frombuffer(uuid.uuid4().bytes, np.uint8)
    return await share({"model": blob.copy(), "token": token.copy()})


def resolve_model(carried: Any) -> Any:
    """The model a task carries: itself, or unpickled once per process from its handle."""
    # A model has loss_and_grad, a handle has not: an attribute lookup, where an
    # isinstance check against the runtime-checkable SharedArrays costs ~10 us a task
    # (so it is made once per handle type).
    if hasattr(carried, "loss_and_grad") or not _is_handle(carried):
        return carried
    arrays = carried.read(0)
    token = arrays["token"].tobytes()
    with _lock:
        model = _cache.get(token)
        if model is None:
            global _loads
            model = pickle.loads(arrays["model"].tobytes())
            _loads += 1
            _cache[token] = model
            while len(_cache) > _KEEP:
                _cache.popitem(last=False)
        _cache.move_to_end(token)
    return model


_handle_types: dict[type, bool] = {}


def _is_handle(carried: Any) -> bool:
    """Whether ``carried`` is a SharedArrays handle, checked once per type."""
    known = _handle_types.get(type(carried))
    if known is None:
        known = _handle_types[type(carried)] = isinstance(carried, SharedArrays)
    return known


def loads() -> int:
    """How many models this process has unpickled from shared handles (for tests)."""
    return _loads
