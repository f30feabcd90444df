"""Epoch order, batch and shard boundaries: the pure functions that fix determinism.

The trainer calls these on every epoch and step. Each is a pure function of its
arguments, so a run resumed from a checkpoint at (seed, epoch, step) visits exactly the
same samples in the same shards as the uninterrupted run.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_int


def epoch_order(n: int, *, seed: int, epoch: int) -> npt.NDArray[np.int64]:
    """Return the sample order of one epoch: a permutation of ``0 .. n - 1``.

    A pure function of ``(n, seed, epoch)``
    (``np.random.default_rng([seed, epoch]).permutation(n)``), independent of any
    global or earlier random state, so a resumed run reproduces it exactly.

    Args:
        n: number of samples, >= 1.
        seed: non-negative run seed.
        epoch: zero-based epoch number.

    Returns:
        An int64 array holding each of ``0 .. n - 1`` once.

    Raises:
        ConfigTypeError: an argument is not an int (or is a bool).
        ConfigError: ``n < 1`` or ``seed``/``epoch`` negative.

    Example:
        >>> sorted(epoch_order(4, seed=0, epoch=1).tolist())
        [0, 1, 2, 3]
    """
    n = check_int("n", n, minimum=1)
    rng = np.random.default_rng(
        [check_int("seed", seed, minimum=0), check_int("epoch", epoch, minimum=0)]
    )
    return rng.permutation(n).astype(np.int64, copy=False)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Return consecutive ``(start, stop)`` pairs covering ``0 .. n``, ``batch_size`` apart.

    The last batch is shorter when ``batch_size`` does not divide ``n``; no sample is
    dropped. A ``batch_size`` larger than ``n`` gives the single batch ``(0, n)``.

    Args:
        n: number of samples, >= 1.
        batch_size: rows per batch, >= 1.

    Returns:
        ``steps_per_epoch(n, batch_size)`` pairs.

    Raises:
        ConfigTypeError: an argument is not an int.
        ConfigError: an argument is < 1.

    Example:
        >>> batch_bounds(10, 4)
        [(0, 4), (4, 8), (8, 10)]
    """
    n = check_int("n", n, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def shard_bounds(length: int, shards: int) -> list[tuple[int, int]]:
    """Split ``length`` rows into ``shards`` contiguous ``(start, stop)`` parts.

    Like ``np.array_split``: sizes differ by at most one, larger parts first. When
    ``length < shards`` the trailing parts are empty (``start == stop``), so the list
    always has ``shards`` entries and shard ``i`` is always the ``i``-th.

    Args:
        length: rows in the batch, >= 1.
        shards: number of parts, >= 1.

    Returns:
        ``shards`` pairs covering ``0 .. length`` in order.

    Raises:
        ConfigTypeError: an argument is not an int.
        ConfigError: an argument is < 1.

    Example:
        >>> shard_bounds(10, 3)
        [(0, 4), (4, 7), (7, 10)]
        >>> shard_bounds(2, 3)
        [(0, 1), (1, 2), (2, 2)]
    """
    length = check_int("length", length, minimum=1)
    shards = check_int("shards", shards, minimum=1)
    size, extra = divmod(length, shards)
    bounds, start = [], 0
    for shard in range(shards):
        stop = start + size + (1 if shard < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Return the number of batches in one epoch: ``ceil(n / batch_size)``.

    Args:
        n: number of samples, >= 1.
        batch_size: rows per batch, >= 1.

    Raises:
        ConfigTypeError: an argument is not an int.
        ConfigError: an argument is < 1.

    Example:
        >>> steps_per_epoch(10, 4)
        3
    """
    n = check_int("n", n, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    return -(-n // batch_size)
