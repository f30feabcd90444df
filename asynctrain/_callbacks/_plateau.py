"""ReduceLROnPlateau: lower the optimizer's learning-rate scale when a metric stalls."""

from __future__ import annotations

from asynctrain._callbacks._monitor import Monitored, check_free
from asynctrain._control import FitControl
from asynctrain._events import Callback, EpochEvent
from asynctrain._exceptions import ConfigError
from asynctrain.optim import PlateauRule


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stalls for ``patience`` epochs.

    The optimizer must end with :func:`~asynctrain.optim.scale_by_plateau`, the
    transform that holds the scale::

        optimizer = optim.chain(optim.adam(1e-3), optim.scale_by_plateau())

    After each epoch this callback feeds the monitored value to the scale's rule
    (:class:`~asynctrain.optim.PlateauRule`), which runs on the trainer's update thread
    between steps. The scale and the rule's bookkeeping (best value, epochs waited,
    cooldown) are part of the optimizer state, so checkpoints hold them and a resumed
    run continues bit-identically. Not available with ``mode="local"``, where every
    shard keeps its own optimizer state during a fit.

    Args:
        monitor: as :class:`~asynctrain.EarlyStopping`'s.
        factor: the scale is multiplied by this, in ``(0, 1)``.
        patience: epochs without improvement before a reduction (>= 1).
        min_delta: smallest change that counts as an improvement (>= 0).
        cooldown: epochs after a reduction before waiting starts again (>= 0).
        min_scale: the scale never goes below this, in ``[0, 1]``; the learning rate is
            the optimizer's times the scale.

    Attributes:
        scale: the scale after the latest epoch (1.0 before the first).

    Raises:
        ConfigError, ConfigTypeError: a bad setting; at the start of a fit, an optimizer
            without ``scale_by_plateau()`` or ``mode="local"``.

    Example:
        >>> reducer = ReduceLROnPlateau(factor=0.5, patience=2, min_scale=1e-2)
    """

    def __init__(
        self,
        *,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        min_delta: float = 0.0,
        cooldown: int = 0,
        min_scale: float = 0.0,
    ) -> None:
        self._monitored = Monitored(monitor, min_delta)
        self.monitor = monitor
        self.rule = PlateauRule(factor, patience, min_delta, cooldown, min_scale).checked()
        self.scale = 1.0
        self._fit: FitControl | None = None

    def on_fit_start(self, fit: FitControl) -> None:
        """Check that the optimizer has a scale to lower; read it.

        Raises:
            ConfigError: it follows another fit that is still running.
        """
        check_free(self, self._fit, fit)
        self.scale = fit.plateau_scale()
        self._fit = fit

    def on_fit_end(self, fit: FitControl) -> None:
        """Let another fit be followed (the scale reached stays readable)."""
        if fit is self._fit:
            self._fit = None

    async def on_epoch(self, event: EpochEvent) -> None:
        """Feed the epoch's value to the rule; the scale may go down."""
        if self._fit is None:
            raise ConfigError("ReduceLROnPlateau runs inside a fit: pass it in callbacks=[...]")
        self.scale = await self._fit.observe_plateau(self._monitored.read(event), self.rule)

    def __repr__(self) -> str:
        rule = self.rule
        return (
            f"ReduceLROnPlateau(monitor={self.monitor!r}, factor={rule.factor}, "
            f"patience={rule.patience}, min_delta={rule.min_delta}, "
            f"cooldown={rule.cooldown}, min_scale={rule.min_scale})"
        )
