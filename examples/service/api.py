"""What each route of the training-job service does, whatever the web framework.

The aiohttp service (``app.py`` beside this file) and the FastAPI one
(``examples/fastapi/app.py``) are thin adapters over :class:`Api`: they decode the
request, call one method and send back what it returns. Every failure is an
:class:`HTTPError` (status, message, headers), mapped by :func:`http_error`, so both
services answer with the same codes and the same JSON errors. The limits are the fields
of :class:`jobspec.Settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import math
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

from jobspec import BadRequest, Settings, build, data_path, parse_spec

import asynctrain as at

PARSE_OFF_LOOP = 16 << 10  # JSON bodies larger than this are decoded in a thread
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class HTTPError(Exception):
    """A failure with its HTTP status; ``headers`` go with the answer (e.g. Retry-After)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


def http_error(exc: BaseException) -> HTTPError | None:
    """The HTTP answer for an exception of the request's own making; None for a bug (500)."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, BadRequest | at.ConfigError | at.DataError):
        return HTTPError(400, str(exc))
    if isinstance(exc, at.StateError):
        return HTTPError(409, str(exc))
    return None


@contextlib.asynccontextmanager
async def open_api(settings: Settings) -> AsyncIterator[Api]:
    """The service's TrainingService, open for as long as the block runs."""
    async with at.TrainingService(
        backend=settings.backend,
        workers=settings.workers,
        max_running=settings.max_running,
        keep_finished=settings.keep_finished,
    ) as service:
        yield Api(service, settings)


class Api:
    """The routes' logic over one open TrainingService."""

    def __init__(self, service: at.TrainingService, settings: Settings) -> None:
        self.service, self.settings = service, settings
        self._starting = 0  # POST /jobs admitted, building their data, not yet queued
        self._registry = _registry(service)

    async def aclose(self) -> None:
        """Cancel every job and end every event stream (call before the server drains)."""
        await self.service.aclose()

    # -- routes --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        lag = self.service.loop_lag()
        jobs = Counter(job.status for job in self.service.jobs.values())
        return {"status": "ok", "jobs": dict(jobs), "loop_lag_ms": finite(lag.as_dict())}

    async def upload(self, name: str, size: int | None, chunks: AsyncIterable[bytes]) -> Any:
        limit = self.settings.max_upload
        path = data_path(self.settings.data_dir, name)
        if size is not None and size > limit:
            raise _too_large("the upload", limit)
        written = await save(chunks, path, limit)
        return {"file": path.name, "bytes": written}

    async def start_job(self, body: Any) -> dict[str, Any]:
        spec = parse_spec(body, self.settings)
        self._admit()
        self._starting += 1
        try:
            model, train, validation = await asyncio.to_thread(build, spec, self.settings)
            job = await self.service.start(
                uuid.uuid4().hex[:12],
                model,
                train,
                validation=validation,
                optimizer=at.optim.adam(spec.lr),
                epochs=spec.epochs,
                batch_size=spec.batch_size,
                seed=spec.seed,
            )
        finally:
            self._starting -= 1
        return describe(job)

    def jobs(self) -> list[dict[str, Any]]:
        return [describe(job) for job in self.service.jobs.values()]

    def job(self, job_id: str) -> dict[str, Any]:
        return describe(self.find(job_id))

    async def predict(self, job_id: str, body: Any) -> dict[str, Any]:
        job = self.find(job_id)
        rows = body.get("X") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not rows:
            raise BadRequest('the body must be {"X": [[feature, ...], ...]} with at least one row')
        if len(rows) > self.settings.max_rows:
            raise BadRequest(f"at most {self.settings.max_rows} rows per request, got {len(rows)}")
        prediction = await job.predict(rows)  # converted, checked and computed in a thread
        # A regression's output may overflow to inf on finite inputs (1e38 in float32):
        # NaN and Infinity are not JSON, so null, as everywhere in the answers (aiohttp's
        # json.dumps wrote Infinity; FastAPI's encoder already wrote null).
        values = finite(prediction.values.tolist())
        return {"predictions": values, "step": prediction.step, "version": prediction.version}

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel, wait until the job has stopped; ``cancelled``: this request stopped it.

        ``job.cancel()`` returning True promises a request, not an outcome: a job whose
        fit had returned when the request landed still ends ``done``, and is answered
        ``cancelled: false`` with it.
        """
        job = self.find(job_id)
        requested = job.cancel()
        await job.wait()  # stops after the step in progress
        return {**describe(job), "cancelled": requested and job.status == "cancelled"}

    def events(self, job_id: str, rate: str | None) -> AsyncIterator[bytes]:
        """The job's events as Server-Sent Events; 404 and 400 before the stream starts."""
        return self._sse(self.find(job_id), parse_rate(rate, self.settings.event_rate))

    def metrics(self) -> bytes:
        if self._registry is None:
            raise HTTPError(501, "GET /metrics needs pip install 'asynctrain[metrics]'")
        from prometheus_client import generate_latest

        text: bytes = generate_latest(self._registry)
        return text

    # -- helpers -------------------------------------------------------------------------

    def find(self, job_id: str) -> at.Job:
        try:
            return self.service[job_id]
        except KeyError:
            raise HTTPError(404, f"no job {job_id!r}") from None

    def _admit(self) -> None:
        """Refuse a job that would wait beyond ``max_queued`` (429): each one holds data."""
        running = sum(job.status == "running" for job in self.service.jobs.values())
        free = max(0, self.service.max_running - running)
        waiting = self.service.queued + self._starting - free
        if waiting >= self.settings.max_queued:
            raise HTTPError(
                429,
                f"{self.service.queued} jobs are waiting already (limit "
                f"{self.settings.max_queued}); retry later or cancel a job",
                {"Retry-After": str(self.settings.retry_after)},
            )

    async def _sse(self, job: at.Job, rate: float | None) -> AsyncIterator[bytes]:
        events = job.events(rate=rate)
        async with contextlib.aclosing(events):  # a client that leaves unsubscribes at once
            async for event in events:
                payload = dataclasses.asdict(event)
                if event.kind in ("epoch", "status"):  # how the service's loop is doing
                    payload["loop_lag_ms"] = self.service.loop_lag().as_dict()
                data = json.dumps(finite(payload))
                yield f"event: {event.kind}\ndata: {data}\n\n".encode()


def parse_rate(value: str | None, default: float) -> float | None:
    """``?rate=``: step events a second for this stream; ``all`` (or ``inf``) for every one."""
    if value is None:
        return default
    if value in ("all", "inf"):
        return None
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not (rate > 0 and math.isfinite(rate)):
        raise BadRequest(
            f"rate must be a positive number of events a second or 'all', got {value!r}"
        )
    return rate


async def read_body(chunks: AsyncIterable[bytes], limit: int) -> Any:
    """Read a JSON body of at most ``limit`` bytes (413 beyond) and decode it (400)."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise _too_large("the body", limit)
    try:
        if len(body) > PARSE_OFF_LOOP:
            return await asyncio.to_thread(json.loads, body)
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


async def save(chunks: AsyncIterable[bytes], path: Path, limit: int) -> int:
    """Stream ``chunks`` to a temporary file beside ``path``, then rename it into place."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-", suffix=".tmp")
    written = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in chunks:
                written += len(chunk)
                if written > limit:
                    raise _too_large("the upload", limit)
                await asyncio.to_thread(handle.write, chunk)
        await asyncio.to_thread(os.replace, temporary, path)
    except BaseException as exc:
        await asyncio.to_thread(_remove, temporary)
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            # The server's disk, not the request: a JSON 507 (was a plain-text 500).
            raise HTTPError(507, f"no space left to store the upload ({exc.strerror})") from None
        raise
    return written


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _too_large(what: str, limit: int) -> HTTPError:
    return HTTPError(413, f"{what} exceeded the limit of {limit} bytes")


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _registry(service: at.TrainingService) -> Any:
    """A Prometheus registry holding the service's collector; None without the extra."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        return None
    registry = CollectorRegistry(auto_describe=True)
    registry.register(at.PrometheusCollector(service))
    return registry


def describe(job: at.Job) -> dict[str, Any]:
    """A job's status and metrics as JSON-ready values."""
    last = job.last_step
    described: dict[str, Any] = finite(
        {
            "id": job.name,
            "status": job.status,
            "step": job.step,
            "loss": None if last is None else last.loss,
            "samples_per_s": None if last is None else last.samples_per_s,
            "epochs": [dataclasses.asdict(e) for e in job.epochs],
            "error": None if job.error is None else f"{type(job.error).__name__}: {job.error}",
        }
    )
    return described


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value
