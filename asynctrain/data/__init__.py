"""Datasets: validation, loading, seeded synthetic problems, epoch order and sharding.

Synchronous numpy code; never imports asyncio.

Example:
    >>> from asynctrain.data import synthetic
    >>> train, val = synthetic("softmax", n=1000).split(0.2)
    >>> len(train), len(val)
    (800, 200)
"""

from __future__ import annotations

from asynctrain.data._dataset import Dataset
from asynctrain.data._load import load
from asynctrain.data._order import batch_bounds, epoch_order, shard_bounds, steps_per_epoch
from asynctrain.data._parquet import ParquetStream, read_parquet
from asynctrain.data._synthetic import PROBLEMS, ProblemInfo, synthetic

__all__ = [
    "PROBLEMS",
    "Dataset",
    "ParquetStream",
    "ProblemInfo",
    "batch_bounds",
    "epoch_order",
    "load",
    "read_parquet",
    "shard_bounds",
    "steps_per_epoch",
    "synthetic",
]
