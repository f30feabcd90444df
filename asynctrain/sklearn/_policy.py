"""Where an estimator trains: backend, workers and shards, chosen from the problem size.

scikit-learn problems are mostly small: a step of a few hundred rows of a few dozen
features is tens of microseconds of numpy, less than handing one task to a thread pool
costs (see docs/architecture.md). So ``backend="auto"`` keeps small steps on the event
loop (``"inline"``) and uses the thread pool only when a shard's share of a step is large
enough to pay for its hand-off. Inside a joblib worker (``GridSearchCV(n_jobs=2)``,
``cross_validate(n_jobs=-1)``, ...) the cores already belong to joblib's workers, so an
estimator starts no threads of its own there: ``"auto"`` trains inline, and a thread or
process backend without explicit ``workers`` gets one worker.

Inline training runs BLAS on one thread (one BLAS thread per worker, as the thread backend
does): small matrix products gain nothing from more, and a multi-threaded BLAS next to
other busy threads or processes (joblib's, or anyone's on a shared machine) slowed
mid-sized MLP steps 3x in ``python -m benchmarks._sklearn`` (docs/sklearn.md).

The shard count depends only on the problem, never on the machine or on joblib, so the
same ``random_state`` gives the same model with ``n_jobs=1`` and ``n_jobs=2``, in ``fit``
and ``afit``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from asynctrain._checks import check_int
from asynctrain._config import default_shards
from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain.backends._blas import BlasLimit

# Rows per step × model parameters below which a step is "small" and trains inline (about
# 3 flops per row and parameter: 2**23 is ~25 Mflop a step). `python -m
# benchmarks._sklearn` measures the boundary: on 2 busy shared cores the thread
# backend was ~1.9x slower than inline up to 5e6 and ~1.15x at 1.3e7 (docs/sklearn.md).
SMALL_STEP = 2**23


class Plan(NamedTuple):
    """The Trainer settings chosen for one fit."""

    backend: str
    workers: int | None
    shards: int


def in_joblib_worker() -> bool:
    """True inside a task that joblib runs in parallel (a worker process or thread).

    joblib runs each task under a nested backend configuration whose ``nesting_level``
    is 1 or more; at the top level (and with ``n_jobs=1``) it is 0.
    """
    try:
        from joblib.parallel import get_active_backend
    except ImportError:  # pragma: no cover - joblib is a scikit-learn dependency
        return False
    backend, _ = get_active_backend()
    return bool(getattr(backend, "nesting_level", 0))


def plan(
    backend: str,
    workers: int | None,
    shards: int | str,
    *,
    batch_size: int,
    n_params: int,
    on_loop: bool,
) -> Plan:
    """Resolve ``backend="auto"``, ``workers=None`` and ``shards="auto"``.

    Args:
        backend: ``"auto"`` or a backend name (see the module docstring).
        workers: workers for a thread or process backend; None picks by the policy.
        shards: ``"auto"`` (1 for a small step, else 4) or an int, capped at the batch.
        batch_size: rows per step (already capped at the number of samples).
        n_params: number of model parameters.
        on_loop: training runs on the caller's event loop (``afit``), which must stay
            responsive, so the work goes to threads even when it is small (with one shard,
            one thread works at a time; each keeps one BLAS thread).

    Raises:
        ConfigError, ConfigTypeError: a bad ``backend``, ``workers`` or ``shards``.
    """
    small = batch_size * n_params < SMALL_STEP
    n_shards = _shards(shards, batch_size, small)
    if not isinstance(backend, str):
        raise ConfigTypeError(
            f"backend must be a backend name such as 'auto', 'inline' or 'thread', got "
            f"{backend!r}; an estimator holds names only so it can be cloned and pickled"
        )
    nested = in_joblib_worker()
    if workers is not None:
        workers = check_int("workers", workers)
    elif nested:
        workers = 1  # the cores belong to joblib's workers
    if backend == "auto":
        if on_loop:  # the caller's loop must stay free: the work goes to threads
            return Plan("thread", workers, n_shards)
        backend = "inline" if small or nested else "thread"
    return Plan(backend, None if backend == "inline" else workers, n_shards)


def _shards(shards: Any, batch_size: int, small: bool) -> int:
    if shards == "auto":
        return 1 if small else default_shards(batch_size)
    if isinstance(shards, str):
        raise ConfigError(f"shards must be 'auto' or a positive int, got {shards!r}")
    return min(check_int("shards", shards), batch_size)


# Concurrent fits (joblib's threading backend) each hold it; the last to leave restores.
ONE_BLAS_THREAD = BlasLimit(1)
