"""A monitored value of the epoch events, and which way is better: shared by the callbacks."""

from __future__ import annotations

import math

from asynctrain._checks import check_float
from asynctrain._engine._metrics import METRICS
from asynctrain._events import EpochEvent
from asynctrain._exceptions import ConfigError, ConfigTypeError

_LOWER_IS_BETTER = {"loss", "val_loss"} | {
    f"val_{name}" for name, metric in METRICS.items() if not metric.higher_is_better
}
MONITORS = ("loss", "val_loss", "val_accuracy", *(f"val_{name}" for name in METRICS))


class Monitored:
    """The value ``monitor`` of each epoch, signed so that lower is better.

    A validation value that is NaN (no validation data) falls back to the training loss.
    An improvement is a decrease of more than ``min_delta`` below the best so far.
    """

    def __init__(self, monitor: str, min_delta: float) -> None:
        if not isinstance(monitor, str):
            raise ConfigTypeError(f"monitor must be a name such as 'val_loss', got {monitor!r}")
        if monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {', '.join(MONITORS)}; got {monitor!r}")
        self.monitor = monitor
        self.min_delta = check_float("min_delta", min_delta)
        self.sign = 1.0 if monitor in _LOWER_IS_BETTER else -1.0
        self.best = math.inf

    def read(self, event: EpochEvent) -> float:
        """The signed value of ``event`` (lower is better).

        Raises:
            ConfigError: the monitored metric was not computed (``fit(metrics=...)``).
        """
        value = event.value(self.monitor)
        if math.isnan(value):
            return event.loss
        return self.sign * value

    def improved(self, event: EpochEvent) -> bool:
        """Whether ``event`` improves on the best so far; if so it becomes the best."""
        value = self.read(event)
        if value < self.best - self.min_delta:
            self.best = value
            return True
        return False

    def reset(self) -> None:
        """Forget the best value (a new fit starts)."""
        self.best = math.inf


def check_free(callback: object, following: object, fit: object) -> None:
    """Refuse ``fit`` while ``callback`` follows another fit (``following``) still running.

    Followed, the second fit's start took the callback over: the first fit's epochs then
    drove the second's control (its saves, its learning-rate scale, the best parameters
    restored at its end), silently.
    """
    if following is not None and following is not fit:
        raise ConfigError(
            f"{callback!r} follows another fit already; give each fit that runs at the "
            f"same time its own {type(callback).__name__}"
        )
