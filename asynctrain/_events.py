"""What training reports: step and epoch events, the fit result, and the callback hooks."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain._types import Params

if TYPE_CHECKING:
    from asynctrain._control import FitControl


@dataclass(frozen=True, slots=True)
class StepEvent:
    """One optimizer step.

    Attributes:
        step: zero-based step number (counts applied and skipped steps).
        epoch: zero-based epoch the step belongs to.
        loss: mean training loss of the step's batch (weighted by the sample weights, if
            the data has them).
        grad_norm: global L2 norm of the mean gradient (NaN if the step was skipped).
        samples: samples in the batch.
        samples_per_s: throughput of this fit so far.
        staleness: parameter versions between those the gradient was computed on and those
            it was applied to (0 in sync mode).
        skipped: the update was dropped by ``nonfinite="skip"``.
        weight: the batch's total sample weight; equal to ``samples`` for data without
            sample weights (NaN when not reported).
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
    weight: float = math.nan


@dataclass(frozen=True, slots=True)
class EpochEvent:
    """The end of one epoch: training loss, validation metrics and speed.

    ``val_loss`` and ``val_accuracy`` are NaN without validation data (accuracy also for
    regression models). ``loop_lag_p99_ms`` is the event loop's p99 lag so far (over the
    monitor's window) when the fit measures it (``fit(monitor_lag=True)``), else NaN.
    ``metrics`` holds the validation metrics chosen with ``fit(metrics=[...])``, keyed
    ``val_<name>`` (``{"val_f1": 0.91, "val_auc": 0.97}``); :meth:`value` reads any of them.
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
    metrics: dict[str, float] = field(default_factory=dict)

    def value(self, name: str) -> float:
        """The value of ``name``: ``"loss"``, ``"val_loss"``, ``"val_accuracy"`` or a key
        of :attr:`metrics` (``"val_f1"``, ...).

        Raises:
            ConfigError: ``name`` is none of these (a metric the fit did not compute).

        Example:
            >>> EpochEvent(0, 0.5, 0.6, 0.8, 1.0, 100.0, 4, metrics={"val_f1": 0.7}).value("val_f1")
            0.7
        """
        if name in ("loss", "val_loss", "val_accuracy"):
            return float(getattr(self, name))
        if name in self.metrics:
            return self.metrics[name]
        metric = name.removeprefix("val_")
        raise ConfigError(
            f"epoch {self.epoch} has no {name!r}: it has loss, val_loss, val_accuracy"
            f"{''.join(', ' + key for key in self.metrics)}; pass fit(metrics=[{metric!r}]) "
            "and validation data to compute it"
        )


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
        feature_names: the names of the feature columns trained on (a data frame's
            columns), also after this fit (see ``Trainer.feature_names``); None for
            arrays without names.
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
    feature_names: tuple[str, ...] | None = None

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

    @property
    def metrics(self) -> dict[str, float]:
        """The chosen validation metrics of the last epoch (``fit(metrics=[...])``), keyed
        ``val_<name>``; empty if none were chosen or no epoch completed."""
        return dict(self.history[-1].metrics) if self.history else {}


class Callback:
    """Base class for callbacks; override what you need. A truthy return stops the fit.

    Every hook may be a plain method or a coroutine (the trainer awaits it). A fit calls
    ``on_fit_start`` once before its first step, ``on_step`` and ``on_epoch`` as it goes,
    and ``on_fit_end`` once when it ends, however it ends (also after an error or a
    cancellation: :attr:`FitControl.error` says which). The :class:`FitControl` the two
    fit hooks receive is how a callback reaches the trainer (parameters, saving,
    restoring, the learning-rate scale) without touching its internals.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch(self, event):
        ...         print(event.epoch, round(event.loss, 3))
    """

    def on_fit_start(self, fit: FitControl) -> Awaitable[None] | None:
        """Called once before the fit's first step, with the fit's :class:`FitControl`."""
        return None

    def on_fit_end(self, fit: FitControl) -> Awaitable[None] | None:
        """Called once when the fit ends (after its last event, or its error)."""
        return None

    def on_step(self, event: StepEvent) -> bool | Awaitable[bool | None] | None:
        """Called after every step (may be a coroutine: the trainer awaits it)."""
        return None

    def on_epoch(self, event: EpochEvent) -> bool | Awaitable[bool | None] | None:
        """Called after every epoch, after validation (may be a coroutine)."""
        return None

    def state_dict(self) -> dict[str, Any] | None:
        """What the fit's checkpoints keep of this callback, or None (the default) for
        nothing.

        Called on the event loop whenever a fit with a ``checkpoint_dir`` saves; the
        result is written on another thread while the fit goes on, so return a snapshot
        (new containers; arrays that are never changed in place). Plain data only:
        dicts with str keys, tuples, numpy arrays, int, float, bool, str and None.
        Resuming the fit (``resume=True``) hands it back to :meth:`load_state_dict`.
        """
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned, when a fit resumes from a
        checkpoint; called after ``on_fit_start`` and before the first step. A tuple
        comes back as a plain tuple. Raise ValueError, TypeError or KeyError for a
        state you cannot take back: the fit fails with a CheckpointError naming the
        callback."""
        return None


def check_callbacks(callbacks: Iterable[Callback] | None) -> tuple[Callback, ...]:
    """Return ``callbacks`` as a tuple, each one checked to have ``on_step`` and
    ``on_epoch``, before any step is taken (None: none, as Keras takes it).

    A fit walks its callbacks several times (``on_fit_start``, every event, checkpoint
    states), so a generator is taken once here: walked as given, it would be used up by
    the first walk and every later hook silently skipped. A single callback not in a list,
    or something without the hooks, would otherwise fail with a bare TypeError or
    AttributeError, the latter only after a first step had been trained.

    Raises:
        ConfigTypeError: ``callbacks`` is not an iterable of callbacks, naming the fix.

    Example:
        >>> len(check_callbacks(c for c in [Callback(), Callback()]))
        2
    """
    if callbacks is None:
        return ()
    if _is_callback(callbacks) or not isinstance(callbacks, Iterable):
        raise ConfigTypeError(
            f"callbacks must be a list of callbacks, got {callbacks!r:.80} "
            f"({type(callbacks).__name__}); pass callbacks=[...] (or () for none)"
        )
    found = tuple(callbacks)
    for i, callback in enumerate(found):
        if not _is_callback(callback):
            raise ConfigTypeError(
                f"callbacks[{i}] is {callback!r:.80} ({type(callback).__name__}), which has "
                "no on_step and on_epoch methods; subclass asynctrain.Callback"
            )
    return found


def _is_callback(value: object) -> bool:
    return callable(getattr(value, "on_step", None)) and callable(getattr(value, "on_epoch", None))


def summarize_staleness(values: Sequence[int]) -> tuple[float, int]:
    """Mean and max of per-step staleness values (0, 0 for none)."""
    if not values:
        return 0.0, 0
    return sum(values) / len(values), max(values)
