"""A training-job web service on aiohttp, built on asynctrain.TrainingService.

Routes (every error is a JSON object {"error": ..., "status": ...} with a 4xx code):

    GET    /health               liveness, job counts and the event loop's lag
    GET    /metrics              Prometheus metrics (asynctrain_*), with asynctrain[metrics]
    PUT    /uploads/{name}.npz   store a .npz (arrays X and y) in the data directory
    POST   /jobs                 start a job: {"problem": "softmax"} or {"file": ..., "model": ...}
    GET    /jobs                 all jobs
    GET    /jobs/{id}            status and metrics of one job
    GET    /jobs/{id}/events     its progress as Server-Sent Events, to the end (?rate=4|all)
    POST   /jobs/{id}/predict    {"X": [[...], ...]} -> predictions from the latest parameters
    DELETE /jobs/{id}            cancel it (it keeps its last parameters)

Run: python examples/service/app.py [--port 8080] [--data-dir DIR] [--backend thread]
It listens on 127.0.0.1 unless told otherwise. The routes' logic and limits live in
api.py and jobspec.py, shared with the FastAPI service in examples/fastapi/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

from aiohttp import web
from api import METRICS_TYPE, SSE_HEADERS, Api, http_error, open_api, read_body
from jobspec import Settings

import asynctrain as at

API = web.AppKey("api", Api)
SETTINGS = web.AppKey("settings", Settings)
routes = web.RouteTableDef()


def create_app(settings: Settings) -> web.Application:
    """The aiohttp application; the TrainingService lives as long as the app."""
    app = web.Application(client_max_size=settings.max_body, middlewares=[json_errors])
    app[SETTINGS] = settings
    app[STREAMS] = Streams()
    app.add_routes(routes)
    app.cleanup_ctx.append(training_service)
    app.on_shutdown.append(stop_jobs)
    return app


async def training_service(app: web.Application) -> AsyncIterator[None]:
    async with open_api(app[SETTINGS]) as api:
        app[API] = api
        yield


async def stop_jobs(app: web.Application) -> None:
    # Before aiohttp waits for open connections: ends every event stream, so SSE
    # clients are not left waiting for jobs that will never finish.
    await app[API].aclose()
    await app[STREAMS].cut(app[SETTINGS].stream_grace)


class Streams:
    """The open event streams, so that shutdown can end those nobody reads.

    A client that stops reading blocks its stream's writes once the socket's buffers are
    full, and aiohttp waits for such a handler twice its ``shutdown_timeout`` (60 s each)
    before it drops the connection.
    """

    def __init__(self) -> None:
        self._open: dict[asyncio.Future[None], web.Request] = {}  # (a Request is unhashable)

    @contextlib.contextmanager
    def serving(self, request: web.Request) -> Iterator[None]:
        ended = asyncio.get_running_loop().create_future()
        self._open[ended] = request
        try:
            yield
        finally:
            del self._open[ended]
            ended.set_result(None)

    async def cut(self, grace: float) -> None:
        """Give the open streams ``grace`` seconds to be read to their end, then drop the
        connections of those still writing."""
        if self._open:
            await asyncio.wait(self._open, timeout=grace)
        for request in self._open.values():
            if request.transport is not None:
                request.transport.abort()


STREAMS = web.AppKey("streams", Streams)


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
    except Exception as exc:
        answer = http_error(exc)
        if answer is None:
            raise
        return web.json_response(answer.body(), status=answer.status, headers=answer.headers)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


# -- routes: each one call into api.Api ------------------------------------------------


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response(request.app[API].health())


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[API].metrics(), headers={"Content-Type": METRICS_TYPE})


@routes.put(r"/uploads/{name}")
async def upload(request: web.Request) -> web.Response:
    chunks = request.content.iter_chunked(1 << 20)
    stored = await request.app[API].upload(
        request.match_info["name"], request.content_length, chunks
    )
    return web.json_response(stored, status=201)


@routes.post("/jobs")
async def start_job(request: web.Request) -> web.Response:
    api = request.app[API]
    job = await api.start_job(await read_body(request.content.iter_any(), api.settings.max_body))
    return web.json_response(job, status=201, headers={"Location": f"/jobs/{job['id']}"})


@routes.get("/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    return web.json_response(request.app[API].jobs())


@routes.get("/jobs/{id}")
async def get_job(request: web.Request) -> web.Response:
    return web.json_response(request.app[API].job(request.match_info["id"]))


@routes.get("/jobs/{id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    stream = request.app[API].events(request.match_info["id"], request.query.get("rate"))
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    # A client that leaves (or is cut at shutdown): its write fails, the stream is closed
    # and unsubscribes. ConnectionError, not only ConnectionResetError: a reset while the
    # write waited for the client raises a plain ConnectionError("Connection lost").
    with request.app[STREAMS].serving(request), contextlib.suppress(ConnectionError):
        async with contextlib.aclosing(stream):
            async for frame in stream:
                await response.write(frame)
        await response.write_eof()
    return response


@routes.post("/jobs/{id}/predict")
async def predict(request: web.Request) -> web.Response:
    api = request.app[API]
    body = await read_body(request.content.iter_any(), api.settings.max_body)
    return web.json_response(await api.predict(request.match_info["id"], body))


@routes.delete("/jobs/{id}")
async def cancel_job(request: web.Request) -> web.Response:
    return web.json_response(await request.app[API].cancel(request.match_info["id"]))


# -- running it --------------------------------------------------------------------------


async def serve(settings: Settings, host: str, port: int) -> None:
    """Serve until cancelled (Ctrl-C) or sent SIGTERM, then shut down cleanly."""
    # SIGTERM is how a service manager (systemd, Docker, Kubernetes) stops a server: by
    # default it ended the process at once, jobs not cancelled, event streams cut
    # without their final status. It ends the wait below, as Ctrl-C's cancel does.
    stopped = asyncio.Event()
    with contextlib.suppress(NotImplementedError):  # no add_signal_handler on Windows
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    # A client that hangs up cancels its handler: after an early 413 aiohttp otherwise keeps
    # reading the rest of the body ("lingering") for 10 s, past the runner's cleanup.
    runner = web.AppRunner(create_app(settings), handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
        await stopped.wait()
    finally:
        await runner.cleanup()
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)


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
    try:
        with contextlib.suppress(KeyboardInterrupt):
            at.run(serve(settings, args.host, args.port))
    except (at.ConfigError, OSError) as exc:
        # A bad setting (--workers 0) or a port in use fails the start: one line, not a
        # traceback. Once serving, a request's errors are its answer, never raised here.
        parser.error(str(exc))


if __name__ == "__main__":
    main()
