"""The benchmark suite behind ``asynctrain bench``.

Each suite is a module ``_<name>.py`` with an async ``run(quick) -> list[Figure]``; see
:mod:`benchmarks._figure` for the contract and :mod:`benchmarks._suites` for
how suites are found and run.
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
