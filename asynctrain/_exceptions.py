"""The errors asynctrain raises, all rooted at :class:`AsyncTrainError`.

::

    AsyncTrainError
    ├── ConfigError (ValueError)          a setting has a bad value
    │   └── ConfigTypeError (TypeError)   a setting has the wrong type (bool for an int, ...)
    ├── DataError (ValueError)            a dataset or batch is unusable (NaN, shape, labels)
    │   └── DataTypeError (TypeError)     non-numeric data
    ├── BackendError (RuntimeError)       an executor could not run a shard
    │   └── ShardFailedError              a shard failed every attempt of its retry budget
    ├── NonFiniteError (FloatingPointError)  a loss or gradient was NaN or infinite
    ├── CheckpointError (ValueError)      a checkpoint cannot be written, read or trusted
    └── StateError (RuntimeError)         an object was used in the wrong state (closed, busy)

Each message names the offending value and says how to fix it. Errors raised by user
code (a custom model's ``loss_and_grad``) are never wrapped: they reach the caller with
their own type.
"""

from __future__ import annotations

__all__ = [
    "AsyncTrainError",
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "ConfigTypeError",
    "DataError",
    "DataTypeError",
    "NonFiniteError",
    "ShardFailedError",
    "StateError",
]


class AsyncTrainError(Exception):
    """Base class of every error asynctrain raises on its own account."""


class ConfigError(AsyncTrainError, ValueError):
    """A setting has a value outside its valid range, e.g. ``shards=0``."""


class ConfigTypeError(ConfigError, TypeError):
    """A setting has the wrong type, e.g. ``epochs=True`` or ``batch_size=2.5``."""


class DataError(AsyncTrainError, ValueError):
    """A dataset or batch cannot be trained on: NaN/Inf, bad shape, labels out of range."""


class DataTypeError(DataError, TypeError):
    """A dataset holds values that are not numbers (strings, objects, complex)."""


class BackendError(AsyncTrainError, RuntimeError):
    """An executor failed to run a shard for reasons outside user code."""


class ShardFailedError(BackendError):
    """A shard failed on every attempt of its retry budget.

    Attributes:
        step: the optimizer step the shard belonged to.
        shard: the shard's position within the step.
        attempts: one human-readable line per attempt (exit code or signal).
    """

    def __init__(self, message: str, *, step: int, shard: int, attempts: list[str]) -> None:
        super().__init__(message)
        self.step = step
        self.shard = shard
        self.attempts = attempts


class NonFiniteError(AsyncTrainError, FloatingPointError):
    """A loss or gradient was NaN or infinite; the parameters were left untouched.

    Attributes:
        step: the step whose update was refused.
        shard: the first shard (in shard order) with a non-finite value, or None.
        parameter: the first parameter name with a non-finite gradient, or None.
    """

    def __init__(
        self, message: str, *, step: int, shard: int | None, parameter: str | None
    ) -> None:
        super().__init__(message)
        self.step = step
        self.shard = shard
        self.parameter = parameter


class CheckpointError(AsyncTrainError, ValueError):
    """A checkpoint could not be written, read, verified or matched to the trainer."""


class StateError(AsyncTrainError, RuntimeError):
    """An object was used in a state that does not allow it (closed, already running)."""
