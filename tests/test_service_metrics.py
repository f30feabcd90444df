"""TrainingService metrics and their Prometheus export, against counts taken independently."""

from __future__ import annotations

import sys
from typing import Any

import pytest

import asynctrain as at
from asynctrain.models import SoftmaxRegression

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

OPTIONS: dict[str, Any] = {"batch_size": 100, "shards": 2, "seed": 1}


def _scrape(service: at.TrainingService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = prometheus_client.CollectorRegistry()
    registry.register(at.PrometheusCollector(service))
    text = prometheus_client.generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class _Count(at.Callback):
    def __init__(self) -> None:
        self.steps = self.samples = 0

    def on_step(self, event: at.StepEvent) -> None:
        self.steps += 1
        self.samples += event.samples


async def test_counters_match_the_jobs_events_and_export_as_prometheus_text() -> None:
    data = at.data.synthetic("softmax", n=4000, seed=2)  # 2 MB: in /dev/shm
    count = _Count()
    async with at.TrainingService(backend="thread", workers=2, max_running=1) as service:
        before = _scrape(service)
        assert before[("asynctrain_steps_total", ())] == 0
        done = await service.start("a", SoftmaxRegression(128, 10), data, epochs=2,
                                   callbacks=[count], **OPTIONS)  # fmt: skip
        await done.wait()
        queued = await service.start("b", SoftmaxRegression(128, 10), data, epochs=50, **OPTIONS)
        waiting = await service.start("c", SoftmaxRegression(128, 10), data, **OPTIONS)
        snapshot, scraped = service.metrics(), _scrape(service)
        queued.cancel()
        waiting.cancel()
    assert count.steps == 80  # 4000 rows, batches of 100, 2 epochs
    assert snapshot.steps >= count.steps
    assert snapshot.jobs == {"queued": 1, "running": 1, "done": 1, "failed": 0, "cancelled": 0}
    assert (snapshot.queued, snapshot.running) == (1, 1)
    assert snapshot.shared_memory_bytes >= data.X.nbytes
    assert scraped[("asynctrain_steps_total", ())] == snapshot.steps
    assert scraped[("asynctrain_samples_total", ())] == snapshot.samples
    assert scraped[("asynctrain_step_seconds_count", ())] == snapshot.steps
    assert scraped[("asynctrain_step_seconds_bucket", (("le", "+Inf"),))] == snapshot.steps
    assert scraped[("asynctrain_jobs", (("state", "done"),))] == 1
    assert scraped[("asynctrain_queued_jobs", ())] == 1
    assert scraped[("asynctrain_running_jobs", ())] == 1
    assert scraped[("asynctrain_shared_memory_bytes", ())] >= data.X.nbytes
    assert ("asynctrain_loop_lag_seconds", (("quantile", "0.99"),)) in scraped
    # the counters of job "a" alone, counted by its own callback:
    only_a = at.TrainingService(backend="inline")
    async with only_a:
        await (await only_a.start("a", SoftmaxRegression(128, 10), data, epochs=2,
                                  **OPTIONS)).wait()  # fmt: skip
        assert (only_a.metrics().steps, only_a.metrics().samples) == (count.steps, count.samples)
        buckets = dict(only_a.metrics().step_seconds)
        assert buckets[float("inf")] == count.steps


def test_without_prometheus_client_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"asynctrain\[metrics\]"):
        at.PrometheusCollector(at.TrainingService())
