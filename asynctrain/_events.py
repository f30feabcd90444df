"""What training reports: step and epoch events, the fit result, and callbacks."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from asynctrain._checks import check_choice, check_float, check_int
from asynctrain._types import Params


@dataclass(frozen=True, slots=True)
class StepEvent:
    """One optimizer step.

    Attributes:
        step: zero-based step number (counts applied and skipped steps).
        epoch: zero-based epoch the step belongs to.
        loss: mean training loss of the step's batch.
        grad_norm: global L2 norm of the mean gradient (NaN if the step was skipped).
        samples: samples in the batch.
        samples_per_s: throughput of this fit so far.
        staleness: parameter versions between those the gradient was computed on and those
            it was applied to (0 in sync mode).
        skipped: the update was dropped by ``nonfinite="skip"``.
    """

    step: int
    epoch: int
    loss: float
    grad_norm: float
    samples: int
    samples_per_s: float
    staleness: int = 0
    skipped: bool = False
    kind: Literal["step"] = "step"


@dataclass(frozen=True, slots=True)
class EpochEvent:
    """The end of one epoch: training loss, validation metrics and speed.

    ``val_loss`` and ``val_accuracy`` are NaN without validation data (accuracy also for
    regression models). ``loop_lag_p99_ms`` is the event loop's p99 lag so far (over the
    monitor's window) when the fit measures it (``fit(monitor_lag=True)``), else NaN.
    """

    epoch: int
    loss: float
    val_loss: float
    val_accuracy: float
    seconds: float
    samples_per_s: float
    steps: int
    loop_lag_p99_ms: float = math.nan
    kind: Literal["epoch"] = "epoch"


Event = StepEvent | EpochEvent


@dataclass(frozen=True)
class FitResult:
    """What ``fit`` returns.

    Attributes:
        params: the final parameters (read-only arrays).
        history: one :class:`EpochEvent` per completed epoch.
        steps: optimizer steps taken by this fit (including skipped ones).
        seconds: wall time of the fit.
        samples_per_s: training samples processed per second.
        stopped_early: a callback ended the fit before ``epochs``.
        skipped_steps: steps whose update was skipped (``nonfinite="skip"``).
        staleness_mean: mean staleness over the fit's steps (0 in sync mode).
        staleness_max: largest staleness seen.
    """

    params: Params
    history: list[EpochEvent]
    steps: int
    seconds: float
    samples_per_s: float
    stopped_early: bool = False
    skipped_steps: int = 0
    staleness_mean: float = 0.0
    staleness_max: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """Completed epochs."""
        return len(self.history)

    @property
    def val_accuracy(self) -> float:
        """Validation accuracy after the last epoch (NaN if there was none)."""
        return self.history[-1].val_accuracy if self.history else math.nan

    @property
    def loss(self) -> float:
        """Training loss of the last epoch (NaN if no epoch completed)."""
        return self.history[-1].loss if self.history else math.nan


class Callback:
    """Base class for callbacks; override what you need. A truthy return stops the fit.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch(self, event):
        ...         print(event.epoch, round(event.loss, 3))
    """

    def on_step(self, event: StepEvent) -> bool | Awaitable[bool | None] | None:
        """Called after every step (may be a coroutine: the trainer awaits it)."""
        return None

    def on_epoch(self, event: EpochEvent) -> bool | Awaitable[bool | None] | None:
        """Called after every epoch, after validation (may be a coroutine)."""
        return None


class EarlyStopping(Callback):
    """Stop when a monitored metric has not improved for ``patience`` epochs.

    Args:
        patience: epochs without improvement before stopping (>= 1).
        min_delta: smallest change that counts as an improvement (>= 0).
        monitor: ``"val_loss"`` (lower is better), ``"val_accuracy"`` (higher is better) or
            ``"loss"``. A validation metric falls back to ``"loss"`` when it is NaN.

    Example:
        >>> stopper = EarlyStopping(patience=2, min_delta=1e-3)
    """

    def __init__(self, *, patience: int = 3, min_delta: float = 0.0, monitor: str = "val_loss"):
        self.patience = check_int("patience", patience)
        self.min_delta = check_float("min_delta", min_delta)
        self.monitor = check_choice("monitor", monitor, ("val_loss", "val_accuracy", "loss"))
        self.best = math.inf
        self.waited = 0

    def on_epoch(self, event: EpochEvent) -> bool:
        """Track the metric; return True once it has stalled for ``patience`` epochs."""
        value = getattr(event, self.monitor)
        sign = -1.0 if self.monitor == "val_accuracy" else 1.0
        if math.isnan(value):
            value, sign = event.loss, 1.0
        if sign * value < self.best - self.min_delta:
            self.best, self.waited = sign * value, 0
            return False
        self.waited += 1
        return self.waited >= self.patience

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, "
            f"monitor={self.monitor!r})"
        )


def summarize_staleness(values: Sequence[int]) -> tuple[float, int]:
    """Mean and max of per-step staleness values (0, 0 for none)."""
    if not values:
        return 0.0, 0
    return sum(values) / len(values), max(values)
