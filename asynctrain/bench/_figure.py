"""The benchmark contract: what one measured figure is, and how repeats are summarised.

Every suite (overhead, scaling, modes, service, streaming, dask, ...) is a coroutine
``run(quick: bool) -> list[Figure]`` registered in :data:`asynctrain.bench.SUITES`. A figure
is a ratio (or a quantity) measured against a reference in the same run, with the median
over repeats and the min-max, and the command that reproduces it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One measured figure.

    Attributes:
        name: a slash-separated id, e.g. ``"scaling/mlp/process"``.
        value: the median (a ratio when ``unit == "x"``).
        low: the smallest of the repeats.
        high: the largest of the repeats.
        unit: ``"x"`` for ratios, or a unit such as ``"ms"``, ``"MB"``, ``"samples/s"``.
        reference: what the value is compared with (for ratios) or measured on.
        repeats: how many repeats the median is over.
        target: the goal, e.g. ``"<= 1.10"``, or ``""`` when there is none.
        command: the command that reproduces the figure.
        details: raw numbers behind the figure (times of both sides, sizes, ...).
    """

    name: str
    value: float
    low: float
    high: float
    unit: str
    reference: str
    repeats: int
    command: str
    target: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The figure as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Spread:
    """Median, min and max of a sample of measurements."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """Summarise ``values`` (at least one)."""
        return cls(statistics.median(values), min(values), max(values), len(values))


def ratio_figure(
    name: str, measured: Sequence[float], reference: Sequence[float], /, **fields: Any
) -> Figure:
    """A ratio figure from paired repeats: each repeat's ``measured / reference``.

    Pairing repeats measured side by side cancels most of a shared machine's drift.
    """
    ratios = [m / r for m, r in zip(measured, reference, strict=True)]
    spread = Spread.of(ratios)
    details = {
        "measured_median": statistics.median(measured),
        "reference_median": statistics.median(reference),
        **fields.pop("details", {}),
    }
    return Figure(
        name,
        spread.median,
        spread.low,
        spread.high,
        "x",
        repeats=spread.n,
        details=details,
        **fields,
    )


async def time_async(fn: Callable[[], Awaitable[Any]]) -> float:
    """Wall seconds of one ``await fn()``."""
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started
