"""Find the benchmark suites and run them, so that one failing suite fails only itself.

A suite is any module ``benchmarks/_<name>.py`` that defines its own coroutine
function ``run(quick: bool) -> list[Figure]``; helper modules (no ``run``) are skipped.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from asynctrain._exceptions import ConfigError
from benchmarks._figure import Figure

SuiteFn = Callable[[bool], Awaitable[list[Figure]]]


@dataclass
class SuiteOutcome:
    """What running one suite gave: its figures, or the error that stopped it."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the suite finished without raising."""
        return not self.error

    def as_dict(self) -> dict[str, Any]:
        """Status, error and duration, JSON-ready (figures are listed separately)."""
        status = "ok" if self.ok else "failed"
        return {"status": status, "error": self.error, "seconds": round(self.seconds, 3)}


def discover(package: str = "benchmarks") -> dict[str, SuiteFn | str]:
    """Map each suite's name to its ``run``, or to the error that prevented importing it.

    Example:
        >>> "overhead" in discover()
        True
    """
    found: dict[str, SuiteFn | str] = {}
    path = importlib.import_module(package).__path__
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        if not info.name.startswith("_") or info.name.startswith("__"):
            continue
        try:
            module = importlib.import_module(f"{package}.{info.name}")
        except Exception as exc:  # a broken suite is reported, not fatal
            found[info.name[1:]] = f"import failed: {type(exc).__name__}: {exc}"
            continue
        run = getattr(module, "run", None)
        if inspect.iscoroutinefunction(run) and run.__module__ == module.__name__:
            found[info.name[1:]] = run
    return found


def select(found: dict[str, SuiteFn | str], only: Sequence[str] | None) -> list[str]:
    """The suite names to run: all of them, or those in ``only`` (in that order).

    Raises:
        ConfigError: a name in ``only`` is not a suite (the message lists them).
    """
    if not only:
        return sorted(found)
    unknown = [name for name in only if name not in found]
    if unknown:
        raise ConfigError(
            f"unknown benchmark suite(s) {', '.join(unknown)}; "
            f"choose from {', '.join(sorted(found))}"
        )
    return list(dict.fromkeys(only))


async def run_suite(name: str, suite: SuiteFn | str, quick: bool) -> SuiteOutcome:
    """Run one suite; an exception becomes a failed outcome carrying its traceback."""
    if isinstance(suite, str):
        return SuiteOutcome(name, error=suite)
    started = time.perf_counter()
    try:
        figures = list(await suite(quick))
    except Exception as exc:
        detail = "".join(traceback.format_exception(exc)[-3:]).strip()
        return SuiteOutcome(name, error=detail, seconds=time.perf_counter() - started)
    return SuiteOutcome(name, figures, seconds=time.perf_counter() - started)
