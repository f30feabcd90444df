"""TrainConfig: the trainer's settings, frozen, keyword-only and validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from asynctrain._checks import check_choice, check_int
from asynctrain._exceptions import ConfigError

NONFINITE_POLICIES = ("raise", "skip")
MODE_OPTIONS: dict[str, tuple[str, ...]] = {
    "sync": (),
    "local": ("local_steps",),
    "ssp": ("staleness",),
    "async": (),
}
"""Each training mode and the mode-specific options it accepts."""
DEFAULT_BATCH_SIZE = 512
DEFAULT_SHARDS = 4
DEFAULT_LOCAL_STEPS = 4
DEFAULT_STALENESS = 2
_OPTION_RULES = {"local_steps": (1, DEFAULT_LOCAL_STEPS), "staleness": (0, DEFAULT_STALENESS)}
"""Each mode-specific option's minimum and its default in the mode that uses it."""


def default_shards(batch_size: int) -> int:
    """The shard count used when none is given: 4, or fewer for a batch smaller than 4."""
    return min(DEFAULT_SHARDS, batch_size) if batch_size >= 1 else DEFAULT_SHARDS


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How a :class:`~asynctrain.Trainer` trains; every field is checked when it is built.

    The shard count is a property of the *problem*, not of the machine: the same ``seed``
    and ``shards`` give bit-identical parameters on every backend and worker count.

    Args:
        batch_size: samples per optimizer step.
        shards: parts each batch is split into (one task each), at most ``batch_size``.
        seed: seeds parameter initialisation and the per-epoch shuffling.
        nonfinite: ``"raise"`` (stop with NonFiniteError, parameters untouched) or
            ``"skip"`` (drop that step's update and count it).
        mode: ``"sync"``, ``"local"``, ``"ssp"`` or ``"async"`` (see docs/modes.md).
        local_steps: optimizer steps each shard takes between averagings (``"local"``
            only, >= 1; default 4, None in other modes).
        staleness: how many versions old the parameters a step computes on may be
            (``"ssp"`` only, >= 0; default 2, None in other modes).

    Raises:
        ConfigError: a value out of range, e.g. ``shards > batch_size``, an unknown mode,
            or an option given to a mode that does not use it.
        ConfigTypeError: a value of the wrong type, e.g. ``batch_size=True``.

    Example:
        >>> TrainConfig(batch_size=256, shards=8).shards
        8
        >>> TrainConfig(mode="ssp").staleness
        2
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    shards: int = DEFAULT_SHARDS
    seed: int = 0
    nonfinite: str = "raise"
    mode: str = "sync"
    local_steps: int | None = None
    staleness: int | None = None

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size)
        check_int("shards", self.shards)
        if self.shards > self.batch_size:
            raise ConfigError(
                f"shards={self.shards} is larger than batch_size={self.batch_size}; every "
                f"shard needs at least one sample: use shards <= {self.batch_size} or a "
                "larger batch_size"
            )
        check_int("seed", self.seed, minimum=0)
        check_choice("nonfinite", self.nonfinite, NONFINITE_POLICIES)
        check_choice("mode", self.mode, tuple(MODE_OPTIONS))
        self._check_mode_options()

    def _check_mode_options(self) -> None:
        """Refuse another mode's option; fill in this mode's defaults."""
        for option, (minimum, default) in _OPTION_RULES.items():
            value = getattr(self, option)
            if option in MODE_OPTIONS[self.mode]:
                value = default if value is None else check_int(option, value, minimum=minimum)
                object.__setattr__(self, option, value)  # frozen: set once, while checking
            elif value is not None:
                owner = next(m for m, options in MODE_OPTIONS.items() if option in options)
                raise ConfigError(
                    f"{option}={value} is not an option of mode={self.mode!r}; use "
                    f"mode={owner!r} with it, or leave {option} out"
                )
