"""A training-job web service on aiohttp, built on asynctrain.TrainingService.

Routes (every error is a JSON object {"error": ..., "status": ...} with a 4xx code):

    GET    /health               liveness, job counts and the event loop's lag
    PUT    /uploads/{name}.npz   store a .npz (arrays X and y) in the data directory
    POST   /jobs                 start a job: {"problem": "softmax"} or {"file": ..., "model": ...}
    GET    /jobs                 all jobs
    GET    /jobs/{id}            status and metrics of one job
    GET    /jobs/{id}/events     its progress as Server-Sent Events, to the end
    POST   /jobs/{id}/predict    {"X": [[...], ...]} -> predictions from the latest parameters
    DELETE /jobs/{id}            cancel it (it keeps its last parameters)

Run: python examples/service/app.py [--port 8080] [--data-dir DIR] [--backend thread]
It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from jobspec import BadRequest, Settings, build, data_path, parse_spec

import asynctrain as at

SERVICE = web.AppKey("service", at.TrainingService)
SETTINGS = web.AppKey("settings", Settings)
PARSE_OFF_LOOP = 16 << 10  # JSON bodies larger than this are decoded in a thread
routes = web.RouteTableDef()


def create_app(settings: Settings) -> web.Application:
    """The aiohttp application; the TrainingService lives as long as the app."""
    app = web.Application(client_max_size=settings.max_body, middlewares=[json_errors])
    app[SETTINGS] = settings
    app.add_routes(routes)
    app.cleanup_ctx.append(training_service)
    app.on_shutdown.append(stop_jobs)
    return app


async def training_service(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with at.TrainingService(
        backend=settings.backend, workers=settings.workers, max_running=settings.max_running
    ) as service:
        app[SERVICE] = service
        yield


async def stop_jobs(app: web.Application) -> None:
    # Before aiohttp waits for open connections: ends every event stream, so SSE
    # clients are not left waiting for jobs that will never finish.
    await app[SERVICE].aclose()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON error with the right 4xx code (never a 500 for input)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.text or exc.reason)
    except (BadRequest, at.ConfigError, at.DataError) as exc:
        return error(400, str(exc))
    except at.StateError as exc:
        return error(409, str(exc))


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


# -- routes ------------------------------------------------------------------------------


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    lag = service.loop_lag()
    return web.json_response(
        {
            "status": "ok",
            "jobs": Counter(job.status for job in service.jobs.values()),
            "loop_lag_ms": finite(lag.as_dict()),
        }
    )


@routes.put(r"/uploads/{name}")
async def upload(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    path = data_path(settings.data_dir, request.match_info["name"])
    size = request.content_length
    if size is not None and size > settings.max_upload:
        raise web.HTTPRequestEntityTooLarge(max_size=settings.max_upload, actual_size=size)
    written = await save(request, path, settings.max_upload)
    return web.json_response({"file": path.name, "bytes": written}, status=201)


@routes.post("/jobs")
async def start_job(request: web.Request) -> web.Response:
    settings, service = request.app[SETTINGS], request.app[SERVICE]
    spec = parse_spec(await read_json(request), settings)
    model, train, validation = await asyncio.to_thread(build, spec, settings)
    job_id = uuid.uuid4().hex[:12]
    job = await service.start(
        job_id,
        model,
        train,
        validation=validation,
        optimizer=at.optim.adam(spec.lr),
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        seed=spec.seed,
    )
    return web.json_response(describe(job), status=201, headers={"Location": f"/jobs/{job_id}"})


@routes.get("/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    return web.json_response([describe(job) for job in request.app[SERVICE].jobs.values()])


@routes.get("/jobs/{id}")
async def get_job(request: web.Request) -> web.Response:
    return web.json_response(describe(find(request)))


@routes.get("/jobs/{id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    job = find(request)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    service, events = request.app[SERVICE], job.events()
    # A client that leaves unsubscribes at once: its write fails, the stream is closed.
    with contextlib.suppress(ConnectionResetError):
        async with contextlib.aclosing(events):
            async for event in events:
                payload = dataclasses.asdict(event)
                if event.kind in ("epoch", "status"):  # how the service's loop is doing
                    payload["loop_lag_ms"] = service.loop_lag().as_dict()
                data = json.dumps(finite(payload))
                await response.write(f"event: {event.kind}\ndata: {data}\n\n".encode())
        await response.write_eof()
    return response


@routes.post("/jobs/{id}/predict")
async def predict(request: web.Request) -> web.Response:
    job, settings = find(request), request.app[SETTINGS]
    body = await read_json(request)
    rows = body.get("X") if isinstance(body, dict) else None
    if not isinstance(rows, list) or not rows:
        raise BadRequest('the body must be {"X": [[feature, ...], ...]} with at least one row')
    if len(rows) > settings.max_rows:
        raise BadRequest(f"at most {settings.max_rows} rows per request, got {len(rows)}")
    prediction = await job.predict(rows)  # converted, checked and computed in a thread
    return web.json_response(
        {
            "predictions": prediction.values.tolist(),
            "step": prediction.step,
            "version": prediction.version,
        }
    )


@routes.delete("/jobs/{id}")
async def cancel_job(request: web.Request) -> web.Response:
    job = find(request)
    cancelled = job.cancel()
    await job.wait()  # stops after the step in progress
    return web.json_response({**describe(job), "cancelled": cancelled})


# -- helpers -----------------------------------------------------------------------------


def find(request: web.Request) -> at.Job:
    job_id = request.match_info["id"]
    try:
        return request.app[SERVICE][job_id]
    except KeyError:
        raise web.HTTPNotFound(text=f"no job {job_id!r}") from None


async def read_json(request: web.Request) -> Any:
    body = await request.read()  # raises 413 beyond client_max_size
    try:
        if len(body) > PARSE_OFF_LOOP:
            return await asyncio.to_thread(json.loads, body)
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


async def save(request: web.Request, path: Path, limit: int) -> int:
    """Stream the body to a temporary file beside ``path``, then rename it into place."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-", suffix=".tmp")
    written = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in request.content.iter_chunked(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=written)
                await asyncio.to_thread(handle.write, chunk)
        await asyncio.to_thread(os.replace, temporary, path)
    except BaseException:
        await asyncio.to_thread(_remove, temporary)
        raise
    return written


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


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


# -- running it --------------------------------------------------------------------------


async def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until cancelled (Ctrl-C), then shut down cleanly."""
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--data-dir", type=Path, default=Path("uploads"))
    parser.add_argument("--backend", default="thread", choices=at.backends.backend_names())
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--max-running", type=int, default=2)
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        args.data_dir, args.backend, workers=args.workers, max_running=args.max_running
    )
    with contextlib.suppress(KeyboardInterrupt):
        at.run(serve(settings, args.host, args.port))


if __name__ == "__main__":
    main()
