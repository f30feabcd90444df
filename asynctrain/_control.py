"""FitControl: the narrow part of a running fit's trainer that callbacks may use."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from asynctrain._engine._update import TrainState, Updater
from asynctrain._exceptions import ConfigError, StateError
from asynctrain._types import Params
from asynctrain.backends._base import readonly
from asynctrain.optim import PlateauRule, plateau_states


class Trainer(Protocol):
    """What a FitControl uses of the trainer it serves (the Trainer has all of it); a
    protocol, so this module does not import the trainer's."""

    optimizer: Any
    mode: Any
    _updater: Updater | None

    @property
    def state(self) -> TrainState: ...

    async def save(self, path: str | os.PathLike[str]) -> Path: ...

    def _check_save(self, path: str | os.PathLike[str]) -> None: ...

    def _set_state(self, state: TrainState) -> None: ...


class FitControl:
    """What a callback may see and do of the fit it follows.

    A :class:`~asynctrain.Callback` receives it in ``on_fit_start`` and ``on_fit_end``
    and may keep it for its other hooks. Everything here is safe to call from the event
    loop during the fit: reads see one whole committed step, and changes to the
    optimizer state run on the trainer's update thread, between steps.

    Example:
        >>> import asynctrain as at
        >>> class SaveEveryEpoch(at.Callback):
        ...     def on_fit_start(self, fit):
        ...         self.fit = fit
        ...     async def on_epoch(self, event):
        ...         await self.fit.save(f"epoch-{event.epoch}.ckpt")
    """

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer
        self._ended = False
        self.error: BaseException | None = None
        """The exception that ended the fit (in ``on_fit_end``), or None."""

    @property
    def params(self) -> Params:
        """The parameters of the last fully applied step (read-only arrays).

        Each step publishes new arrays, so keeping a reference keeps that version: no
        copy is needed.
        """
        return self._trainer.state.params

    @property
    def step(self) -> int:
        """Steps taken so far (the trainer's, not only this fit's)."""
        return self._trainer.state.step

    async def save(self, path: str | os.PathLike[str]) -> Path:
        """Save a checkpoint of the last applied step to ``path``; see
        :meth:`Trainer.save <asynctrain.Trainer.save>`.

        Raises:
            CheckpointError: the write failed.
        """
        return await self._trainer.save(path)

    def check_save(self, path: str | os.PathLike[str]) -> None:
        """Refuse now a :meth:`save` to ``path`` that would be refused for lying in the
        fit's own ``checkpoint_dir`` (that directory, or a ``step-<n>.ckpt`` in it: the
        fit's checkpoints), so a callback that saves there fails in ``on_fit_start``,
        before the first step, not after an epoch of training.

        Raises:
            CheckpointError: ``path`` is such a place; the error names the directory.
        """
        self._trainer._check_save(path)

    def restore_params(self, params: Mapping[str, npt.ArrayLike]) -> None:
        """Make ``params`` the trainer's parameters; only in ``on_fit_end``.

        The step counters and the optimizer state stay those of the last step, so a
        following fit continues from ``params`` with them. ``FitResult.params`` and
        ``trainer.params`` are ``params`` afterwards; the checkpoints the fit wrote (its
        ``checkpoint_dir``) keep the state training reached.

        Raises:
            StateError: the fit's steps have not ended yet (workers read the published
                parameters, which this does not republish).
            ConfigError: the keys, shapes or dtypes differ from the trainer's parameters.
        """
        if not self._ended:
            raise StateError("restore_params works only in on_fit_end, once the steps ended")
        current = self._trainer.state.params
        new = {key: np.asarray(value) for key, value in params.items()}
        if new.keys() != current.keys() or any(
            new[k].shape != v.shape or new[k].dtype != v.dtype for k, v in current.items()
        ):
            raise ConfigError(
                "restore_params needs the keys, shapes and dtypes of the trainer's "
                f"parameters {_shapes(current)}, got {_shapes(new)}"
            )
        state = self._trainer.state._replace(params=readonly(new))
        self._trainer._set_state(state)

    def plateau_scale(self) -> float:
        """The learning-rate scale of the optimizer's :func:`~asynctrain.optim.scale_by_plateau`.

        Raises:
            ConfigError: the optimizer has none, or the trainer's mode keeps one
                optimizer state per shard (``mode="local"``), where a scale set between
                steps would not reach the shards.
        """
        if self._trainer.mode.name == "local":
            raise ConfigError(
                "a learning-rate scale lowered between steps (ReduceLROnPlateau) does not "
                "reach mode='local', where each shard keeps its own optimizer state during "
                "a fit: use mode 'sync', 'ssp' or 'async', or a learning-rate schedule"
            )
        states = plateau_states(self._trainer.state.opt_state)
        if not states:
            raise ConfigError(
                f"the optimizer {self._trainer.optimizer!r} has no scale_by_plateau() to "
                "lower: build it as optim.chain(optim.adam(1e-3), optim.scale_by_plateau())"
            )
        return float(states[0].scale)

    async def observe_plateau(self, value: float, rule: PlateauRule) -> float:
        """Feed one epoch's ``value`` (lower is better) to :meth:`PlateauRule.observe
        <asynctrain.optim.PlateauRule.observe>` on the update thread; return the scale.

        Raises:
            ConfigError: as :meth:`plateau_scale`.
        """
        self.plateau_scale()
        scale: float = await self._on_update_thread(_observe, self._trainer, rule, value)
        return scale

    async def _on_update_thread(self, fn: Any, *args: Any) -> Any:
        updater = self._trainer._updater
        if updater is None:  # not open: nothing else changes the state
            return fn(*args)
        return await updater.call(fn, *args)

    def _end(self, error: BaseException | None) -> None:
        self._ended, self.error = True, error

    def __repr__(self) -> str:
        return f"<FitControl {self._trainer!r}{' ended' if self._ended else ''}>"


def _observe(trainer: Trainer, rule: PlateauRule, value: float) -> float:
    return rule.observe(plateau_states(trainer.state.opt_state), value)


def _shapes(params: Mapping[str, Any]) -> dict[str, str]:
    return {key: f"{value.dtype}{list(value.shape)}" for key, value in params.items()}
