"""ModelCheckpoint: save a checkpoint after every epoch, or after each new best one."""

from __future__ import annotations

import os
import string
from pathlib import Path

from asynctrain._callbacks._monitor import Monitored, check_free
from asynctrain._control import FitControl
from asynctrain._events import Callback, EpochEvent
from asynctrain._exceptions import CheckpointError, ConfigError, ConfigTypeError


class ModelCheckpoint(Callback):
    """Save a checkpoint (parameters, optimizer state, counters) at the end of epochs.

    The file is a regular asynctrain checkpoint: :meth:`Trainer.load
    <asynctrain.Trainer.load>`, :meth:`Trainer.restore <asynctrain.Trainer.restore>` and
    ``asynctrain inspect`` read it. Each write is atomic and runs off the event loop.

    Args:
        path: the file to write. It may name values of the epoch in ``str.format``
            style: ``{epoch}`` and any of ``loss``, ``val_loss``, ``val_accuracy`` and
            the chosen metrics (``"ckpt/epoch-{epoch:03d}-{val_loss:.3f}.ckpt"``). A
            fixed name is overwritten each time; an existing directory receives
            ``step-<n>.ckpt`` files (a path ending in a separator names a directory).
            The directory must exist (it is not created): a missing one fails the fit
            at its start with a ``CheckpointError``, unless the epoch's values name it.
            Not a ``step-<n>.ckpt`` in the fit's own ``checkpoint_dir``: those are the
            fit's checkpoints (refused with a ``CheckpointError`` at the fit's start).
        best_only: save only when the monitored value improves on the best so far.
        monitor: what "best" means; as :class:`~asynctrain.EarlyStopping`'s ``monitor``.
        min_delta: smallest change that counts as an improvement (>= 0).

    Attributes:
        saved: the files written by the latest fit, oldest first.

    Raises:
        ConfigError, ConfigTypeError: a bad setting.

    Example:
        >>> saver = ModelCheckpoint("run/best.ckpt", best_only=True, monitor="val_loss")
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        best_only: bool = False,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise ConfigTypeError(f"path must be a str or a path, got {path!r}")
        if not isinstance(best_only, bool):
            raise ConfigTypeError(f"best_only must be True or False, got {best_only!r}")
        self.path, self.best_only = _checked_template(os.fspath(path)), best_only
        self._monitored = Monitored(monitor, min_delta)
        self.monitor = monitor
        self.saved: list[Path] = []
        self._fit: FitControl | None = None

    def on_fit_start(self, fit: FitControl) -> None:
        """Keep the fit's control for saving; forget an earlier fit's best.

        Raises:
            ConfigError: it follows another fit that is still running.
            CheckpointError: ``path`` would write ``step-<n>.ckpt`` files into the fit's
                own ``checkpoint_dir``, or its directory does not exist (before the
                first step; a directory named by the epoch's values is not known yet).
        """
        check_free(self, self._fit, fit)
        fit.check_save(self.path.format(**_sample(self.path)))
        self._check_directory()
        self._fit = fit
        self._monitored.reset()
        self.saved = []

    def state_dict(self) -> dict[str, float]:
        """The best monitored value so far: a resumed fit saves only what beats it."""
        return {"best": self._monitored.best}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Carry on from a checkpoint's :meth:`state_dict`.

        Raises:
            TypeError, KeyError: a state this callback did not write.
        """
        if type(state["best"]) is not float:
            raise TypeError(f"best is {state['best']!r}, not a float")
        self._monitored.best = state["best"]

    async def on_epoch(self, event: EpochEvent) -> None:
        """Save if every epoch is saved, or if this one is the best so far."""
        improved = self._monitored.improved(event)
        if self.best_only and not improved:
            return
        if self._fit is None:
            raise ConfigError("ModelCheckpoint runs inside a fit: pass it in callbacks=[...]")
        self.saved.append(await self._fit.save(self._format(event)))

    def on_fit_end(self, fit: FitControl) -> None:
        """Let another fit be followed (``saved`` stays readable)."""
        if fit is self._fit:
            self._fit = None

    def _check_directory(self) -> None:
        """Refuse now a ``path`` whose directory (one the epoch's values do not name) is
        missing: every save would fail there, the first after an epoch of training."""
        head, separator, _ = self.path.rpartition(os.sep)
        if not separator:  # the working directory
            return
        try:
            if any(field is not None for _, field, _, _ in string.Formatter().parse(head)):
                return  # known at the epoch's end; it may be created meanwhile
        except ValueError:  # a field with a separator in it (its format spec)
            return
        directory = Path(head.format() or os.sep)  # literal braces unescaped
        if not directory.is_dir():
            raise CheckpointError(
                f"{self!r} cannot save: the directory {directory} does not exist (it is "
                "not created); create it before the fit, or pass another path"
            )

    def _format(self, event: EpochEvent) -> str:
        values = {
            "epoch": event.epoch,
            "loss": event.loss,
            "val_loss": event.val_loss,
            "val_accuracy": event.val_accuracy,
            **event.metrics,
        }
        try:
            return self.path.format(**values)  # a str: Path would drop a final "/"
        except KeyError as exc:
            raise ConfigError(
                f"ModelCheckpoint path {self.path!r} names {exc}, which epoch {event.epoch} "
                f"does not have; it has {', '.join(values)}"
            ) from None

    def __repr__(self) -> str:
        return (
            f"ModelCheckpoint({self.path!r}, best_only={self.best_only}, monitor={self.monitor!r})"
        )


def _checked_template(path: str) -> str:
    """``path`` if it formats as a ModelCheckpoint path; else a :class:`ConfigError` now,
    not after the first epoch has trained.

    Checked with every value it names set to a number of its kind (``epoch`` an int, the
    losses, accuracy and metrics floats): braces that do not pair, a positional field
    and a format spec its value cannot take (``{loss:03d}``) fail as they would at the
    end of an epoch. Whether a metric's name is one the fit computes is known only then.
    """
    hint = "write a literal brace as {{ or }}"
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(path) if field is not None]
    except ValueError as exc:
        raise ConfigError(
            f"ModelCheckpoint path {path!r} is not a template ({exc}); {hint}"
        ) from None
    if any(not name or name.isdigit() for name in _names(fields)):
        raise ConfigError(
            f"ModelCheckpoint path {path!r} has a field without a name; name a value of the "
            f"epoch, e.g. {{epoch}} or {{val_loss:.3f}}, or {hint}"
        )
    try:
        path.format(**_sample(path))
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        raise ConfigError(
            f"ModelCheckpoint path {path!r} cannot be filled in ({exc}); {{epoch}} is an int, "
            f"the losses, accuracy and metrics are floats (e.g. {{val_loss:.3f}}); {hint}"
        ) from None
    return path


def _names(fields: list[str]) -> set[str]:
    """The names of the values the template's ``fields`` take (``epoch`` of ``epoch:03d``)."""
    return {field.split(".", 1)[0].split("[", 1)[0] for field in fields}


def _sample(path: str) -> dict[str, int | float]:
    """Every value ``path`` (a checked template) names, set to a number of its kind."""
    fields = [field for _, field, _, _ in string.Formatter().parse(path) if field is not None]
    return {name: 1 if name == "epoch" else 0.5 for name in _names(fields)}
