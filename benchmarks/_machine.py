"""What machine a benchmark ran on: CPU, cores, memory, Python, numpy and its BLAS."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

from asynctrain.backends import default_workers

# Set on some CPUs for old OpenBLAS builds; they change which kernels a current one runs.
_BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what platform says."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Total memory in GiB, when the OS says."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def blas() -> list[dict[str, Any]]:
    """threadpoolctl's view of the BLAS libraries numpy loaded (kernel, threads, version)."""
    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [
        {key: info.get(key) for key in keys}
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]


def machine() -> dict[str, Any]:
    """Everything a reader needs to compare a benchmark table with their own.

    Example:
        >>> sorted(machine())[:3]
        ['blas', 'blas_env', 'cores']
    """
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": default_workers(),
        "memory_gib": memory_gib(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "blas": blas(),
        "blas_env": {name: os.environ[name] for name in _BLAS_ENV if name in os.environ},
        "load_average": load_average(),
    }


QUIET_WINDOW_S = 0.01
"""How long :func:`quiesce` watches this process's CPU time at a time."""
QUIET_LIMIT_S = 0.5
"""The longest :func:`quiesce` waits."""


async def quiesce() -> float:
    """Wait until this process's threads are idle (under a tenth of a core over
    :data:`QUIET_WINDOW_S`, at most :data:`QUIET_LIMIT_S`); return the seconds waited.

    OpenBLAS keeps the extra threads of a multi-threaded call spinning for work after it
    returns: after a 2-thread product here, one core stayed fully busy for about 110 ms.
    Something short timed at once shares a core with them; a thread backend's worker,
    which needs the second core, most. asynctrain's softmax race, which follows
    scikit-learn's lbfgs, took 30.5 and 30.6 ms (medians of 3, two runs of the accuracy
    suite) without this wait and 28.8 and 28.9 ms with it, runs alternated. Called with
    the loop otherwise idle.

    Example:
        >>> import asyncio
        >>> asyncio.run(quiesce()) < QUIET_LIMIT_S + 0.1
        True
    """
    began = time.perf_counter()
    while time.perf_counter() - began < QUIET_LIMIT_S:
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.sleep(QUIET_WINDOW_S)
        if time.process_time() - cpu < 0.1 * (time.perf_counter() - wall):
            break
    return time.perf_counter() - began


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: how busy the machine was (Unix only)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def describe(info: dict[str, Any]) -> str:
    """One line for the top of a printed table."""
    kernels = ", ".join(
        f"{b['internal_api']} {b['version']} {b['architecture']} x{b['num_threads']}"
        for b in info["blas"]
    )
    env = " ".join(f"{k}={v}" for k, v in info["blas_env"].items())
    load = info.get("load_average")
    return (
        f"{info['cpu']}, {info['usable_cores']} cores, {info['memory_gib']} GiB; "
        f"Python {info['python']}, numpy {info['numpy']} ({kernels or 'no BLAS found'})"
        + (f"; {env}" if env else "")
        + (f"; load average {load[0]}" if load else "")
    )
