"""The checkpoint methods of :class:`~asynctrain.Trainer`: ``save``, ``load``, ``restore``.

A mixin, so the trainer's module holds training and this package holds checkpoints.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

from asynctrain._checkpoint._content import Checkpoint, Payload, checkpoint_name
from asynctrain._checkpoint._session import PathLike, Writer, restored_settings, write_and_prune
from asynctrain._engine._update import TrainState, Updater
from asynctrain._exceptions import StateError

if TYPE_CHECKING:
    from asynctrain._trainer import Trainer
    from asynctrain.models import Model
    from asynctrain.optim import GradientTransformation


class CheckpointMethods:
    """Save, load and restore checkpoints; mixed into :class:`~asynctrain.Trainer`."""

    _running: bool
    _updater: Updater | None
    _saved_state: TrainState | None

    async def save(self, path: PathLike) -> Path:
        """Save a checkpoint of the last fully applied step; return the file written.

        The copy is taken between updates, so this may be awaited during a fit (from a
        callback, or another task). The write is atomic and runs off the event loop.

        Args:
            path: the file to write, or an existing directory to write
                ``step-<n>.ckpt`` into.

        Raises:
            CheckpointError: the write failed (the previous file at ``path`` is intact).

        Example:
            >>> await trainer.save("run/final.ckpt")  # doctest: +SKIP
        """
        with Writer() as writer:
            payload = await writer.snapshot(cast("Trainer", self))
            return await writer.run(_save_to, Path(path), payload, writer.cancel)

    async def load(self, path: PathLike) -> None:
        """Continue from the checkpoint at ``path`` (a file, or a directory's latest).

        Raises:
            CheckpointError: unreadable, not a checkpoint, or not matching this trainer
                (every mismatch of shards, batch size, seed, mode, model or optimizer).
            StateError: a fit is running.

        Example:
            >>> await trainer.load("run/")  # doctest: +SKIP
        """
        self._check_idle("load a checkpoint into")
        with Writer() as writer:
            await self._load(writer, await writer.run(Checkpoint.read, path))

    @classmethod
    async def restore(
        cls,
        path: PathLike,
        model: Model,
        optimizer: GradientTransformation | None = None,
        **options: Any,
    ) -> Self:
        """Create a trainer that continues from the checkpoint at ``path``.

        ``batch_size``, ``shards``, ``seed``, ``nonfinite``, ``mode`` and the mode's options
        default to the checkpoint's; ``options`` are the other Trainer arguments
        (``backend``, ...).

        Raises:
            CheckpointError: as :meth:`load`.

        Example:
            >>> trainer = await Trainer.restore("run/", model, adam(1e-2))  # doctest: +SKIP
        """
        with Writer() as writer:
            checkpoint = await writer.run(Checkpoint.read, path)
            construct: Callable[..., Self] = cls  # the Trainer's constructor
            trainer = construct(model, optimizer, **restored_settings(checkpoint, options))
            await trainer._load(writer, checkpoint)
        return trainer

    async def _load(self, writer: Writer, checkpoint: Checkpoint) -> None:
        trainer = cast("Trainer", self)
        current = trainer.state.params
        self._set_state(await writer.run(checkpoint.train_state, trainer, current))

    def _check_idle(self, what: str) -> None:
        if self._running:
            raise StateError(f"cannot {what} {self!r} while it runs a fit; await it first")

    def _set_state(self, state: TrainState) -> None:
        self._check_idle("change the state of")
        if self._updater is not None:
            self._updater.state = state
        else:
            self._saved_state = state


def _save_to(path: Path, payload: Payload, cancel: threading.Event) -> Path:
    """Write ``payload`` to ``path``, or into it under its step's name if it is a directory."""
    if path.is_dir():
        path /= checkpoint_name(payload.state.step)
    write_and_prune(path, payload, cancel)
    return path
