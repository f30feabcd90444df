"""The service latency benchmark's parts, run briefly (the figures come from `bench`)."""

from __future__ import annotations

import pytest

import asynctrain as at
from benchmarks import _service as bench

pytest.importorskip("aiohttp")


@pytest.fixture(scope="module")
def data() -> at.data.Dataset:
    return at.data.synthetic("mlp", n=5000)


async def test_idle_scenario_measures_lag_and_paced_http_latency(data: at.data.Dataset) -> None:
    measured = await bench._measure(data, None, 0.3)
    assert len(measured["http"]) == 0.3 * bench.RATE
    assert all(latency > 0 for latency in measured["http"])
    assert measured["lag"].samples > 0
    assert measured["samples_per_s"] == 0


async def test_training_scenario_trains_while_it_measures(data: at.data.Dataset) -> None:
    measured = await bench._measure(data, "thread", 0.5)
    assert measured["samples_per_s"] > 0
    assert await bench._bare_rate(data, "thread", 0.3) > 0


def test_figures_summarise_repeats() -> None:
    runs = [
        {"lag": at.LagStats(0.1, 1.0, 3.0, 10, 10), "http": [1.0, 2.0, 3.0], "samples_per_s": 5},
        {"lag": at.LagStats(0.3, 2.0, 5.0, 10, 10), "http": [2.0, 4.0, 6.0], "samples_per_s": 7},
    ]
    figures = {f.name: f for f in bench._latency_figures("process", runs, "cmd")}
    p99 = figures["service/loop_lag_p99/process"]
    assert (p99.value, p99.low, p99.high, p99.target) == (1.5, 1.0, 2.0, "< 2")
    assert figures["service/http_p50/process"].value == 3.0
    ratio = bench._throughput_figure("thread", [9.0, 8.0], [10.0, 10.0])
    assert (ratio.value, ratio.low, ratio.high, ratio.unit) == pytest.approx((0.85, 0.8, 0.9, "x"))


def test_an_unavailable_backend_is_reported_not_hidden() -> None:
    assert bench._unavailable("thread") == ""
    figure = bench._not_available("process", "ImportError: gone", "cmd")
    assert figure.details == {"available": False}
    assert "not available" in figure.reference
