"""The vocabulary shared by every layer: parameters, gradients, shard and step ids.

Kept free of asyncio and of any other asynctrain module so that ``models``, ``optim`` and
``data`` can import it without pulling in the concurrency layer.
"""

from __future__ import annotations

import enum
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

Array: TypeAlias = npt.NDArray[np.floating]
"""A floating-point numpy array (float32 by default, float64 accepted and kept)."""

Params: TypeAlias = dict[str, npt.NDArray[np.floating]]
"""Model parameters: a flat mapping from name to array."""

Grads: TypeAlias = dict[str, npt.NDArray[np.floating]]
"""Gradients: same keys, shapes and dtypes as the parameters they belong to."""

ShardId: TypeAlias = int
"""Position of a shard within its step, ``0 .. shards - 1``; fixes the reduction order."""

Step: TypeAlias = int
"""Zero-based count of optimizer steps applied since training began."""

DEFAULT_DTYPE = np.dtype(np.float32)
"""Compute dtype used when the caller does not choose one."""


class State(enum.StrEnum):
    """The lifecycle of every resource asynctrain opens: trainers, services and backends.

    A StrEnum, so ``backend.state == "open"`` reads as before.
    """

    UNOPENED = "unopened"
    """Created; nothing started yet. The first use (or ``async with``) opens it."""
    OPEN = "open"
    """Its workers, threads or jobs are running; it accepts work."""
    CLOSED = "closed"
    """Closed for good: everything it started has stopped; using it raises StateError."""
