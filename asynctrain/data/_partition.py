"""Shard-local sampling: each shard's fixed partition of the rows, and an epoch's order.

With the global shuffle (:func:`~asynctrain.data.epoch_order`) every shard reads rows
from anywhere in the dataset, a different set every epoch. With shard-local sampling
(``Trainer(shuffle="shard")``) the rows are dealt once per fit into one partition per
shard, and every epoch shuffles each partition on its own, as per-rank data partitions
do in other data-parallel systems. Shard ``s`` then reads only partition ``s``, so a
backend whose workers are other machines can keep partition ``s`` on the worker that
runs shard ``s`` alone.

Partition ``s`` holds exactly as many rows as shard ``s`` reads in an epoch (the sum of
its parts of every batch, :func:`~asynctrain.data.shard_bounds`), drawn from a
permutation keyed by the seed alone. An epoch's order is expressed in *positions* of the
partitions laid end to end (partition ``s`` at positions ``offsets[s]:offsets[s + 1]``):
cut into batches and each batch into shards, shard ``s``'s part of every batch lies in
its own partition's positions. Pure functions of their arguments, like ``epoch_order``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from asynctrain.data._order import shard_bounds

_PARTITION_STREAM = 0x5A4D  # spawn key: the partitions, independent of any epoch's order
_EPOCH_STREAM = 0x5A4E  # spawn key: an epoch's order within the partitions


def partition_sizes(n: int, *, batch_size: int, shards: int) -> npt.NDArray[np.int64]:
    """Rows shard ``s`` reads in an epoch of ``n`` rows, for every ``s``.

    Example:
        >>> partition_sizes(10, batch_size=4, shards=2).tolist()
        [5, 5]
        >>> partition_sizes(9, batch_size=4, shards=3).tolist()
        [5, 2, 2]
    """
    sizes: npt.NDArray[np.int64] = _part_sizes(n, batch_size, shards).sum(axis=0)
    return sizes


def shard_partitions(
    n: int, *, batch_size: int, shards: int, seed: int
) -> list[npt.NDArray[np.int64]]:
    """The rows (sorted indices into the dataset) of each shard's partition.

    Every row is in exactly one partition; partition ``s`` has
    ``partition_sizes(...)[s]`` rows. A pure function of its arguments: the epoch does
    not enter, so a partition stays where it is placed for the whole fit.

    Example:
        >>> parts = shard_partitions(10, batch_size=4, shards=2, seed=0)
        >>> sorted(int(i) for part in parts for i in part) == list(range(10))
        True
    """
    entropy = np.random.SeedSequence(seed, spawn_key=(_PARTITION_STREAM,))
    dealt = np.random.default_rng(entropy).permutation(n).astype(np.int64, copy=False)
    stops = np.cumsum(partition_sizes(n, batch_size=batch_size, shards=shards))
    return [np.sort(part) for part in np.split(dealt, stops[:-1])]


def shard_epoch_order(
    n: int, *, batch_size: int, shards: int, seed: int, epoch: int
) -> npt.NDArray[np.int64]:
    """An epoch's order in positions of the partitions laid end to end.

    A permutation of ``0 .. n - 1``. Batch ``b`` is ``order[b * batch_size:][:batch_size]``;
    split into shards by :func:`~asynctrain.data.shard_bounds`, shard ``s``'s part holds
    positions of partition ``s`` only, and over the epoch every position of partition
    ``s`` once, in an order drawn from ``(seed, epoch, s)``.

    Example:
        >>> order = shard_epoch_order(8, batch_size=4, shards=2, seed=0, epoch=0)
        >>> (order // 4).tolist()  # the partition of each position: shard 0's, then 1's
        [0, 0, 1, 1, 0, 0, 1, 1]
    """
    sizes = _part_sizes(n, batch_size, shards)
    totals = sizes.sum(axis=0)
    offsets = np.concatenate([[0], np.cumsum(totals)[:-1]])
    # Which shard each position of the order belongs to: batch by batch, shard by shard.
    owner = np.repeat(np.tile(np.arange(shards), len(sizes)), sizes.ravel())
    order = np.empty(n, dtype=np.int64)
    for s in range(shards):
        entropy = np.random.SeedSequence([seed, epoch], spawn_key=(_EPOCH_STREAM, s))
        order[owner == s] = offsets[s] + np.random.default_rng(entropy).permutation(totals[s])
    return order


def _part_sizes(n: int, batch_size: int, shards: int) -> npt.NDArray[np.int64]:
    """Rows of shard ``s`` in batch ``b``, as a ``(batches, shards)`` array."""
    full, last = divmod(n, batch_size)
    rows = [_row(batch_size, shards)] * full + ([_row(last, shards)] if last else [])
    return np.array(rows, dtype=np.int64).reshape(-1, shards)


def _row(length: int, shards: int) -> list[int]:
    return [stop - start for start, stop in shard_bounds(length, shards)]
