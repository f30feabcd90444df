"""The FastAPI example (examples/fastapi/app.py) under a real uvicorn on 127.0.0.1.

One uvicorn subprocess per test, run as its docs say (``uvicorn --app-dir
examples/fastapi app:app``), talked to with httpx over loopback: start a job, follow its
Server-Sent Events, predict while it trains, scrape /metrics twice, cancel, and stop
the server with a signal while an event stream is open.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _sse import SMALL_BUFFER, STALLED_AFTER, open_unread_stream, read_events

import asynctrain as at

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")

ROOT = Path(__file__).resolve().parents[1]
LONG = {"problem": "softmax", "n": 20_000, "epochs": 100, "batch_size": 64}
RUNNING = re.compile(rb"Uvicorn running on (http://127\.0\.0\.1:\d+)")
GRACE = 3  # seconds uvicorn waits for open responses on shutdown (docs/service.md)


class Server:
    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process, self.url = process, url


def _uvicorn(*listen: str) -> list[str]:
    """The command that serves the app as docs/service.md says, listening on ``listen``."""
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "examples" / "fastapi"),
            "app:app", "--timeout-graceful-shutdown", str(GRACE), *listen]  # fmt: skip


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "ASYNCTRAIN_DATA_DIR": str(tmp_path / "uploads")}
    return env | {"ASYNCTRAIN_WORKERS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    process = await asyncio.create_subprocess_exec(
        *_uvicorn("--host", "127.0.0.1", "--port", "0"),
        env=_env(tmp_path), stderr=asyncio.subprocess.PIPE, preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        yield Server(process, await asyncio.wait_for(_url(process), timeout=60))
    finally:
        if process.returncode is None:
            process.kill()
        await process.communicate()  # to end-of-file: uvloop keeps an unread pipe open


async def _url(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    async for line in process.stderr:
        found = RUNNING.search(line)
        if found:
            return found[1].decode()
    raise AssertionError(f"uvicorn exited ({await process.wait()}) before it listened")


@pytest.fixture
async def http(server: Server) -> AsyncIterator[Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        yield client


async def _start(http: Any, **spec: Any) -> str:
    response = await http.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/jobs/{response.json()['id']}"
    return str(response.json()["id"])


async def _events(http: Any, job_id: str, *, until_step: int | None = None,
                  rate: str = "all") -> list[dict[str, Any]]:  # fmt: skip
    async with http.stream("GET", f"/jobs/{job_id}/events", params={"rate": rate}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        return await read_events(response.aiter_lines(), until_step=until_step)


async def _steps_counter(http: Any) -> float:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in parser.text_string_to_metric_families(response.text)}
    expected = {"asynctrain_jobs", "asynctrain_step_seconds", "asynctrain_loop_lag_seconds",
                "asynctrain_queued_jobs", "asynctrain_shared_memory_bytes"}  # fmt: skip
    assert expected <= set(families)
    return float(families["asynctrain_steps"].samples[0].value)


async def test_a_job_streams_predicts_is_scraped_and_cancelled(http: Any) -> None:
    assert (await http.get("/health")).json()["status"] == "ok"
    job_id = await _start(http, **LONG)
    events = await _events(http, job_id, until_step=2)
    assert [e["event"] for e in events][:2] == ["status", "status"]  # queued, running
    first = await _steps_counter(http)
    predictions = []
    for _ in range(3):  # while it trains: each from one whole parameter version
        response = await http.post(f"/jobs/{job_id}/predict", json={"X": [[0.5] * 128] * 3})
        assert response.status_code == 200, response.text
        predictions.append(response.json())
    assert all(len(p["predictions"]) == 3 for p in predictions)
    assert [p["version"] for p in predictions] == sorted(p["version"] for p in predictions)
    await _events(http, job_id, until_step=int(first) + 3)
    assert await _steps_counter(http) >= first + 3  # the counter moves
    cancelled = (await http.delete(f"/jobs/{job_id}")).json()
    assert (cancelled["status"], cancelled["cancelled"]) == ("cancelled", True)
    replay = await _events(http, job_id)
    assert replay[-1]["status"] == "cancelled"
    response = await http.post(f"/jobs/{job_id}/predict", json={"X": [[0.5] * 128]})
    assert response.json()["step"] == cancelled["step"]  # it keeps its last parameters


async def test_errors_and_limits_match_the_aiohttp_service(http: Any) -> None:
    job_id = await _start(http, **LONG)
    cases = [
        ("POST", "/jobs", {"content": b"{not json"}, 400, "not valid JSON"),
        ("POST", "/jobs", {"json": {"problem": "nope"}}, 400, "unknown problem"),
        ("POST", "/jobs", {"content": b"x" * (2 << 20)}, 413, "exceeded"),
        ("POST", f"/jobs/{job_id}/predict", {"json": {"X": [[10**400] + [0.0] * 127]}}, 400,
         "numeric"),
        ("GET", f"/jobs/{job_id}/events", {"params": {"rate": "0"}}, 400, "rate must be"),
        ("PUT", "/uploads/a.txt", {"content": b"x"}, 400, "not a valid name"),
        ("GET", "/jobs/nope", {}, 404, "no job 'nope'"),
        ("GET", "/nope", {}, 404, "Not Found"),
        ("PATCH", "/jobs", {}, 405, "Method Not Allowed"),
    ]  # fmt: skip
    for method, path, kwargs, code, message in cases:
        response = await http.request(method, path, **kwargs)
        assert response.status_code == code, (method, path, response.text)
        assert response.json()["status"] == code
        assert message in response.json()["error"], (method, path, response.text)
    ids = [await _start(http, **LONG) for _ in range(9)]  # 1 more running, 8 waiting
    refused = await http.post("/jobs", json=LONG)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "10"
    for other in [job_id, *ids]:
        await http.delete(f"/jobs/{other}")


async def test_a_job_trains_on_an_uploaded_npz(http: Any) -> None:
    data = at.data.synthetic("softmax", n=2000, seed=3)
    buffer = io.BytesIO()
    np.savez(buffer, X=data.X, y=data.y)
    response = await http.put("/uploads/train.npz", content=buffer.getvalue())
    assert (response.status_code, response.json()["file"]) == (201, "train.npz")
    job_id = await _start(http, file="train.npz", model="softmax", epochs=2)
    assert (await _events(http, job_id))[-1]["status"] == "done"
    epochs = (await http.get(f"/jobs/{job_id}")).json()["epochs"]
    assert epochs[-1]["val_accuracy"] > 0.5


async def test_the_documented_token_dependency_answers_401_to_any_header() -> None:
    # compare_digest raises TypeError on a str with non-ASCII characters: the documented
    # dependency answered "Bearer é" (Starlette decodes headers as latin-1) with a 500.
    import secrets

    from fastapi import Header

    sys.path.insert(0, str(ROOT / "examples" / "service"))
    from api import HTTPError

    docs = (ROOT / "docs" / "service.md").read_text()
    block = docs.split("Or check in the app itself")[1].split("```python\n")[1]
    check = block[: block.index("# aiohttp:")] + block[block.index("# FastAPI:") :]
    namespace = {"secrets": secrets, "Header": Header, "HTTPError": HTTPError, "TOKEN": "s3cret"}
    exec(check.split("app = FastAPI")[0], namespace)
    await namespace["bearer_token"]("Bearer s3cret")
    for header in ("Bearer nope", "Bearer é", b"Bearer \xff".decode("latin-1"), ""):
        with pytest.raises(HTTPError) as refused:
            await namespace["bearer_token"](header)
        assert refused.value.status == 401


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # int("two") raised a bare ValueError at import: a traceback naming no variable.
        ("ASYNCTRAIN_WORKERS", "two", "ASYNCTRAIN_WORKERS must be an integer, got 'two'"),
        ("ASYNCTRAIN_MAX_RUNNING", "two", "ASYNCTRAIN_MAX_RUNNING must be an integer, got 'two'"),
        # Refused only when the lifespan opened the service: a traceback, then uvicorn's
        # "Application startup failed" (the aiohttp script refuses them in one line).
        ("ASYNCTRAIN_WORKERS", "0", "workers must be >= 1, got 0"),
        ("ASYNCTRAIN_MAX_RUNNING", "-1", "max_running must be >= 1, got -1"),
        ("ASYNCTRAIN_BACKEND", "nope", "unknown backend 'nope'"),
    ],
)
async def test_a_setting_the_service_refuses_is_one_line(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    env = {**os.environ, "ASYNCTRAIN_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env[variable] = value
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "examples" / "fastapi"),
        "app:app", "--host", "127.0.0.1", "--port", "0",
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode != 0
    assert b"Traceback" not in err
    assert message in err.decode().splitlines()[-1]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_stops_the_server_within_5_s_with_a_stream_open(
    server: Server, http: Any, signum: int
) -> None:
    job_id = await _start(http, **LONG)  # 100 epochs: minutes of training
    await _events(http, job_id, until_step=1)
    stream = asyncio.ensure_future(_events(http, job_id))
    await _events(http, job_id, until_step=3)  # the open stream is well under way
    assert not stream.done()
    signalled = time.monotonic()
    server.process.send_signal(signum)
    await asyncio.wait_for(server.process.wait(), timeout=30)
    elapsed = time.monotonic() - signalled
    events = await asyncio.wait_for(stream, timeout=30)
    assert elapsed < 5, f"uvicorn took {elapsed:.1f} s to stop"
    assert events[-1]["event"] == "status"
    assert events[-1]["status"] == "cancelled"  # the job was cancelled, the stream ended


async def test_a_client_that_reads_nothing_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    # Its stream's writes block once the socket's buffers are full; uvicorn waits for
    # every open response, so without --timeout-graceful-shutdown it never exited.
    with socket.socket() as listener, socket.socket() as stalled:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            *_uvicorn("--fd", str(listener.fileno())), env=_env(tmp_path),
            stderr=asyncio.subprocess.DEVNULL, pass_fds=[listener.fileno()],
            preexec_fn=_default_sigint,
        )  # fmt: skip
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                job_id = await _start(http, **LONG)  # the listener queues it until uvicorn runs
                await open_unread_stream(stalled, port, job_id)
                await _events(http, job_id, until_step=STALLED_AFTER)
            signalled = time.monotonic()
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(process.wait(), timeout=30)
            elapsed = time.monotonic() - signalled
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
    assert elapsed < GRACE + 5, f"uvicorn took {elapsed:.1f} s to stop"


def _default_sigint() -> None:
    """Before exec: SIGINT as a terminal delivers it, even when this test run inherited
    it ignored (a background job of a shell without job control)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
