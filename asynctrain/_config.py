"""TrainConfig: the trainer's settings, frozen, keyword-only and validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from asynctrain._checks import INT64_MAX, check_choice, check_int
from asynctrain._exceptions import ConfigError

NONFINITE_POLICIES = ("raise", "skip")
SHUFFLES = ("global", "shard", "none")
"""How an epoch orders the rows: one permutation of all of them, each shard's fixed
partition shuffled on its own (see :mod:`asynctrain.data._partition`), or the rows in
the order given, every epoch."""
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
        seed: seeds parameter initialisation and the per-epoch shuffling; in
            ``[0, 2**63 - 1]``, as every integer setting (what a checkpoint holds).
        nonfinite: ``"raise"`` (stop with NonFiniteError, parameters untouched) or
            ``"skip"`` (drop that step's update and count it).
        shuffle: ``"global"`` (every epoch one permutation of all rows, cut into batches
            and shards), ``"shard"`` (rows dealt once into one partition per shard,
            each shuffled on its own every epoch: shard ``s`` only ever reads partition
            ``s``, which lets a cluster backend keep it on one worker) or ``"none"``
            (every epoch takes the rows in the order given: data ordered on purpose, a
            curriculum, or scikit-learn's ``shuffle=False``).

    Raises:
        ConfigError: a value out of range, e.g. ``shards > batch_size``.
        ConfigTypeError: a value of the wrong type, e.g. ``batch_size=True``.

    Example:
        >>> TrainConfig(batch_size=256, shards=8).shards
        8
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    shards: int = DEFAULT_SHARDS
    seed: int = 0
    nonfinite: str = "raise"
    shuffle: str = "global"

    def __post_init__(self) -> None:
        # Kept as the Python ints checked (a numpy integer passes the check, but a
        # checkpoint's JSON manifest cannot hold it), at most what a checkpoint holds.
        batch_size = check_int("batch_size", self.batch_size, maximum=INT64_MAX)
        object.__setattr__(self, "batch_size", batch_size)
        object.__setattr__(self, "shards", check_int("shards", self.shards, maximum=INT64_MAX))
        if self.shards > self.batch_size:
            raise ConfigError(
                f"shards={self.shards} is larger than batch_size={self.batch_size}; every "
                f"shard needs at least one sample: use shards <= {self.batch_size} or a "
                "larger batch_size"
            )
        seed = check_int("seed", self.seed, minimum=0, maximum=INT64_MAX)
        object.__setattr__(self, "seed", seed)
        check_choice("nonfinite", self.nonfinite, NONFINITE_POLICIES)
        check_choice("shuffle", self.shuffle, SHUFFLES)
