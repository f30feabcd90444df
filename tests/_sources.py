"""Stream sources shared by the stream tests: a dataset's rows in the trainer's epoch
order, cut into pieces, given as they are (a sync source) or by an async generator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import numpy as np

from asynctrain.data import Dataset, epoch_order


def pieces(data: Dataset, size: int, epochs: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The dataset's rows in the trainer's epoch order (seed 3), in batches of ``size``."""
    for epoch in range(epochs):
        order = epoch_order(len(data), seed=3, epoch=epoch)
        for start in range(0, len(data), size):
            rows = order[start : start + size]
            yield data.X[rows], data.y[rows]


async def agen(items: Iterator[tuple[np.ndarray, np.ndarray]]) -> AsyncIterator[object]:
    """``items`` from an async generator."""
    for item in items:
        yield item
