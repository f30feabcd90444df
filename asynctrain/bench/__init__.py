"""The benchmark suite behind ``asynctrain bench``.

Each suite is a module ``_<name>.py`` with an async ``run(quick) -> list[Figure]``; see
:mod:`asynctrain.bench._figure` for the contract and :mod:`asynctrain.bench._suites` for
how suites are found and run.
"""

from asynctrain.bench._figure import Figure, Spread, ratio_figure, skipped_figure, time_async
from asynctrain.bench._straggler import StragglerBackend

__all__ = [
    "Figure",
    "Spread",
    "StragglerBackend",
    "ratio_figure",
    "skipped_figure",
    "time_async",
]
