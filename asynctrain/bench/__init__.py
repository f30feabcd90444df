"""The benchmark suite behind ``asynctrain bench``.

Each suite is an async ``run(quick) -> list[Figure]``; see :mod:`asynctrain.bench._figure`.
"""

from asynctrain.bench._figure import Figure, Spread, ratio_figure, time_async
from asynctrain.bench._straggler import StragglerBackend

__all__ = ["Figure", "Spread", "StragglerBackend", "ratio_figure", "time_async"]
