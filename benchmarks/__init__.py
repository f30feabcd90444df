"""The benchmark suites behind ``asynctrain bench`` and ``python -m benchmarks``.

Each suite is a module ``_<name>.py`` with an async ``run(quick) -> list[Figure]``, on
asynctrain's public API only; see :mod:`benchmarks._figure` for the contract and
:mod:`benchmarks._suites` for the list of suites and how one is run.
"""

from benchmarks._command import main
from benchmarks._figure import Figure, Spread, ratio_figure, skipped_figure, time_async

__all__ = [
    "Figure",
    "Spread",
    "main",
    "ratio_figure",
    "skipped_figure",
    "time_async",
]
