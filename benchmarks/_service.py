"""Service latency: how a TrainingService's event loop and HTTP answers fare while it trains.

For each scenario (idle; training the ``"mlp"`` reference problem on the thread backend;
on the process backend when it is available) an aiohttp server with ``GET /health``
runs on the service's loop on 127.0.0.1. A client in a separate process
(:mod:`~benchmarks._http_client`) sends ``GET /health`` at a steady rate over one
keep-alive connection for a fixed time, twice in a row: in the first window the HTTP
latencies and the training throughput are measured on the service as it comes (its own
loop-lag monitor beating every 10 ms); in the second a 1 ms
:class:`~asynctrain.LoopLagMonitor` measures the loop's lag. The two are kept apart
because 1 ms heartbeats take the GIL a thousand times a second from the workers of a
thread backend, which costs its training about 5 % (``TrainingService``'s
``lag_interval``). Training throughput is compared with the same training run by a bare
Trainer (no service, no HTTP, no monitor), repeat by repeat.

Run: python -m benchmarks._service [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from asynctrain import Callback, LagStats, LoopLagMonitor, StepEvent, Trainer, TrainingService
from asynctrain.backends import get_backend
from asynctrain.data import Dataset
from asynctrain.models import MLP
from benchmarks import _http_client
from benchmarks._command import run_alone
from benchmarks._figure import Figure, Spread
from benchmarks._http_client import RATE
from benchmarks._scale import dataset

BATCH, SHARDS = 4096, 4  # ~1024 rows per shard: several ms of work, worth a process task
WARM_STEPS = 3
COMMAND = "python -m benchmarks._service"


async def run(quick: bool) -> list[Figure]:
    """Measure every scenario; see the module docstring."""
    seconds, repeats = (1.0, 1) if quick else (3.0, 3)
    command = f"{COMMAND}{' --quick' if quick else ''}"
    if importlib.util.find_spec("aiohttp") is None:
        reason = "the HTTP server needs aiohttp: pip install 'asynctrain[service]'"
        return [_not_available("http", reason, command)]
    data = await asyncio.to_thread(dataset, "mlp", 50_000 if quick else 200_000)
    idle = [await _measure(data, None, seconds) for _ in range(repeats)]
    figures = _latency_figures("idle", idle, command)
    for backend in ("thread", "process"):
        missing = _unavailable(backend)
        if missing:
            figures.append(_not_available(backend, missing, command))
            continue
        served, bare = [], []
        for _ in range(repeats):  # paired: with and without the service, side by side
            served.append(await _measure(data, backend, seconds))
            bare.append(await _bare_rate(data, backend, seconds))
        figures += _latency_figures(backend, served, command)
        figures.append(_throughput_figure(backend, [s["samples_per_s"] for s in served], bare))
    return figures


def _model() -> MLP:
    return MLP((128, 256, 10))


async def _measure(data: Dataset, backend: str | None, seconds: float) -> dict[str, Any]:
    """Loop lag, HTTP latencies and training rate over ``seconds`` of one scenario."""
    async with TrainingService(backend=backend or "thread") as service, _serve(service) as url:
        job = None
        if backend is not None:
            job = await service.start("bench", _model(), data, epochs=10_000, **_options())
            await _reach(job.events(), WARM_STEPS)
        first, started = 0 if job is None else job.step, time.perf_counter()
        latencies = await _client(url, seconds)
        elapsed = time.perf_counter() - started
        steps = 0 if job is None else job.step - first
        async with LoopLagMonitor(window=1_000_000) as lag:  # requests go on meanwhile
            await _client(url, seconds)
        if job is not None:
            job.cancel()
            await job.wait()
    return {"lag": lag.stats(), "http": latencies, "samples_per_s": steps * BATCH / elapsed}


async def _bare_rate(data: Dataset, backend: str, seconds: float) -> float:
    """Samples per second of the same training on a bare Trainer, after the same warm-up."""
    warm = _Warm(WARM_STEPS)
    trainer = Trainer(_model(), backend=backend, **_options())
    async with trainer, asyncio.TaskGroup() as group:
        fit = group.create_task(trainer.fit(data, epochs=10_000, callbacks=[warm]))
        await warm.reached.wait()
        first, started = trainer.state.step, time.perf_counter()
        await asyncio.sleep(seconds)
        steps, elapsed = trainer.state.step - first, time.perf_counter() - started
        fit.cancel()
    return steps * BATCH / elapsed


def _options() -> dict[str, Any]:
    return {"batch_size": BATCH, "shards": SHARDS, "seed": 0}


class _Warm(Callback):
    def __init__(self, steps: int) -> None:
        self.steps, self.reached = steps, asyncio.Event()

    def on_step(self, event: StepEvent) -> None:
        if event.step + 1 >= self.steps:
            self.reached.set()


async def _reach(events: AsyncGenerator[Any, None], steps: int) -> None:
    async with contextlib.aclosing(events):
        async for event in events:
            if event.kind == "step" and event.step + 1 >= steps:
                return


@contextlib.asynccontextmanager
async def _serve(service: TrainingService) -> AsyncIterator[str]:
    """An aiohttp server on 127.0.0.1 with the example service's ``GET /health``."""
    from aiohttp import web

    async def health(request: web.Request) -> web.Response:
        counts: dict[str, int] = {}
        for job in service.jobs.values():
            counts[job.status] = counts.get(job.status, 0) + 1
        lag = service.loop_lag().as_dict()
        return web.json_response({"status": "ok", "jobs": counts, "loop_lag_ms": lag})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}/health"
    finally:
        await runner.cleanup()


async def _client(url: str, seconds: float) -> list[float]:
    """Run the paced HTTP client in its own process; return its latencies (ms)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        _http_client.__file__,
        url,
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the HTTP client failed with exit code {process.returncode}")
    latencies: list[float] = json.loads(out)
    return latencies


def _unavailable(backend: str) -> str:
    """Why ``backend`` cannot run here, or "" if it can."""
    try:
        get_backend(backend)
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def _not_available(backend: str, reason: str, command: str) -> Figure:
    nan = float("nan")
    return Figure(
        f"service/{backend}",
        nan,
        nan,
        nan,
        "ms",
        reference=f"not available: {reason}",
        repeats=0,
        command=command,
        details={"available": False},
    )


def _throughput_figure(backend: str, served: list[float], bare: list[float]) -> Figure:
    # ratio_figure cannot take a text `reference` (its positional reference is the
    # measured one), so the paired ratios are summarised here.
    spread = Spread.of([s / b for s, b in zip(served, bare, strict=True)])
    return Figure(
        f"service/throughput/{backend}",
        spread.median,
        spread.low,
        spread.high,
        "x",
        reference="the same training on a bare Trainer (no service, HTTP or monitor)",
        repeats=spread.n,
        command=COMMAND,
        target=">= 0.90",
        details={"served_samples_per_s": served, "bare_samples_per_s": bare},
    )


def _latency_figures(scenario: str, runs: Sequence[dict[str, Any]], command: str) -> list[Figure]:
    lags: list[LagStats] = [r["lag"] for r in runs]
    http = [sorted(r["http"]) for r in runs]
    reference = "idle service" if scenario == "idle" else f"training mlp on {scenario}"
    values = {
        "loop_lag_p50": [s.p50_ms for s in lags],
        "loop_lag_p99": [s.p99_ms for s in lags],
        "loop_lag_max": [s.max_ms for s in lags],
        "http_p50": [h[len(h) // 2] for h in http],
        "http_p99": [h[min(len(h) - 1, int(0.99 * len(h)))] for h in http],
    }
    figures = []
    for metric, samples in values.items():
        spread = Spread.of(samples)
        target = "< 2" if metric == "loop_lag_p99" and scenario == "process" else ""
        figures.append(
            Figure(
                f"service/{metric}/{scenario}",
                spread.median,
                spread.low,
                spread.high,
                "ms",
                reference=reference,
                repeats=spread.n,
                command=command,
                target=target,
                details={"rate_per_s": RATE, "requests": [len(h) for h in http]},
            )
        )
    if scenario != "idle":
        figures[-1].details["samples_per_s"] = [r["samples_per_s"] for r in runs]
    return figures


if __name__ == "__main__":
    sys.exit(run_alone("service"))
