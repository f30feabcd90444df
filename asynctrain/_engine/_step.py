"""One data-parallel step's plumbing, shared by every mode: the step context, the Mode
protocol, cutting a batch into shard tasks, where they run (:class:`Placement`), running
them on the backend, and taking their results off the queue in shard order (the arithmetic
of the reduction is the updater's)."""

from __future__ import annotations

import asyncio
import collections
import functools
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from asynctrain._engine._prefetch import Prefetch
from asynctrain._engine._update import StepStats, Updater
from asynctrain._engine._window import Window
from asynctrain._engine._work import Gathered, Indices, Rows, ShardResult, ShardTask, compute_shard
from asynctrain._events import StepEvent
from asynctrain.backends import Backend, SharedArrays
from asynctrain.data import batch_bounds, shard_bounds
from asynctrain.models import MLP, LinearRegression, LogisticRegression, SoftmaxRegression

T = TypeVar("T")

WARM_UP = 8
"""Steps of a placement's first fit that run one task per shard and are not timed."""
MEASURED = 8
"""Timed steps, alternating spread and grouped, before the first choice."""
WINDOW = 16
"""Steps per choice whose times the medians are taken over."""
REPROBE = 32
"""Steps after the first choice until a step tries the choice not taken; the interval
doubles (up to :data:`MAX_REPROBE`) each time the choice stands, and resets when it flips."""
MAX_REPROBE = 512
"""The longest interval the doubling reaches between tries of a choice that stands (a
choice far ahead may wait longer: :data:`TRY_COST`, up to :data:`MAX_PATIENCE`)."""
MAX_PATIENCE = 4096
"""The longest wait :data:`TRY_COST` sets: the tries of a choice up to about 14 times
slower cost at most that share of the steps. Capped at :data:`MAX_REPROBE`, the tries
of a choice 4 times slower cost 1.8 % (measured on the thread backend's logreg and
softmax epochs with 2 workers, whose steps all compute on the loop: 12 of 1,954 and 3
of 391 steps were tries of spreading)."""
TRY_COST = 0.01
"""What tries of the choice not taken may cost, as a share of the steps between them: a
choice that stands after a try waits at least long enough for the try's extra time (its
:data:`PROBE_STEPS` steps times how much slower the other choice was) to be this share of
the wait, so a choice far ahead is tried rarely from the start."""
PROBE_STEPS = 3
"""Steps in a row that a try of the choice not taken runs, timed afresh (its older times
are dropped: they may be from another fit, or from before the costs changed)."""
REMEMBERED = 32
"""Placements a backend keeps for later fits (the most recently used)."""
LOOP_BUDGET = 500e-6
"""A grouped step measured to compute in at most this many seconds runs on the event
loop's own thread, on a backend whose shared arrays this process reads in place."""
FIRST_MATH = (50e-6, 0.15e-9, 1e-9)
"""Seconds a shard of a built-in model (:data:`ESTIMATED`) on dense rows is taken to
compute before one has been timed: a fixed part, a part per row and parameter element
(the products), and a part per row and input element (gathering the rows). Above the
fastest times measured on one BLAS thread here (gathering random rows of 200,000): 1,024
rows of the softmax problem's 1,290 parameters on 128 features take 0.30 ms (estimate
0.38), 512 rows of the reference MLP's 35,594 parameters 1.25 ms (2.8), 512 and 2,048 of
logistic regression on 64 features 0.06 and 0.17 ms (0.09 and 0.20). So a small model's
first step computes on the loop
(saving a worker's wake-up and the reply's, about 0.5 ms) and a large one's goes to the
workers; from then on the steps' own times decide. Other models (bridges, a user's) have
no estimate: their first step is timed on a worker."""


class Placement:
    """Chooses where a sync step's shards run: spread over the workers, grouped into one
    task, or (on a backend this process shares arrays with in place) on the event loop.

    Every shard task has a fixed cost besides its math: on threads a wake-up and GIL
    hand-offs; on processes a pickle, a pipe write and a reply. When a shard computes for
    less than that, spreading a step's shards over more workers makes the step slower, not
    faster. So a sync step on a thread, process or Dask backend hands its S shards to the
    workers either spread (``min(S, workers)`` tasks of contiguous shards) or grouped (one
    task that computes every shard in turn), whichever the fit has measured to be faster:

    * its first :data:`WARM_UP` steps run one task per shard, as a step always did, and
      are not timed (first-touch page faults, imports on the workers);
    * the next :data:`MEASURED` steps alternate spread and grouped two at a time, timed
      on the loop's clock (per shard, so a short last batch counts alike; the second of
      a pair runs as steps of its choice run, after one like it: see ``timed``);
    * from then on a step takes the choice with the lower median time over its last
      :data:`WINDOW` steps (grouped on a tie), and now and then a step tries the other
      (for :data:`PROBE_STEPS` steps, timed afresh, after :data:`REPROBE` steps, then
      twice as long each time the choice stands), so a choice follows a fit whose costs
      change without paying often for the worse one. The farther behind the other
      choice was at its try, the longer the wait (:data:`TRY_COST`): tries of a choice
      three times slower would cost 6 % of the steps at intervals of :data:`REPROBE`.

    A step that is one task whatever is chosen (one shard, or one worker) skips all
    that: it runs as one task from its first step.

    ``first_math``: the seconds a shard's math is taken to last until one has been timed
    (:func:`first_math_estimate`; infinity, the default, sends the first step to a
    worker, where it is timed).

    A grouped step still pays one hand-off to a worker and back, on top of math that is
    the same wherever it runs. So on a backend whose shared arrays this process reads in
    place (``backend.local``: the thread backend; not the process backend, whose workers
    keep a crashing model away from the caller's process), a grouped step whose math
    takes at most :data:`LOOP_BUDGET` computes on the event loop's own thread instead, as
    the inline backend would (:meth:`tasks` answers 0): the loop is blocked for at most
    about that long a step, and a step too small to pay for one hand-off pays for none.
    The math is timed where it runs, from the first step (a grouped task times its own
    compute on the worker; the median of the last :data:`WINDOW` grouped or loop steps
    counts; first touches make early steps look slower, never faster), so steps that
    outgrow the budget go back to the workers and come back when they shrink. With one
    worker or two, such a fit runs the same way, so a second worker does not make it
    slower.

    A backend remembers what it learned (:func:`placement_for`): a later fit of the same
    kind of step (model, parameter shapes, data columns, batch size and shard count) on
    the same backend starts from the choice and times the last fit left, with no warm-up
    and no measuring. Its costs may differ from the last fit's, so it tries the other
    choice sooner when the last try found the two close: within the wait
    :data:`TRY_COST` sets for that gap (at least :data:`REPROBE` of its own steps), or as
    scheduled if that comes first.

    Measured, not predicted: on threads, two small tasks "in parallel" mostly wait for each
    other's GIL, which no formula of compute and hand-off times captures. Each shard still
    writes its own gradient slot and the updater still sums them in shard order, so the
    parameters are bit-identical whatever is chosen: where shards run changes the time only.

    Example:
        >>> placement = Placement()
        >>> placement.tasks(4, workers=2)  # warming up
        4
        >>> for _ in range(WARM_UP + MEASURED):  # grouped: 100 us (40 of math), spread: 300
        ...     k = placement.tasks(4, workers=2)
        ...     placement.record(k, 4, 100e-6 if k == 1 else 300e-6, math=40e-6)
        >>> placement.tasks(4, workers=2), placement.tasks(4, workers=2, local=True)
        (1, 0)
    """

    def __init__(self, first_math: float = float("inf")) -> None:
        self._steps = 0
        self._times: dict[int, Window] = {}  # seconds per shard of steps run as k tasks
        self._math = Window(WINDOW)  # seconds per shard of one group's math
        self._first_math = first_math  # seconds per shard taken before one is timed
        self._spread_best: bool | None = None  # the choice at the last try of the other
        self._interval = REPROBE
        self._patience = REPROBE  # the wait the last comparison's gap is worth (TRY_COST)
        self._probe_at = MEASURED + REPROBE
        self._trying: tuple[int, int] | None = None  # (until step, choice) of a try
        self._last: int | None = None  # tasks of the last step recorded

    @property
    def steps(self) -> int:
        """Steps recorded so far, over every fit that took this placement up."""
        return self._steps

    @property
    def on_loop(self) -> bool:
        """Whether the last step recorded computed on the event loop (0 tasks): work
        that would share the GIL with such steps (a stream's batch checks) is cheaper
        done on the loop between them than on a thread beside them."""
        return self._last == 0

    def tasks(self, shards: int, workers: int, *, local: bool = False) -> int:
        """How many tasks the next step of ``shards`` shards goes to on ``workers``: 0 for
        one group computed on the event loop (only when ``local``, the backend's
        ``local``), 1 for one task, more for spread (asked once a step: it schedules the
        next try of the choice not taken)."""
        spread = max(1, min(shards, workers))
        small = 0 if local and self._fits_loop(shards) else 1
        if spread == 1:  # one task whatever is chosen: nothing to warm up or measure for
            return small
        step = self._steps - WARM_UP
        if step < 0:
            return shards
        if step < MEASURED:  # in pairs: a step after its like is timed as the choice runs
            return small if step // 2 % 2 else spread
        if self._trying is not None:
            until, choice = self._trying
            if step < until:
                return choice
            self._trying = None
        spread_time, small_time = self._median(spread), self._median(small)
        spread_best = spread_time < small_time
        if step < self._probe_at:
            return spread if spread_best else small
        stands = spread_best == self._spread_best
        self._patience = _patience(spread_time, small_time)
        self._interval = (
            max(min(2 * self._interval, MAX_REPROBE), self._patience) if stands else REPROBE
        )
        self._spread_best, self._probe_at = spread_best, step + self._interval
        other = small if spread_best else spread
        if other:  # timed afresh (a step on the loop shares its math times with grouped)
            self._times.pop(other, None)
        self._trying = (step + PROBE_STEPS, other)
        return other

    def _fits_loop(self, shards: int) -> bool:
        return self._median(0) * shards <= LOOP_BUDGET

    def _median(self, k: int) -> float:
        """Median seconds per shard of steps that ran as ``k`` tasks (0: of one group's
        math, on the loop or on a worker), infinity before there is one."""
        if k == 0 and not len(self._math):
            return self._first_math
        times = self._math if k == 0 else self._times.get(k)
        return float("inf") if times is None else times.median

    def resume(self) -> None:
        """A new fit takes this placement up: past the first fit's measuring, it keeps
        the choice and tries the other one within the wait the last comparison's gap is
        worth (:data:`TRY_COST`; the new fit's costs may not be the last one's)."""
        step = self._steps - WARM_UP
        if step >= MEASURED:
            self._interval = min(self._interval, self._patience)
            self._probe_at = min(self._probe_at, step + self._patience)

    def record(
        self,
        tasks: int,
        shards: int,
        seconds: float,
        *,
        math: float | None = None,
        timed: bool = True,
    ) -> None:
        """Learn from a step that ran ``shards`` shards as ``tasks`` tasks (0: on the
        loop) in ``seconds`` (on the loop's clock, from handing them out to the last
        result); ``math``: of which one task's own compute took that long (where it ran).
        ``timed=False``: ``seconds`` are not the choice's own but a switch's (only the
        math counts)."""
        self._steps += 1
        self._last = tasks
        if shards < 1:
            return
        if tasks == 0:
            math = seconds
        if math is not None and tasks <= 1:  # from the first step: first touches only err
            self._math.add(math / shards)  # towards the workers, and briefly
        if tasks and timed and self._steps > WARM_UP:
            times = self._times.get(tasks)
            if times is None:
                times = self._times[tasks] = Window(WINDOW)
            times.add(seconds / shards)


def _patience(first: float, second: float) -> int:
    """Steps to wait before trying again the slower of two choices that take ``first``
    and ``second`` seconds: long enough for a try to cost :data:`TRY_COST` of the wait,
    between :data:`REPROBE` and :data:`MAX_PATIENCE` steps."""
    faster, slower = min(first, second), max(first, second)
    if not faster > 0 or slower == float("inf"):
        return MAX_PATIENCE
    wait = PROBE_STEPS * (slower / faster - 1) / TRY_COST
    return int(min(max(wait, REPROBE), MAX_PATIENCE))


def contiguous(items: Sequence[T], groups: int) -> list[list[T]]:
    """``items`` cut into ``groups`` contiguous groups, as even as can be, the larger
    ones first.

    Example:
        >>> contiguous(list(range(5)), 2)
        [[0, 1, 2], [3, 4]]
    """
    size, extra = divmod(len(items), groups)
    cut, start = [], 0
    for i in range(groups):
        stop = start + size + (i < extra)
        cut.append(list(items[start:stop]))
        start = stop
    return cut


_remembered: weakref.WeakKeyDictionary[Backend, collections.OrderedDict[Hashable, Placement]] = (
    weakref.WeakKeyDictionary()
)


def placement_for(
    backend: Backend,
    model: Any,
    params: Mapping[str, npt.NDArray[Any]],
    data: Mapping[str, Any] | SharedArrays,
    *,
    batch_size: int,
    shards: int,
) -> Placement:
    """The :class:`Placement` of a fit on ``backend``: the one an earlier fit of the same
    kind of step there learned (resumed), or a new one.

    Steps are of one kind when they have the same model class, parameter names, shapes
    and dtypes, data columns (names, dtypes and row shapes; a stream's ring counts as
    one kind), batch size and shard count: their shards cost about the same, so the
    choice carries over. A backend keeps the :data:`REMEMBERED` most recently used, and
    forgets them all when it is garbage-collected (a backend that cannot be weakly
    referenced remembers nothing).
    """
    key = (
        type(model).__module__,
        type(model).__qualname__,
        _columns(params),
        _columns(data) if isinstance(data, Mapping) else type(data).__qualname__,
        batch_size,
        shards,
    )
    first_math = first_math_estimate(model, params, data, batch_size, shards)
    try:
        kept = _remembered.setdefault(backend, collections.OrderedDict())
    except TypeError:  # a backend that cannot be weakly referenced: learn per fit
        return Placement(first_math)
    placement = kept.get(key)
    if placement is None:
        placement = kept[key] = Placement(first_math)
        while len(kept) > REMEMBERED:
            kept.popitem(last=False)
    else:
        kept.move_to_end(key)
        placement.resume()
    return placement


ESTIMATED = (LinearRegression, LogisticRegression, SoftmaxRegression, MLP)
"""The models whose shard time :data:`FIRST_MATH` estimates (these classes exactly: a
subclass may compute anything)."""


def first_math_estimate(
    model: Any,
    params: Mapping[str, npt.NDArray[Any]],
    data: Mapping[str, Any] | SharedArrays,
    batch_size: int,
    shards: int,
) -> float:
    """Seconds one shard's math is taken to last before one is timed (:data:`FIRST_MATH`):
    an estimate for a built-in model on dense in-memory rows, else infinity (unknown).

    Example:
        >>> import numpy as np
        >>> from asynctrain.models import SoftmaxRegression
        >>> model = SoftmaxRegression(128, 10)
        >>> params = model.init(np.random.default_rng(0))
        >>> data = {"X": np.zeros((4096, 128), np.float32), "y": np.zeros(4096, np.int64)}
        >>> round(first_math_estimate(model, params, data, 1024, 1) * 1e3, 2)  # ms
        0.38
    """
    X = data.get("X") if isinstance(data, Mapping) else None
    if type(model) not in ESTIMATED or not isinstance(X, np.ndarray) or X.ndim != 2:
        return float("inf")
    fixed, per_parameter, per_input = FIRST_MATH
    rows = -(-batch_size // shards)
    size = sum(int(np.size(value)) for value in params.values())
    return fixed + rows * (per_parameter * size + per_input * int(X.shape[1]))


def _columns(arrays: Mapping[str, Any]) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """Each array's name, dtype and shape past the first axis (rows)."""
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(arrays.items()))


@dataclass(frozen=True)
class Partitions:
    """Shard-local sampling's data (``shuffle="shard"``): each shard's partition of the
    rows shared on its own, and the position in an epoch's order where it starts (see
    :mod:`asynctrain.data._partition`). Shard ``s``'s tasks read ``handles[s]`` at rows
    ``position - starts[s]``, so a backend can keep partition ``s`` only where shard
    ``s`` runs."""

    handles: tuple[SharedArrays, ...]
    starts: tuple[int, ...]


@dataclass
class StepContext:
    """What a mode needs to run steps: the work's ingredients, shared once per fit.

    ``params`` has ``mode.param_slots(shards)`` slots and ``grads``
    ``mode.grad_slots(shards)``; ``extra`` is a mode's own per-fit storage (e.g. the
    per-shard optimizer states of local mode).
    """

    model: Any
    backend: Backend
    updater: Updater
    data: SharedArrays
    params: SharedArrays
    grads: SharedArrays
    batch_size: int
    shards: int
    streaming: bool = False
    """Steps come from a stream: they leave the epoch position (TrainState.batch) alone."""
    seed: int = 0
    """The trainer's seed; tasks carry it so a model's randomness is keyed by
    ``(seed, step, shard)``."""
    shipped: Any = None
    """What tasks carry in the model's place (see :func:`._work.ship_model`); None: the model."""
    placement: Placement = field(default_factory=Placement)
    """Where sync steps run their shards (see :class:`Placement`); learns during the fit
    (the trainer's fits take up what an earlier fit on the backend learned:
    :func:`placement_for`)."""
    started: float = field(default_factory=time.perf_counter)
    samples: int = 0
    weight: float = 0.0
    """Total sample weight of the steps so far (``samples`` without sample weights)."""
    extra: dict[str, Any] = field(default_factory=dict)
    share: Callable[..., Awaitable[SharedArrays]] | None = None
    """Shares arrays with the backend until the fit ends (``await ctx.share(arrays,
    slots=n)``), for what a mode keeps per fit; None: the mode shares and releases its
    own."""
    prefetch: Prefetch | None = None
    """Where the thread backend computes sync steps of an in-memory dataset
    (``_context._gathers_ahead``): later steps' rows, gathered while steps compute with a
    core to spare (see :mod:`._prefetch`); None: every shard gathers its own rows."""
    partitions: Partitions | None = None
    """With ``shuffle="shard"``: the shards' partitions (``data`` is then partition 0's
    handle; tasks read :meth:`data_of` their shard)."""

    def data_of(self, shard: int) -> SharedArrays:
        """The data shard ``shard``'s tasks read: its partition, or all of the data."""
        return self.data if self.partitions is None else self.partitions.handles[shard]

    def shards_of(self, indices: Indices) -> list[Indices]:
        """A step's ``indices`` cut into its shards' rows (:meth:`rows_of` each), in
        shard order; trailing ones may be empty."""
        if self.shards == 1:  # one shard: the whole batch, no split
            return [self.rows_of(0, indices)]
        return [self.rows_of(s, part) for s, part in enumerate(split_indices(indices, self.shards))]

    def rows_of(self, shard: int, rows: Indices) -> Indices:
        """``rows`` of an epoch's order (positions, with partitions) as rows of
        :meth:`data_of` ``shard``."""
        start = 0 if self.partitions is None else self.partitions.starts[shard]
        if not start:
            return rows
        if isinstance(rows, range):  # a stream's rows: never partitioned
            return range(rows.start - start, rows.stop - start)
        return rows - start

    @property
    def carried(self) -> Any:
        """The model as tasks carry it: its shipped handle, or the model itself."""
        return self.model if self.shipped is None else self.shipped

    def event(
        self, epoch: int, stats: StepStats, staleness: int = 0, *, step: int | None = None
    ) -> StepEvent:
        """Record ``stats`` of a step just applied and describe it as an event.

        ``step`` defaults to the last step the updater committed.
        """
        self.samples += stats.n
        self.weight += stats.weight
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        # Positional, in field order (step, epoch, loss, grad_norm, samples, samples_per_s,
        # staleness, skipped, kind, weight): a frozen dataclass built from keywords costs
        # about twice as much, once a step.
        return StepEvent(
            self.updater.state.step - 1 if step is None else step,
            epoch,
            stats.loss,
            stats.grad_norm,
            stats.n,
            self.samples / elapsed,
            staleness,
            stats.skipped,
            "step",
            stats.weight,
        )


@runtime_checkable
class Mode(Protocol):
    """A training mode: how a step's shard tasks are scheduled and their results applied.

    Invariant: when ``run_epoch`` finishes, the current parameter version is readable
    in slot ``version % ctx.params.slots`` (the trainer evaluates it there).
    """

    name: str

    @property
    def settings(self) -> dict[str, int]:
        """The mode's options by the Trainer's names (``{"staleness": 2}``); checkpoints
        record them, and resuming checks them."""
        ...

    def param_slots(self, shards: int) -> int:
        """Parameter slots the mode needs, so a version being read is never overwritten."""
        ...

    def grad_slots(self, shards: int) -> int:
        """Gradient (or delta) slots the mode needs."""
        ...

    def run_epoch(
        self, ctx: StepContext, epoch: int, order: npt.NDArray[np.int64], start_batch: int
    ) -> AsyncGenerator[StepEvent, None]:
        """Run batches ``start_batch..`` of the epoch whose sample order is ``order``."""
        ...


def shard_tasks(
    ctx: StepContext,
    indices: Indices,
    *,
    step: int,
    grad_base: int = 0,
    data_slot: int = 0,
    gathered: Sequence[Gathered] | None = None,
) -> list[ShardTask]:
    """The shard tasks of one step on the current parameters; shard s reads rows of data
    slot ``data_slot`` and writes gradient slot ``grad_base + s``. Empty shards (a batch
    smaller than the shard count) get none. ``gathered``: the shards' rows, gathered
    ahead (:class:`._prefetch.Prefetch`, which cuts ``indices`` as :meth:`shards_of`
    does), which the tasks carry instead of indices.
    """
    state = ctx.updater.state
    slot = state.version % ctx.params.slots
    parts: Sequence[Rows] = ctx.shards_of(indices) if gathered is None else gathered
    return [
        ShardTask(step, s, state.version, slot, grad_base + s, rows, data_slot, ctx.seed)
        for s, rows in enumerate(parts)
        if len(rows)
    ]


async def compute(ctx: StepContext, task: ShardTask) -> ShardResult:
    """Compute one shard task on the backend (a step of one shard awaits this directly)."""
    data = ctx.data_of(task.shard)
    return await ctx.backend.run(compute_shard, ctx.carried, data, ctx.params, ctx.grads, task)


async def run_shard(ctx: StepContext, task: ShardTask, queue: asyncio.Queue[ShardResult]) -> None:
    """Compute one shard on the backend and put its result on ``queue``."""
    queue.put_nowait(await compute(ctx, task))


def split_indices(indices: Indices, shards: int) -> list[Indices]:
    """Split a batch's rows into ``shards`` contiguous parts (trailing ones may be empty)."""
    return [indices[start:stop] for start, stop in _bounds(len(indices), shards)]


@functools.lru_cache(maxsize=64)
def _bounds(length: int, shards: int) -> tuple[tuple[int, int], ...]:
    # Every full batch of a fit has the same length: compute its shard bounds once.
    return tuple(shard_bounds(length, shards))


def batches_of(
    order: npt.NDArray[np.int64], batch_size: int, start_batch: int
) -> list[npt.NDArray[np.int64]]:
    """The sample indices of the epoch's batches from ``start_batch`` on."""
    return [order[a:b] for a, b in batch_bounds(len(order), batch_size)[start_batch:]]


async def collect_in_order(queue: asyncio.Queue[ShardResult], shards: int) -> list[ShardResult]:
    """Take ``shards`` results of one step off ``queue`` and return them in shard order.

    No array math happens here (this runs on the event loop); summing is
    :func:`sum_in_order`'s job on the updater.
    """
    slots: list[ShardResult | None] = [None] * shards
    for _ in range(shards):
        result = await queue.get()
        slots[result.shard] = result
    return [r for r in slots if r is not None]
