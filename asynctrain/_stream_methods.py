"""The streaming methods of :class:`~asynctrain.Trainer`: fit_stream, stream_steps,
partial_fit (a mixin, so the trainer's module holds epochs and this one holds streams)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence

import numpy.typing as npt

from asynctrain._epochs import collect
from asynctrain._events import Callback, Event, FitResult
from asynctrain._exceptions import StateError
from asynctrain._streaming._stream import (
    DEFAULT_BUFFER,
    Source,
    StreamLimits,
    check_source,
    stream_events,
)
from asynctrain._trainer_base import DataLike, TrainerBase


class StreamMethods(TrainerBase):
    """Train on streams of batches and on rows handed in one call at a time."""

    async def fit_stream(
        self,
        source: Source,
        *,
        max_steps: int | None = None,
        max_samples: int | None = None,
        validate_every: int | None = None,
        validation: DataLike | None = None,
        callbacks: Sequence[Callback] = (),
        buffer: int = DEFAULT_BUFFER,
    ) -> FitResult:
        """Train on a stream of ``(X, y)`` batches until it ends; return a FitResult.

        Batches of any size are validated as they arrive, re-cut into ``batch_size``
        rows in stream order and trained on one step per batch (the stream's last, short
        batch included). A bounded queue of ``buffer`` batches sits between the source
        and the trainer: a producer faster than training waits. ``history`` holds one
        :class:`EpochEvent` per period of ``validate_every`` steps (and one for the last,
        partial period); see ``docs/streaming.md``.

        Args:
            source: an iterable or async iterable (e.g. an async generator) of ``(X, y)``
                pairs of arrays or Datasets. A sync source's ``next()`` runs off the loop.
            max_steps: stop after this many steps (None: no limit).
            max_samples: train on at most the stream's first ``max_samples`` rows.
            validate_every: close a period (validate, report an EpochEvent, call
                ``on_epoch`` callbacks) every this many steps; None: once, at the end.
            validation: data to evaluate at the end of each period.
            callbacks: :class:`Callback` objects; one returning True stops the fit.
            buffer: validated batches held before the producer waits, >= 1.

        Raises:
            DataError: a bad batch, naming its number (counting from 0); no part of it is
                trained, and the parameters are those after every full batch before it.
            ConfigError, ConfigTypeError: a bad setting, or a source that is not a stream.
            StateError: the trainer is closed or already running a fit.
            Exception: whatever the source raised, unchanged.

        Example:
            >>> import asynctrain as at
            >>> data = at.data.synthetic("softmax", n=2000)
            >>> async def batches():  # e.g. messages from a queue
            ...     for start in range(0, len(data), 300):
            ...         yield data.X[start : start + 300], data.y[start : start + 300]
            >>> async def main():
            ...     model = at.models.SoftmaxRegression(128, 10)
            ...     async with at.Trainer(model, backend="inline", batch_size=512) as trainer:
            ...         return await trainer.fit_stream(batches(), max_steps=3)
            >>> at.run(main()).steps
            3
        """
        events = self.stream_steps(
            source,
            max_steps=max_steps,
            max_samples=max_samples,
            validate_every=validate_every,
            validation=validation,
            buffer=buffer,
        )
        return await collect(self, events, callbacks)

    async def stream_steps(
        self,
        source: Source,
        *,
        max_steps: int | None = None,
        max_samples: int | None = None,
        validate_every: int | None = None,
        validation: DataLike | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> AsyncGenerator[Event, None]:
        """Train like :meth:`fit_stream`, yielding a :class:`StepEvent` per step and an
        :class:`EpochEvent` per period. Close it when you stop early
        (``contextlib.aclosing``): that stops consuming the source and closes it."""
        limits = StreamLimits(
            max_steps=max_steps,
            max_samples=max_samples,
            validate_every=validate_every,
            buffer=buffer,
        )
        source = check_source(source)
        val = None if validation is None else self._prepare(validation, "validation")
        # The events are closed explicitly, not at garbage collection: that stops the feed.
        events = stream_events(self, source, limits, val)
        async with self._running_fit(), contextlib.aclosing(events):
            async for event in events:
                yield event

    async def partial_fit(self, X: npt.ArrayLike, y: npt.ArrayLike) -> FitResult:
        """One update pass over ``(X, y)``: ``ceil(len(X) / batch_size)`` steps, in order.

        Safe to call from many request handlers at once: calls are applied one at a time,
        whole, in the order they were made (FIFO), each exactly once. It refuses to run
        while a fit is running, and a fit refuses to start while calls are pending.
        Keep the trainer open (``async with``) so calls share one backend.

        Returns:
            A FitResult of this call (``steps``, ``loss``, ``params`` after it).

        Raises:
            DataError, DataTypeError: ``(X, y)`` is unusable; nothing of it is applied.
            StateError: the trainer is closed or running a fit.

        Example:
            >>> import asyncio
            >>> import asynctrain as at
            >>> data = at.data.synthetic("softmax", n=1000)
            >>> async def main():
            ...     model = at.models.SoftmaxRegression(128, 10)
            ...     async with at.Trainer(model, backend="inline", batch_size=64) as trainer:
            ...         first = trainer.partial_fit(data.X[:100], data.y[:100])  # 2 steps
            ...         second = trainer.partial_fit(data.X[100:120], data.y[100:120])
            ...         results = await asyncio.gather(first, second)  # in call order
            ...         return [r.steps for r in results], trainer.state.step
            >>> at.run(main())
            ([2, 1], 3)
        """
        if self._running and not self._partials:
            raise StateError(
                f"{self!r} is running a fit; partial_fit does not wait behind a fit: "
                "await the fit first, or feed the rows to fit_stream"
            )
        self._partials += 1
        try:
            async with self._partial_lock, self._running_fit(partial=True):
                events = stream_events(
                    self, [(X, y)], StreamLimits(), None, describe=lambda _: "partial_fit data"
                )
                return await collect(self, events, ())
        finally:
            self._partials -= 1
