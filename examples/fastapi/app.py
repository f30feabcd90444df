"""The training-job web service on FastAPI: the same routes and limits as the aiohttp one.

Run it with uvicorn (it listens on 127.0.0.1 unless told otherwise):

    uvicorn --app-dir examples/fastapi app:app --timeout-graceful-shutdown 3 [--port 8080]

Keep --timeout-graceful-shutdown: without it uvicorn waits, when it stops, for every
open response, and an event stream whose client reads nothing never finishes.

Settings come from the environment: ASYNCTRAIN_DATA_DIR (uploads; default ./uploads),
ASYNCTRAIN_BACKEND (thread), ASYNCTRAIN_WORKERS, ASYNCTRAIN_MAX_RUNNING (2). The routes'
logic and limits are those of examples/service (api.py, jobspec.py); this file only
adapts them to FastAPI, opens the TrainingService in the app's lifespan, and ends the
event streams as soon as the server is told to stop (SIGINT or SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
# the shared route logic and limits, beside the aiohttp example:
from api import (
    METRICS_TYPE,
    SSE_HEADERS,
    Api,
    HTTPError,
    http_error,
    open_api,
    read_body,
)
from jobspec import BadRequest, Settings

import asynctrain as at


def settings_from_env() -> Settings:
    data_dir = Path(os.environ.get("ASYNCTRAIN_DATA_DIR", "uploads"))
    data_dir.mkdir(parents=True, exist_ok=True)
    workers = os.environ.get("ASYNCTRAIN_WORKERS")
    settings = Settings(
        data_dir,
        backend=os.environ.get("ASYNCTRAIN_BACKEND", "thread"),
        workers=None if workers is None else _integer("ASYNCTRAIN_WORKERS", workers),
        max_running=_integer(
            "ASYNCTRAIN_MAX_RUNNING", os.environ.get("ASYNCTRAIN_MAX_RUNNING", "2")
        ),
    )
    # A value the TrainingService refuses (ASYNCTRAIN_WORKERS=0, an unknown backend) was
    # refused only in the lifespan: uvicorn's "Application startup failed" after a
    # traceback. Checked now (a service made and never opened: nothing starts), in one line.
    try:
        at.TrainingService(
            backend=settings.backend, workers=settings.workers, max_running=settings.max_running
        )
    except at.ConfigError as exc:
        raise SystemExit(
            f"{exc} (ASYNCTRAIN_BACKEND, ASYNCTRAIN_WORKERS, ASYNCTRAIN_MAX_RUNNING)"
        ) from None
    return settings


def _integer(name: str, value: str) -> int:
    """``value`` of variable ``name`` as an int; else exit with one line naming it (int()'s
    ValueError, a traceback at import, named neither the variable nor the fix)."""
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {value!r}") from None


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI application; the TrainingService lives as long as its lifespan."""
    app = FastAPI(title="asynctrain training jobs", lifespan=lifespan)
    app.state.settings = settings
    for error in (HTTPError, BadRequest, at.ConfigError, at.DataError, at.StateError):
        app.add_exception_handler(error, json_error)
    app.add_exception_handler(HTTPException, framework_error)
    app.include_router(routes_of(app))
    return app


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with open_api(app.state.settings) as api:
        app.state.api = api
        with stop_jobs_on_signals(api):
            yield


@contextlib.contextmanager
def stop_jobs_on_signals(api: Api) -> Iterator[None]:
    """On SIGINT/SIGTERM, cancel every job and end every event stream, then let the
    server's own handler run.

    uvicorn stops accepting on a signal, then waits for open responses to finish before
    the lifespan ends; an SSE stream of a job with an hour to go would hold it that long.
    Closing the service first ends every stream with the job's final status.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread's handlers; nothing to chain to
        return
    loop = asyncio.get_running_loop()
    closing: set[asyncio.Task[None]] = set()

    def close_service() -> None:
        task = loop.create_task(api.aclose())
        closing.add(task)  # held until done: a task only weakly referenced may vanish
        task.add_done_callback(closing.discard)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(close_service)
        handler = previous[signal.Signals(signum)]
        if callable(handler):  # the server's (uvicorn's) own shutdown
            handler(signum, frame)

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)


async def json_error(request: Request, exc: Exception) -> Response:
    answer = http_error(exc)
    assert answer is not None  # registered only for the errors http_error maps
    return JSONResponse(answer.body(), status_code=answer.status, headers=answer.headers)


async def framework_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # unknown routes (404), wrong methods (405)
    body = {"error": str(exc.detail), "status": exc.status_code}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def routes_of(app: FastAPI) -> APIRouter:
    """The routes, each one call into the shared api.Api (no request models: the body
    is read with a size limit and checked field by field by jobspec)."""
    router = APIRouter()

    def api_of(request: Request) -> Api:
        api: Api = request.app.state.api
        return api

    async def body_of(request: Request) -> Any:
        return await read_body(request.stream(), api_of(request).settings.max_body)

    @router.get("/health")
    async def health(request: Request) -> Any:
        return api_of(request).health()

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(api_of(request).metrics(), headers={"Content-Type": METRICS_TYPE})

    @router.put("/uploads/{name}", status_code=201)
    async def upload(name: str, request: Request) -> Any:
        size = request.headers.get("content-length")
        declared = int(size) if size and size.isdigit() else None
        return await api_of(request).upload(name, declared, request.stream())

    @router.post("/jobs", status_code=201)
    async def start_job(request: Request) -> Response:
        job = await api_of(request).start_job(await body_of(request))
        return JSONResponse(job, status_code=201, headers={"Location": f"/jobs/{job['id']}"})

    @router.get("/jobs")
    async def list_jobs(request: Request) -> Any:
        return api_of(request).jobs()

    @router.get("/jobs/{job_id}")
    async def get_job(job_id: str, request: Request) -> Any:
        return api_of(request).job(job_id)

    @router.get("/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request, rate: str | None = None) -> Response:
        # Starlette cancels the stream when the client leaves: it unsubscribes at once.
        return StreamingResponse(api_of(request).events(job_id, rate), headers=SSE_HEADERS)

    @router.post("/jobs/{job_id}/predict")
    async def predict(job_id: str, request: Request) -> Any:
        return await api_of(request).predict(job_id, await body_of(request))

    @router.delete("/jobs/{job_id}")
    async def cancel_job(job_id: str, request: Request) -> Any:
        return await api_of(request).cancel(job_id)

    return router


app = create_app(settings_from_env())
