"""The benchmark suites, listed by name, and how one is run so that it fails only itself.

``SUITES`` is the whole list, in the order ``asynctrain bench`` runs and prints them. A
suite is a module with its own coroutine function ``run(quick: bool) -> list[Figure]``,
imported only when it runs: a suite whose optional dependency is missing (or whose
module this checkout lacks) is reported as skipped, and one that breaks as failed.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from asynctrain import ConfigError
from benchmarks._figure import Figure

SuiteFn = Callable[..., Awaitable[list[Figure]]]


@dataclass(frozen=True)
class Suite:
    """Where a suite's ``run`` lives and the optional modules it cannot run without.

    Args:
        module: the suite's module, e.g. ``"benchmarks._overhead"``.
        needs: top-level modules that must be importable, e.g. ``("distributed",)``.
        install: how to get them, shown when one is missing.
    """

    module: str
    needs: tuple[str, ...] = ()
    install: str = ""


SUITES: dict[str, Suite] = {
    "overhead": Suite("benchmarks._overhead"),
    "scaling": Suite("benchmarks._scaling"),
    "accuracy": Suite("benchmarks._accuracy"),
    "roofline": Suite("benchmarks._roofline"),
    "latency": Suite("benchmarks._latency"),
    "handoff": Suite("benchmarks._handoff"),
    "modes": Suite("benchmarks._modes"),
    "stream": Suite("benchmarks._stream"),
    "parquet": Suite("benchmarks._parquet", ("pyarrow",), "pip install 'asynctrain[parquet]'"),
    "checkpoint": Suite("benchmarks._checkpoint"),
    "service": Suite("benchmarks._service"),
    "sklearn": Suite("benchmarks._sklearn"),
    "sparse": Suite("benchmarks._sparse"),
    "torch": Suite("benchmarks._torch"),
    "dask": Suite("benchmarks._dask", ("distributed",), "pip install 'asynctrain[dask]'"),
}
"""Every suite, in the order they run; suites that need an extra skip themselves without it."""


@dataclass
class SuiteOutcome:
    """What running one suite gave: its figures, the error that stopped it, or why it
    was skipped."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    skipped: str = ""

    @property
    def ok(self) -> bool:
        """True when the suite finished (or was skipped) without raising."""
        return not self.error

    def as_dict(self) -> dict[str, Any]:
        """Status, error (or why skipped) and duration, JSON-ready (figures are listed
        separately)."""
        status = "failed" if self.error else "skipped" if self.skipped else "ok"
        error = self.error or self.skipped
        return {"status": status, "error": error, "seconds": round(self.seconds, 3)}


def select(only: Sequence[str] | None, suites: Sequence[str], *, option: str = "only") -> list[str]:
    """The suite names to run: all of ``suites`` (``only`` None), or those in ``only``
    (in that order).

    Raises:
        ConfigError: a name in ``only`` is not a suite, or ``only`` names none (``--only
            ","``: an empty selection is a mistake, not "all"); the message, naming
            ``option``, lists the suites.

    Example:
        >>> select(["scaling", "overhead", "scaling"], list(SUITES))
        ['scaling', 'overhead']
    """
    if only is None:
        return list(suites)
    if not only:
        raise ConfigError(f"{option} names no suite; choose from {', '.join(suites)}")
    unknown = [name for name in only if name not in suites]
    if unknown:
        raise ConfigError(
            f"unknown benchmark suite(s) {', '.join(unknown)}; choose from {', '.join(suites)}"
        )
    return list(dict.fromkeys(only))


def load(name: str, suite: Suite) -> SuiteFn | SuiteOutcome:
    """Import ``suite`` and return its ``run``, or the outcome that says why it cannot run.

    Example:
        >>> load("dask", Suite("benchmarks._dask", ("no_such_module",), "pip it")).skipped
        'needs no_such_module: pip it'
    """
    missing = [m for m in suite.needs if importlib.util.find_spec(m) is None]
    if missing:
        return SuiteOutcome(name, skipped=_needs(missing[0], suite.install))
    if importlib.util.find_spec(suite.module) is None:
        return SuiteOutcome(name, skipped=f"{suite.module} is not in this checkout")
    try:
        module = importlib.import_module(suite.module)
    except ModuleNotFoundError as exc:
        if exc.name and not exc.name.startswith(("benchmarks", "asynctrain")):
            return SuiteOutcome(name, skipped=_needs(exc.name, suite.install))
        return SuiteOutcome(name, error=f"import failed: {type(exc).__name__}: {exc}")
    except Exception as exc:  # a broken suite is reported, not fatal
        return SuiteOutcome(name, error=f"import failed: {type(exc).__name__}: {exc}")
    run = getattr(module, "run", None)
    if not (inspect.iscoroutinefunction(run) and run.__module__ == module.__name__):
        return SuiteOutcome(name, error=f"{suite.module} has no coroutine function run(quick)")
    fn: SuiteFn = run
    return fn


def _needs(module: str, install: str) -> str:
    return f"needs {module}" + (f": {install}" if install else "")


async def run_suite(name: str, suite: Suite, quick: bool, **options: Any) -> SuiteOutcome:
    """Import and run one suite (``run(quick, **options)``: options only for a suite run
    alone, see ``_command.run_alone``); an exception becomes a failed outcome carrying
    its traceback, a missing optional module a skipped one."""
    run = load(name, suite)
    if isinstance(run, SuiteOutcome):
        return run
    started = time.perf_counter()
    try:
        figures = list(await run(quick, **options))
    except Exception as exc:
        detail = "".join(traceback.format_exception(exc)[-3:]).strip()
        return SuiteOutcome(name, error=detail, seconds=time.perf_counter() - started)
    return SuiteOutcome(name, figures, seconds=time.perf_counter() - started)
