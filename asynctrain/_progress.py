"""A progress bar for the CLI (tqdm when installed); the library itself never prints."""

from __future__ import annotations

from typing import Any

from asynctrain._events import Callback, EpochEvent, FitResult, StepEvent
from asynctrain._trainer import Trainer
from asynctrain.data import Dataset, steps_per_epoch


class Progress:
    """Fit a trainer while showing one bar over all its steps (or nothing when disabled)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled

    async def follow(
        self, trainer: Trainer, train: Dataset, validation: Dataset | None, epochs: int
    ) -> FitResult:
        """Fit ``trainer`` on ``train`` for ``epochs`` epochs, updating the bar per step.

        The fit measures the event loop's lag (reported in ``FitResult.extra``).
        """
        total = steps_per_epoch(len(train), trainer.config.batch_size) * epochs
        bar = self._bar(total)
        callbacks = [] if bar is None else [_BarCallback(bar)]
        try:
            async with trainer:
                return await trainer.fit(
                    train,
                    epochs=epochs,
                    validation=validation,
                    callbacks=callbacks,
                    monitor_lag=True,
                )
        finally:
            if bar is not None:
                bar.close()

    def _bar(self, total: int) -> Any:
        if not self.enabled:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)


class _BarCallback(Callback):
    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def on_step(self, event: StepEvent) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)

    def on_epoch(self, event: EpochEvent) -> None:
        self.bar.write(
            f"epoch {event.epoch + 1}: loss {event.loss:.4f} "
            f"val_loss {event.val_loss:.4f} val_acc {event.val_accuracy:.4f}"
        )
