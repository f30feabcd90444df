"""A progress bar for the CLI (tqdm when installed); the library itself never prints."""

from __future__ import annotations

import math
import sys
from typing import Any

from asynctrain._control import FitControl
from asynctrain._events import Callback, EpochEvent, FitResult, StepEvent
from asynctrain._trainer import Trainer
from asynctrain.data import Dataset, steps_per_epoch


class Progress:
    """Fit a trainer while showing one bar over all its steps (or nothing when disabled).

    Each epoch's line shows ``EpochEvent.epoch`` as it is (zero-based), so the CLI, the
    events and logs written from them number epochs alike. Without tqdm only the epoch
    lines are shown (on stderr), and so it is when stderr is not a terminal (a log file,
    a CI job, a pipe): a bar redraws its line with carriage returns, which such a log
    keeps as one long line of every redraw.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled

    async def follow(
        self,
        trainer: Trainer,
        train: Dataset,
        validation: Dataset | None,
        epochs: int,
        **options: Any,
    ) -> FitResult:
        """Fit ``trainer`` on ``train`` for ``epochs`` epochs, updating the bar per step.

        The fit measures the event loop's lag (reported in ``FitResult.extra``);
        ``options`` go to :meth:`Trainer.fit` (``checkpoint_dir``, ``resume``, ...;
        ``callbacks`` run before the bar's).
        """
        total = steps_per_epoch(len(train), trainer.config.batch_size) * epochs
        callbacks = self.callbacks(total)
        try:
            async with trainer:
                return await trainer.fit(
                    train,
                    epochs=epochs,
                    validation=validation,
                    callbacks=[*options.pop("callbacks", ()), *callbacks],
                    monitor_lag=True,
                    **options,
                )
        finally:
            for callback in callbacks:
                callback.close()

    def callbacks(self, total: int) -> list[_Lines]:
        """The callbacks that show a fit of ``total`` steps (none when disabled)."""
        if not self.enabled:
            return []
        if not _is_terminal(sys.stderr):
            return [_Lines()]
        try:
            from tqdm import tqdm
        except ImportError:
            return [_Lines()]
        return [_Bar(tqdm(total=total, unit="step", dynamic_ncols=True, leave=False))]


def _is_terminal(stream: object) -> bool:
    """Whether ``stream`` is a terminal (False for a file, a pipe, a closed stream)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (ValueError, OSError):  # closed, or detached
        return False


def epoch_line(event: EpochEvent) -> str:
    """One line for an epoch: its number as in the event, the loss, validation figures."""
    parts = [f"epoch {event.epoch}: loss {event.loss:.4f}"]
    if not math.isnan(event.val_loss):
        parts.append(f"val_loss {event.val_loss:.4f}")
    if not math.isnan(event.val_accuracy):
        parts.append(f"val_acc {event.val_accuracy:.4f}")
    return " ".join(parts)


class _Lines(Callback):
    """One line per epoch on stderr."""

    def on_epoch(self, event: EpochEvent) -> None:
        self.write(epoch_line(event))

    def write(self, line: str) -> None:
        print(line, file=sys.stderr)

    def close(self) -> None:
        pass


class _Bar(_Lines):
    """A tqdm bar over the steps, with the epoch lines above it."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def on_fit_start(self, fit: FitControl) -> None:
        """Start at the steps a resumed fit has behind it (0 for a new trainer, as the
        CLI's are): its total counts every epoch, the resumed ones too, so a bar from 0
        ended short of 100 % and misjudged the time left."""
        if fit.step:
            self.bar.update(fit.step)

    def on_step(self, event: StepEvent) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)

    def write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
