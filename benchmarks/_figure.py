"""The benchmark contract: what one measured figure is, and how repeats are summarised.

Every suite (overhead, scaling, modes, service, streaming, dask, ...) is a coroutine
``run(quick: bool) -> list[Figure]`` in a module ``benchmarks/_<name>.py``, found
and run by ``asynctrain bench``. A figure
is a ratio (or a quantity) measured against a reference in the same run, with the median
over repeats and the min-max, and the command that reproduces it.
"""

from __future__ import annotations

import math
import operator
import re
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
        note: why a figure was not measured (``value`` is NaN then), or a caveat.
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
    note: str = ""

    @property
    def skipped(self) -> bool:
        """True when the figure could not be measured (see ``note``)."""
        return math.isnan(self.value)

    def met(self) -> bool | None:
        """Whether ``value`` meets ``target`` (``"<= 1.10"``, ``">= 1.7"``, ...).

        None when there is no target or nothing was measured.

        Example:
            >>> Figure("x", 1.05, 1.0, 1.1, "x", "ref", 3, "cmd", target="<= 1.10").met()
            True
        """
        match = _TARGET.fullmatch(self.target.strip())
        if match is None or self.skipped:
            return None
        op, bound = match.group(1), float(match.group(2))
        return bool(_COMPARE[op](self.value, bound))

    def as_dict(self) -> dict[str, Any]:
        """The figure as a JSON-ready dict (NaN becomes None) with ``met``."""
        fields = asdict(self)
        for key in ("value", "low", "high"):
            if math.isnan(fields[key]):
                fields[key] = None
        fields["met"] = self.met()
        return fields


_TARGET = re.compile(r"(<=|>=|<|>)\s*([-+0-9.eE]+)")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


def at_most(bound: float) -> str:
    """The target of a figure that must not exceed ``bound``, which is computed, not a
    round number: written to three decimals and rounded up, so a value within the bound
    never reads as missed (``"<= 5.2"`` for a bound of 5.237 did).

    Example:
        >>> at_most(5.23681)
        '<= 5.237'
        >>> Figure("m", 5.2017, 5.2, 5.21, "MB", "ref", 3, "cmd", target=at_most(5.23681)).met()
        True
    """
    return f"<= {math.ceil(bound * 1000) / 1000:.3f}"


def skipped_figure(name: str, note: str, **fields: Any) -> Figure:
    """A figure that could not be measured here, e.g. a peer that is not installed.

    Example:
        >>> skipped_figure("accuracy/mlp/torch", "torch is not installed", unit="s",
        ...                reference="-", command="asynctrain bench").skipped
        True
    """
    nan = math.nan
    return Figure(name, nan, nan, nan, repeats=0, note=note, **fields)


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
    ``fields`` are the Figure's other fields (``reference`` names what was compared with).
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
