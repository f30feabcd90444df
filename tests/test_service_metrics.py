"""TrainingService metrics and their Prometheus export, against counts taken independently."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest

import asynctrain as at
from asynctrain._serving import _service
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
    # every step but each job's first ("a" ran its 80; "b" may not have stepped yet):
    timed = 79 + max(snapshot.steps - 80 - 1, 0)
    assert scraped[("asynctrain_step_seconds_count", ())] == timed
    assert scraped[("asynctrain_step_seconds_bucket", (("le", "+Inf"),))] == timed
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
        assert buckets[float("inf")] == count.steps - 1


class _SlowStart(at.Callback):
    """Holds the fit 0.5 s before its first step; notes when each step was published."""

    def __init__(self) -> None:
        self.times: list[float] = []

    async def on_fit_start(self, fit: at.FitControl) -> None:
        await asyncio.sleep(0.5)

    def on_step(self, event: at.StepEvent) -> None:
        self.times.append(time.perf_counter())


async def test_a_jobs_start_up_is_not_timed_as_a_step() -> None:
    data = at.data.synthetic("softmax", n=2000, seed=2)
    slow = _SlowStart()
    async with at.TrainingService(backend="inline") as service:
        job = await service.start("a", SoftmaxRegression(128, 10), data, callbacks=[slow],
                                  **OPTIONS)  # fmt: skip
        await job.wait()
        snapshot = service.metrics()
    assert snapshot.steps == len(slow.times) == 20
    assert dict(snapshot.step_seconds)[float("inf")] == 19  # 19 intervals between 20 steps
    # The intervals between the steps, as the callback saw them (it is called just before
    # the service's own); the 0.5 s start-up before the first is not among them.
    between = slow.times[-1] - slow.times[0]
    assert snapshot.step_seconds_sum == pytest.approx(between, abs=0.05)
    assert snapshot.step_seconds_sum < 0.5 + between - 0.1


async def test_a_scrape_from_another_thread_during_a_fit_is_taken_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """prometheus_client.start_http_server scrapes from a thread of its own; the snapshot
    read the loop's dict of jobs, its queue and its counters there, unlocked, while the
    loop changed them (a dict or deque "changed size during iteration", a histogram
    whose count was not the steps')."""
    loop_thread, read_on = threading.get_ident(), set[int]()
    measure = _service.shared_memory_bytes

    def recorded() -> int:
        read_on.add(threading.get_ident())
        return measure()

    monkeypatch.setattr(_service, "shared_memory_bytes", recorded)
    data = at.data.synthetic("softmax", n=2000, seed=2)
    done, scrapes, errors = threading.Event(), list[dict[Any, float]](), list[BaseException]()

    def scrape() -> None:
        while not done.is_set():
            try:
                scrapes.append(_scrape(service))
            except BaseException as exc:
                errors.append(exc)
                return

    async with at.TrainingService(
        backend="thread", workers=2, max_running=2, keep_finished=2
    ) as service:
        scraper = threading.Thread(target=scrape)
        scraper.start()
        try:
            for round_ in range(4):  # jobs start, queue, finish and are forgotten meanwhile
                jobs = [
                    await service.start(
                        f"{round_}-{i}", SoftmaxRegression(128, 10), data, epochs=2, **OPTIONS
                    )
                    for i in range(3)
                ]
                await asyncio.gather(*(job.wait() for job in jobs))
        finally:
            done.set()
            await asyncio.to_thread(scraper.join)
        final = _scrape(service)  # the scraper's last may have been asked for mid-step
    assert errors == []
    assert len(scrapes) >= 2
    assert read_on == {loop_thread}  # every snapshot read on the loop, none on the scraper's
    for scraped in scrapes:  # each one whole: its histogram counts the same steps, but
        steps = scraped[("asynctrain_steps_total", ())]  # each job's first (12 at most)
        assert 0 <= steps - scraped[("asynctrain_step_seconds_count", ())] <= 12
        assert scraped[("asynctrain_samples_total", ())] == 100 * steps
    assert final[("asynctrain_steps_total", ())] == 4 * 3 * 40  # 2000 rows, 100 a step
    assert all(s[("asynctrain_steps_total", ())] <= 4 * 3 * 40 for s in scrapes)


def test_without_prometheus_client_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"asynctrain\[metrics\]"):
        at.PrometheusCollector(at.TrainingService())
