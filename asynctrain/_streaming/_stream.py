"""Training on a stream: the trainer's side of a :class:`~asynctrain._streaming._feed.Feed`.

A stream has no epochs. It is trained on batch by batch as the feed delivers ring slots,
until the source ends, ``max_steps`` steps or ``max_samples`` samples. Every
``validate_every`` steps (and once at the end) a *period* closes: it is reported as an
:class:`~asynctrain.EpochEvent` whose ``epoch`` is the period's number, with validation
metrics, so callbacks written for epochs (early stopping, checkpoints) work on step counts.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from asynctrain._checks import check_int
from asynctrain._config import TrainConfig
from asynctrain._engine._context import FitParts, open_context
from asynctrain._engine._epochs import epoch_event
from asynctrain._engine._step import Mode, StepContext
from asynctrain._engine._update import StepStats
from asynctrain._events import EpochEvent, Event, StepEvent
from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain._inputs import ClassWeight
from asynctrain._monitor import LoopLagMonitor
from asynctrain._streaming._batch import NameRecord
from asynctrain._streaming._feed import open_feed
from asynctrain.data import Dataset
from asynctrain.data._frames import is_column, is_table

DEFAULT_BUFFER = 4
"""Validated source batches a stream fit holds in its queue before the producer waits."""

Source = Iterable[Any] | AsyncIterable[Any]


@dataclass(frozen=True, kw_only=True)
class StreamLimits:
    """When a stream fit stops and reports, and how far it reads ahead; checked on creation.

    Raises:
        ConfigError, ConfigTypeError: a limit that is not a positive integer (or None).
    """

    max_steps: int | None = None
    max_samples: int | None = None
    validate_every: int | None = None
    buffer: int = DEFAULT_BUFFER

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_samples", "validate_every"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value)
        check_int("buffer", self.buffer)

    def rows(self, batch_size: int) -> int | None:
        """The most rows the stream may contribute: max_samples, or max_steps batches."""
        limits = [self.max_samples, None if self.max_steps is None else self.max_steps * batch_size]
        given = [limit for limit in limits if limit is not None]
        return min(given) if given else None


def check_source(source: object) -> Source:
    """Return ``source`` if it is an (async) iterable of batches, not one dataset.

    Raises:
        ConfigTypeError: ``source`` is a Dataset, an array, an ``(X, y)`` pair or not
            iterable at all.
    """
    if isinstance(source, Dataset | np.ndarray) or is_table(source) or _is_pair(source):
        raise ConfigTypeError(
            f"source is one dataset ({type(source).__name__}), not a stream of batches; "
            "use fit(data) for it, or wrap it: fit_stream([(X, y)])"
        )
    if isinstance(source, str | bytes | os.PathLike):
        raise ConfigTypeError(
            f"source is a path ({source!r}), not a stream of batches (a string iterates "
            "its characters); stream Parquet files with "
            "fit_stream(asynctrain.data.read_parquet(path, label=..., batch_size=...))"
        )
    if not isinstance(source, Iterable | AsyncIterable):
        raise ConfigTypeError(
            f"source must be an iterable or async iterable of (X, y) batches, got "
            f"{type(source).__name__}"
        )
    return source


def _is_pair(source: object) -> bool:
    """An ``(X, y)`` pair or ``(X, y, sample_weight)`` triple of arrays: one dataset."""
    return (
        isinstance(source, tuple)
        and len(source) in (2, 3)
        and all(
            isinstance(part, np.ndarray) or is_table(part) or is_column(part) for part in source
        )
    )


async def stream_events(
    parts: FitParts,
    source: Source,
    limits: StreamLimits,
    validation: Dataset | None,
    *,
    describe: Callable[[int], str] = "stream batch {}".format,
    names: NameRecord | None = None,
    class_weight: ClassWeight = None,
) -> AsyncGenerator[Event, None]:
    """Train a fit's ``parts`` on ``source``; yield its events.

    ``names`` holds the fit's feature names; a batch that is a data frame must match them
    (the first named batch sets them when there are none yet). ``class_weight`` (a dict,
    checked by the caller) weighs each batch's rows by class.

    Raises:
        ConfigError: the trainer cannot train a stream (:func:`check_streamable`).
    """
    step = check_streamable(parts.config, parts.mode)
    batch_size = parts.config.batch_size
    async with open_feed(
        source,
        parts.model,
        parts.backend,
        batch_size=batch_size,
        buffer=limits.buffer,
        max_samples=limits.rows(batch_size),
        describe=describe,
        names=names,
        class_weight=class_weight,
    ) as feed:
        item = await feed.next()
        if item is None or feed.ring is None:
            return
        async with open_context(parts, feed.ring, validation, streaming=True) as (
            ctx,
            val_data,
        ):
            feed.site.follow(ctx.placement)  # check batches where the steps compute
            periods = _Periods(parts.lag, ctx, validation, val_data, limits.validate_every)
            while item is not None:
                slot, rows = item
                feed.step_begins()
                stats = await step(ctx, range(rows), data_slot=slot)
                await feed.step_ended(slot)
                yield periods.record(stats)
                if periods.due():
                    yield await periods.close()
                item = await feed.next()
            if periods.steps:
                yield await periods.close()


def check_streamable(config: TrainConfig, mode: Mode) -> Any:
    """The step of ``mode`` that trains a stream's batches; ConfigError for a trainer
    that cannot train a stream (``fit_stream``, ``partial_fit``): ``shuffle="shard"``
    partitions a dataset held whole, and modes other than sync train held data only.
    The trainer asks before it opens its backend, so a refusal starts no worker."""
    if config.shuffle == "shard":
        raise ConfigError(
            f"shuffle={config.shuffle!r} partitions an in-memory dataset between the "
            "shards; a stream is read in the order it arrives: use the default "
            "shuffle='global' (or 'none') to train on a stream"
        )
    step = getattr(mode, "step", None)
    if step is None:
        raise ConfigError(
            f"mode {mode.name!r} trains data held in memory only (fit); fit_stream and "
            "partial_fit need mode='sync'"
        )
    return step


class _Periods:
    """Step-count periods of a stream fit, each closed by an EpochEvent."""

    def __init__(
        self,
        lag: LoopLagMonitor | None,
        ctx: StepContext,
        validation: Dataset | None,
        val_data: Any,
        every: int | None,
    ) -> None:
        self.lag, self.ctx, self.every = lag, ctx, every
        self.validation, self.val_data = validation, val_data
        self.number, self.losses = 0, list[float]()
        self.began, self.seen = time.perf_counter(), (ctx.samples, ctx.weight)

    @property
    def steps(self) -> int:
        """Steps in the open period."""
        return len(self.losses)

    def record(self, stats: StepStats) -> StepEvent:
        """Count one applied (or skipped) step; return its StepEvent."""
        self.losses.append(stats.loss * stats.weight)
        return self.ctx.event(self.number, stats)

    def due(self) -> bool:
        """True when the open period has reached ``validate_every`` steps."""
        return self.every is not None and self.steps >= self.every

    async def close(self) -> EpochEvent:
        """Validate, report the open period and start the next one."""
        args = (self.validation, self.val_data, self.losses, self.began, self.seen)
        event = await epoch_event(self.ctx, self.number, *args, self.lag)
        self.number, self.losses = self.number + 1, []
        self.began, self.seen = time.perf_counter(), (self.ctx.samples, self.ctx.weight)
        return event
