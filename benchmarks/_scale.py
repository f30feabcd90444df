"""How big a benchmark run is: ``full``, ``quick`` or ``smoke``, and what that means.

Suites receive ``quick: bool``. ``asynctrain bench --smoke`` (CI: checks that every figure
is produced, in seconds; the numbers mean nothing) runs them with ``quick=True`` inside
:func:`smoke`, and suites that size their work with :func:`level` shrink further.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Literal

from asynctrain.data import PROBLEMS, Dataset, synthetic

Level = Literal["full", "quick", "smoke"]

_SMOKE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "asynctrain_bench_smoke", default=False
)

# Training samples per problem: full is each problem's reference size.
_SAMPLES: dict[Level, dict[str, int]] = {
    "full": {name: info.default_n for name, info in PROBLEMS.items()},
    "quick": {"logreg": 200_000, "softmax": 50_000, "mlp": 50_000},
    "smoke": {"logreg": 4_000, "softmax": 2_000, "mlp": 2_000},
}
_REPEATS: dict[Level, int] = {"full": 5, "quick": 2, "smoke": 1}


@contextlib.contextmanager
def smoke() -> Iterator[None]:
    """Within this block, suites that use :func:`level` run at the tiny ``smoke`` size."""
    token = _SMOKE.set(True)
    try:
        yield
    finally:
        _SMOKE.reset(token)


def level(quick: bool) -> Level:
    """The size to run at: ``smoke`` inside :func:`smoke`, else ``quick`` or ``full``."""
    if _SMOKE.get():
        return "smoke"
    return "quick" if quick else "full"


def samples(problem: str, quick: bool) -> int:
    """Training samples of ``problem`` at this size."""
    return _SAMPLES[level(quick)][problem]


def repeats(quick: bool) -> int:
    """Repeats a median is taken over at this size."""
    return _REPEATS[level(quick)]


def command(suite: str, quick: bool) -> str:
    """The command that reproduces a suite's figures at this size."""
    size = {"full": "", "quick": " --quick", "smoke": " --smoke"}[level(quick)]
    return f"asynctrain bench --only {suite}{size}"


@functools.lru_cache(maxsize=8)
def dataset(problem: str, n: int, seed: int = 0) -> Dataset:
    """``synthetic(problem, n=n, seed=seed)``, generated once per process (read-only)."""
    return synthetic(problem, n=n, seed=seed)
