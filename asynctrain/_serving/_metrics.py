"""Service metrics: what a TrainingService counts, and its export to Prometheus.

The service counts steps, samples and step times as its jobs publish their step events
(a few integer additions on the loop, no locks: everything runs on the service's loop;
a snapshot asked for from another thread is taken on the loop too).
:meth:`TrainingService.metrics <asynctrain.TrainingService.metrics>` takes a snapshot;
:class:`PrometheusCollector` turns snapshots into Prometheus metric families when a
registry is scraped. prometheus-client is an optional extra (``asynctrain[metrics]``),
imported only when a collector is created.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from asynctrain._shm import SHM_DIR, our_segments


class TrainingService(Protocol):
    """What the collector reads of a service (a protocol: this module is below it)."""

    def metrics(self) -> ServiceMetrics: ...


STEP_SECONDS_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of the step-time histogram's buckets; a last one is +Inf."""


@dataclass
class StepCounters:
    """Running totals over every job the service ran, forgotten ones included."""

    steps: int = 0
    samples: int = 0
    step_seconds_sum: float = 0.0
    step_seconds_buckets: list[int] = field(
        default_factory=lambda: [0] * (len(STEP_SECONDS_BUCKETS) + 1)
    )

    def add_step(self, samples: int, seconds: float | None) -> None:
        """Count one applied (or skipped) step of ``samples`` that took ``seconds`` since
        the job's step before it (None for a job's first step: no time is observed)."""
        self.steps += 1
        self.samples += samples
        if seconds is None:
            return
        self.step_seconds_sum += seconds
        self.step_seconds_buckets[bisect.bisect_left(STEP_SECONDS_BUCKETS, seconds)] += 1


@dataclass(frozen=True, slots=True)
class ServiceMetrics:
    """A snapshot of a :class:`~asynctrain.TrainingService`'s counters and gauges.

    Attributes:
        jobs: remembered jobs by status (every status present, zeros included).
        steps: steps all jobs have run since the service opened (a counter).
        samples: samples those steps trained on (a counter).
        step_seconds: ``(upper bound, steps that took at most that long)`` per bucket,
            cumulative, the last bound ``inf``: time between a job's consecutive steps.
            A job's first step is not timed (it would count the job's start-up: opening
            the backend, sharing the data), so the last count is ``steps`` less one per
            job that stepped.
        step_seconds_sum: total of those step times.
        loop_lag_p50_ms, loop_lag_p99_ms: the service loop's lag over the recent window.
        queued: jobs waiting for a running slot.
        running: jobs training now.
        shared_memory_bytes: bytes of this process's asynctrain files in /dev/shm
            (datasets, parameters and gradient buffers of the process backend).

    Example:
        >>> snapshot = service.metrics()  # doctest: +SKIP
        >>> snapshot.jobs["running"], snapshot.steps  # doctest: +SKIP
        (1, 480)
    """

    jobs: Mapping[str, int]
    steps: int
    samples: int
    step_seconds: tuple[tuple[float, int], ...]
    step_seconds_sum: float
    loop_lag_p50_ms: float
    loop_lag_p99_ms: float
    queued: int
    running: int
    shared_memory_bytes: int


def cumulative_buckets(counts: list[int]) -> tuple[tuple[float, int], ...]:
    """Per-bucket counts as Prometheus' cumulative ``(le, count)`` pairs."""
    bounds = (*STEP_SECONDS_BUCKETS, float("inf"))
    total, pairs = 0, []
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        pairs.append((bound, total))
    return tuple(pairs)


def shared_memory_bytes() -> int:
    """Bytes allocated to this process's asynctrain files in /dev/shm."""
    prefix = f"asynctrain_{os.getpid()}_"
    total = 0
    for name in our_segments():
        if name.startswith(prefix):
            try:
                total += os.stat(os.path.join(SHM_DIR, name)).st_blocks * 512
            except FileNotFoundError:  # freed meanwhile
                continue
    return total


class PrometheusCollector:
    """Expose a TrainingService's metrics to a Prometheus registry, named ``asynctrain_*``.

    Register it once; every scrape takes a fresh :meth:`TrainingService.metrics
    <asynctrain.TrainingService.metrics>` snapshot. Scrape from any thread: in an async
    handler on the service's loop the snapshot is read there and then; from another
    thread (``prometheus_client.start_http_server``'s) it is taken on the service's
    loop, whose state it reads without locks, and the scrape waits for it (a
    ``TimeoutError`` after 10 s of a blocked loop).

    - ``asynctrain_jobs{state}`` (gauge): remembered jobs by status.
    - ``asynctrain_steps_total``, ``asynctrain_samples_total`` (counters): steps run by
      all jobs and the samples they trained on.
    - ``asynctrain_step_seconds`` (histogram): time between a job's consecutive steps
      (a job's first step, whose time would be its start-up, is not observed).
    - ``asynctrain_loop_lag_seconds{quantile="0.5"|"0.99"}`` (gauge): the loop's lag.
    - ``asynctrain_queued_jobs``, ``asynctrain_running_jobs`` (gauges).
    - ``asynctrain_shared_memory_bytes`` (gauge): /dev/shm in use by this process.

    Args:
        service: the service to report on.

    Raises:
        ImportError: prometheus-client is not installed (``pip install
            'asynctrain[metrics]'``).

    Example:
        >>> from prometheus_client import CollectorRegistry, generate_latest  # doctest: +SKIP
        >>> registry = CollectorRegistry()  # doctest: +SKIP
        >>> registry.register(PrometheusCollector(service))  # doctest: +SKIP
        >>> generate_latest(registry)  # in a GET /metrics handler  # doctest: +SKIP
    """

    def __init__(self, service: TrainingService) -> None:
        self._core = _prometheus_core()
        self.service = service

    def describe(self) -> list[Any]:
        """No families up front: the registry then calls :meth:`collect` to learn names."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families of one snapshot (called by the registry on each scrape)."""
        core, snapshot = self._core, self.service.metrics()
        jobs = core.GaugeMetricFamily(
            "asynctrain_jobs", "Jobs the service remembers, by state.", labels=["state"]
        )
        for state, count in snapshot.jobs.items():
            jobs.add_metric([state], count)
        yield jobs
        yield core.CounterMetricFamily(
            "asynctrain_steps", "Training steps run by all jobs.", value=snapshot.steps
        )
        yield core.CounterMetricFamily(
            "asynctrain_samples", "Samples trained on by all jobs.", value=snapshot.samples
        )
        yield core.HistogramMetricFamily(
            "asynctrain_step_seconds",
            "Time between a job's consecutive steps.",
            buckets=[(_le(bound), count) for bound, count in snapshot.step_seconds],
            sum_value=snapshot.step_seconds_sum,
        )
        lag = core.GaugeMetricFamily(
            "asynctrain_loop_lag_seconds",
            "Lag of the service's event loop over the recent window.",
            labels=["quantile"],
        )
        lag.add_metric(["0.5"], snapshot.loop_lag_p50_ms / 1000)
        lag.add_metric(["0.99"], snapshot.loop_lag_p99_ms / 1000)
        yield lag
        yield from self._gauges(snapshot)

    def _gauges(self, snapshot: ServiceMetrics) -> Iterator[Any]:
        gauge = self._core.GaugeMetricFamily
        yield gauge("asynctrain_queued_jobs", "Jobs waiting for a slot.", value=snapshot.queued)
        yield gauge("asynctrain_running_jobs", "Jobs training.", value=snapshot.running)
        yield gauge(
            "asynctrain_shared_memory_bytes",
            "Bytes of this process's asynctrain files in /dev/shm.",
            value=snapshot.shared_memory_bytes,
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _prometheus_core() -> Any:
    try:
        from prometheus_client import core
    except ImportError as exc:
        raise ImportError(
            "PrometheusCollector needs prometheus-client: pip install 'asynctrain[metrics]'"
        ) from exc
    return core
