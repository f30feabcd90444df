"""EarlyStopping: stop when a metric stalls; optionally return the best epoch's parameters."""

from __future__ import annotations

from typing import Any

from asynctrain._callbacks._monitor import Monitored, check_free
from asynctrain._checks import check_int
from asynctrain._control import FitControl
from asynctrain._events import Callback, EpochEvent
from asynctrain._exceptions import ConfigTypeError
from asynctrain._types import Params


class EarlyStopping(Callback):
    """Stop when a monitored metric has not improved for ``patience`` epochs.

    Args:
        patience: epochs without improvement before stopping (>= 1).
        min_delta: smallest change that counts as an improvement (>= 0).
        monitor: ``"val_loss"`` (lower is better), ``"val_accuracy"`` (higher is better),
            ``"loss"``, or a metric of ``fit(metrics=[...])`` (``"val_f1"``,
            ``"val_auc"``, ``"val_r2"``: higher is better; ``"val_mae"``: lower). A
            validation value falls back to the training ``"loss"`` when it is NaN.
        restore_best: when the fit ends, make the parameters of the best epoch the
            trainer's and the result's (``FitResult.params``), instead of the last
            epoch's. Keeping them costs no copy (each step publishes new arrays). The
            step counters and optimizer state stay the last step's; the fit's own
            checkpoints hold the state training reached. Nothing is restored when the
            fit fails or is cancelled.

    Raises:
        ConfigError, ConfigTypeError: a bad setting.

    Example:
        >>> stopper = EarlyStopping(patience=2, min_delta=1e-3, restore_best=True)
    """

    def __init__(
        self,
        *,
        patience: int = 3,
        min_delta: float = 0.0,
        monitor: str = "val_loss",
        restore_best: bool = False,
    ) -> None:
        if not isinstance(restore_best, bool):
            raise ConfigTypeError(f"restore_best must be True or False, got {restore_best!r}")
        self.patience = check_int("patience", patience)
        self._monitored = Monitored(monitor, min_delta)
        self.monitor, self.min_delta = monitor, self._monitored.min_delta
        self.restore_best = restore_best
        self.waited = 0
        self.best_params: Params | None = None
        """The parameters of the best epoch so far (with ``restore_best=True``)."""
        self.best_epoch: int | None = None
        """The epoch whose value was the best so far."""
        self._fit: FitControl | None = None

    @property
    def best(self) -> float:
        """The best monitored value so far, signed so that lower is better."""
        return self._monitored.best

    def on_fit_start(self, fit: FitControl) -> None:
        """Start afresh: forget the best value of an earlier fit.

        Raises:
            ConfigError: it follows another fit that is still running.
        """
        check_free(self, self._fit, fit)
        self._fit = fit
        self._monitored.reset()
        self.waited, self.best_params, self.best_epoch = 0, None, None

    def on_epoch(self, event: EpochEvent) -> bool:
        """Track the metric; return True once it has stalled for ``patience`` epochs."""
        if self._monitored.improved(event):
            self.waited, self.best_epoch = 0, event.epoch
            if self.restore_best and self._fit is not None:
                self.best_params = self._fit.params
            return False
        self.waited += 1
        return self.waited >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """The epochs waited, the best value and epoch, and (with ``restore_best``) the
        best epoch's parameters: a resumed fit stops where one uninterrupted run would."""
        return {
            "waited": self.waited,
            "best": self._monitored.best,
            "best_epoch": self.best_epoch,
            "best_params": self.best_params,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Carry on from a checkpoint's :meth:`state_dict`.

        Raises:
            ValueError, TypeError, KeyError: a state this callback did not write, or
                best parameters that do not fit the model.
        """
        waited, best, epoch = state["waited"], state["best"], state["best_epoch"]
        if type(waited) is not int or waited < 0 or type(best) is not float:
            raise ValueError(f"waited {waited!r} and best {best!r} are not a count and a float")
        if epoch is not None and (type(epoch) is not int or epoch < 0):
            raise ValueError(f"best_epoch {epoch!r} is not an epoch")
        params = state["best_params"]
        if params is not None and self._fit is not None:
            _check_like(params, self._fit.params)
        self.waited, self.best_epoch = waited, epoch
        self._monitored.best = best
        self.best_params = params if self.restore_best else None

    def on_fit_end(self, fit: FitControl) -> None:
        """With ``restore_best``, hand the best epoch's parameters to the trainer."""
        if fit is not self._fit:  # a fit it refused to follow
            return
        self._fit = None
        if self.restore_best and fit.error is None and self.best_params is not None:
            fit.restore_params(self.best_params)

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, "
            f"monitor={self.monitor!r}, restore_best={self.restore_best})"
        )


def _check_like(params: Any, current: Params) -> None:
    """Refuse ``params`` unless they are arrays named, shaped and typed like ``current``."""
    if not isinstance(params, dict) or params.keys() != current.keys():
        raise ValueError(f"best_params are not the model's parameters ({sorted(current)})")
    for name, array in params.items():
        model = current[name]
        if getattr(array, "shape", None) != model.shape or array.dtype != model.dtype:
            raise ValueError(f"best_params[{name!r}] does not fit the model's {name!r}")
