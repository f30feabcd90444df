"""The example web service (examples/service/app.py), served for real on 127.0.0.1.

Each test starts the aiohttp app on a free port picked by the OS and talks to it over
loopback with aiohttp's own HTTP client. Predictions served while a job trains are
checked against an independent oracle: the same job replayed on the inline backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import io
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _sse import SMALL_BUFFER, STALLED_AFTER, open_unread_stream, read_events

import asynctrain as at

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

SERVICE_DIR = Path(__file__).resolve().parents[1] / "examples" / "service"
sys.path.insert(0, str(SERVICE_DIR))  # app.py imports its sibling jobspec.py
_spec = importlib.util.spec_from_file_location("service_app", SERVICE_DIR / "app.py")
assert _spec is not None
assert _spec.loader is not None
app_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(app_module)
jobspec = sys.modules["jobspec"]

LONG = {"problem": "softmax", "n": 20_000, "epochs": 100, "batch_size": 64}


def _settings(data_dir: Path) -> Any:
    return jobspec.Settings(
        data_dir,
        workers=2,
        max_running=2,
        max_body=64 << 10,
        max_upload=1 << 20,
        max_rows=100,
        max_queued=2,
        max_classes=50,
        max_params=1_000_000,
    )


@pytest.fixture
async def server(tmp_path: Path, no_task_leaks: None) -> AsyncIterator[str]:
    runner = web.AppRunner(app_module.create_app(_settings(tmp_path)), handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def http(server: str) -> AsyncIterator[Any]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(server, timeout=timeout) as session:
        yield session


async def _call(http: Any, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, path, **kwargs) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


async def _start(http: Any, **spec: Any) -> str:
    status, body = await _call(http, "POST", "/jobs", json=spec)
    assert status == 201, body
    return str(body["id"])


async def _sse(
    http: Any, job_id: str, *, until_step: int | None = None, rate: str = "all"
) -> list[dict[str, Any]]:
    """Read the job's event stream to its end (or until step ``until_step``)."""
    async with http.get(f"/jobs/{job_id}/events", params={"rate": rate}) as response:
        assert response.content_type == "text/event-stream"
        return await read_events(response.content, until_step=until_step)


async def test_health(http: Any) -> None:
    status, body = await _call(http, "GET", "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert set(body["loop_lag_ms"]) == {"p50_ms", "p99_ms", "max_ms"}


async def test_a_job_streams_its_events_to_the_end(http: Any) -> None:
    job_id = await _start(http, problem="softmax", n=4000, epochs=2, batch_size=128)
    events = await _sse(http, job_id)
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == list(range(2 * 29))  # 3600 training rows in batches of 128
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [0, 1]
    lag = events[-1].pop("loop_lag_ms")
    assert events[-1] == {"event": "status", "kind": "status", "job": job_id, "status": "done",
                          "step": 58, "error": None}  # fmt: skip
    assert set(lag) == {"p50_ms", "p99_ms", "max_ms"}
    status, body = await _call(http, "GET", f"/jobs/{job_id}")
    assert status == 200
    assert body["status"] == "done"
    assert body["epochs"][-1]["val_accuracy"] > 0.5
    assert [e["event"] for e in await _sse(http, job_id)][-1] == "status"  # late: replayed


async def _replay(spec: dict[str, Any], tmp_path: Path) -> tuple[Any, dict[int, Any]]:
    """The oracle: the job's training on the inline backend, every version recorded."""
    parsed = jobspec.parse_spec(spec, _settings(tmp_path))
    model, train, _ = jobspec.build(parsed, _settings(tmp_path))
    versions: dict[int, Any] = {}
    options = {"batch_size": parsed.batch_size, "seed": parsed.seed}
    async with at.Trainer(model, at.optim.adam(parsed.lr), backend="inline", **options) as tr:
        versions[0] = tr.params

        class Record(at.Callback):
            def on_step(self, event: at.StepEvent) -> None:
                versions[tr.state.version] = tr.params

        await tr.fit(train, epochs=parsed.epochs, callbacks=[Record()])
    return model, versions


async def test_predictions_change_while_it_trains_and_use_whole_versions(
    http: Any, tmp_path: Path
) -> None:
    spec = {"problem": "mlp", "n": 6000, "epochs": 4, "batch_size": 64, "hidden": 32}
    X = at.data.synthetic("mlp", n=20, seed=9).X
    job_id = await _start(http, **spec)
    await _sse(http, job_id, until_step=1)
    served = []
    while (await _call(http, "GET", f"/jobs/{job_id}"))[1]["status"] == "running":
        status, body = await _call(http, "POST", f"/jobs/{job_id}/predict", json={"X": X.tolist()})
        assert status == 200, body
        served.append(body)
    model, versions = await _replay(spec, tmp_path)
    for body in served:
        expected = model.predict(versions[body["version"]], X).tolist()
        assert body["predictions"] == expected, f"version {body['version']}"
    assert len({body["version"] for body in served}) >= 3
    assert len({json.dumps(body["predictions"]) for body in served}) >= 2


async def test_cancel_one_job_while_another_keeps_training(http: Any) -> None:
    doomed, other = await _start(http, **LONG), await _start(http, **LONG)
    await _sse(http, doomed, until_step=3)
    status, body = await _call(http, "DELETE", f"/jobs/{doomed}")
    assert (status, body["status"], body["cancelled"]) == (200, "cancelled", True)
    kept = body["step"]
    _, running = await _call(http, "GET", f"/jobs/{other}")
    assert running["status"] == "running"
    events = await _sse(http, other, until_step=running["step"] + 5)  # it goes on
    assert events[-1]["step"] >= running["step"] + 5
    status, prediction = await _call(
        http, "POST", f"/jobs/{doomed}/predict", json={"X": [[0.0] * 128]}
    )
    assert (status, prediction["step"]) == (200, kept)  # a cancelled job keeps its params
    assert (await _call(http, "GET", f"/jobs/{doomed}"))[1]["step"] == kept
    assert (await _call(http, "DELETE", f"/jobs/{other}"))[1]["status"] == "cancelled"


class _DeleteAtFitEnd(at.Callback):
    """Sends DELETE /jobs/{id} (Api.cancel) once the fit has returned, while the job's
    trainer closes: the cancel is accepted, yet the job ends done."""

    def __init__(self, api: Any) -> None:
        self.api, self.job_id = api, ""
        self.answer: asyncio.Future[dict[str, Any]] | None = None

    def on_fit_end(self, fit: Any) -> None:
        self.answer = asyncio.ensure_future(self.api.cancel(self.job_id))


async def test_a_delete_that_lands_after_the_fit_returned_says_it_cancelled_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_task_leaks: None
) -> None:
    """``cancelled`` says whether the request stopped the job: never True beside a
    ``done`` status (Job.cancel's True promises a request, not an outcome)."""
    async with sys.modules["api"].open_api(_settings(tmp_path)) as api:
        data = at.data.synthetic("softmax", n=500, seed=1)
        deleter = _DeleteAtFitEnd(api)
        job = await api.service.start(
            "late", at.models.SoftmaxRegression(128, 10), data, callbacks=[deleter]
        )
        deleter.job_id = job.name
        requested, cancel = [], job.cancel
        monkeypatch.setattr(job, "cancel", lambda: requested.append(cancel()) or requested[-1])
        assert await job.wait() == "done"
        assert deleter.answer is not None
        answer = await deleter.answer
        assert requested == [True]  # the race was hit: the cancel was accepted
        assert (answer["status"], answer["cancelled"]) == ("done", False)
        again = await api.cancel(job.name)  # a job already finished: nothing to stop
        assert (again["status"], again["cancelled"]) == ("done", False)


async def test_jobs_beyond_the_limit_wait_their_turn(http: Any) -> None:
    ids = [await _start(http, **LONG) for _ in range(3)]
    statuses = [(await _call(http, "GET", f"/jobs/{i}"))[1]["status"] for i in ids]
    assert statuses == ["running", "running", "queued"]
    status, body = await _call(http, "POST", f"/jobs/{ids[2]}/predict", json={"X": [[0.0] * 128]})
    assert status == 409
    assert "no parameters" in body["error"]
    await _call(http, "DELETE", f"/jobs/{ids[0]}")
    assert (await _call(http, "GET", f"/jobs/{ids[2]}"))[1]["status"] == "running"
    _, listed = await _call(http, "GET", "/jobs")
    assert [job["status"] for job in listed] == ["cancelled", "running", "running"]
    for job_id in ids[1:]:
        await _call(http, "DELETE", f"/jobs/{job_id}")


BAD_JOBS = [
    ({"problem": "nope"}, "unknown problem"),
    ({"problem": "softmax", "colour": 1}, "unknown field"),
    ({"problem": "softmax", "epochs": "3"}, "epochs must be a JSON int"),
    ({"problem": "softmax", "epochs": True}, "epochs must be a JSON int"),
    ({"problem": "softmax", "n": 10**9}, "n must be in"),
    ({"problem": "softmax", "lr": -1}, "lr must be in"),
    ({}, "exactly one of"),
    ({"file": "a.npz"}, 'needs a "model"'),
    ({"file": "../outside.npz", "model": "softmax"}, "not a valid name"),
    ({"file": "/etc/passwd", "model": "softmax"}, "not a valid name"),
    ({"file": "missing.npz", "model": "softmax"}, "no uploaded file"),
    ([1, 2], "must be a JSON object"),
]


@pytest.mark.parametrize(("body", "message"), BAD_JOBS)
async def test_bad_job_requests_get_400(http: Any, body: Any, message: str) -> None:
    status, answer = await _call(http, "POST", "/jobs", json=body)
    assert status == 400
    assert message in answer["error"]


async def test_bad_requests_get_json_4xx(http: Any) -> None:
    job_id = await _start(http, problem="softmax", n=1000, epochs=1)
    predict = f"/jobs/{job_id}/predict"
    cases = [
        ("POST", "/jobs", {"data": b"{not json"}, 400, "not valid JSON"),
        ("POST", "/jobs", {"data": b"x" * (65 << 10)}, 413, "exceeded"),
        ("POST", predict, {"json": {"X": [[0.0] * 5]}}, 400, "shape (n, 128)"),
        ("POST", predict, {"json": {"X": [[0.0] * 128, [0.0]]}}, 400, "numeric (n, 128)"),
        ("POST", predict, {"json": {"X": [["a"] * 128]}}, 400, "numeric"),
        ("POST", predict, {"data": b'{"X": [[NaN]]}'}, 400, "shape"),
        ("POST", predict, {"json": {"X": [[10**400] + [0.0] * 127]}}, 400, "numeric"),
        ("POST", predict, {"json": {"X": [[0.0] * 128] * 101}}, 400, "at most 100 rows"),
        ("POST", predict, {"json": {"rows": []}}, 400, '{"X"'),
        ("POST", "/jobs/nope/predict", {"json": {"X": [[0.0]]}}, 404, "no job 'nope'"),
        ("GET", "/jobs/nope", {}, 404, "no job"),
        ("GET", "/jobs/nope/events", {}, 404, "no job"),
        ("DELETE", "/jobs/nope", {}, 404, "no job"),
        ("PATCH", "/jobs", {}, 405, "Not Allowed"),
    ]
    for method, path, kwargs, code, message in cases:
        status, body = await _call(http, method, path, **kwargs)
        assert (status, body["status"]) == (code, code), (method, path, body)
        assert message in body["error"], (method, path, body)


async def test_jobs_beyond_the_queue_limit_get_429_with_retry_after(http: Any) -> None:
    ids = [await _start(http, **LONG) for _ in range(4)]  # 2 running, 2 queued (the limit)
    async with http.post("/jobs", json=LONG) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "10"
        assert "waiting already" in (await response.json())["error"]
    await _call(http, "DELETE", f"/jobs/{ids[0]}")  # a slot frees: one more may wait
    ids.append(await _start(http, **LONG))
    _, listed = await _call(http, "GET", "/jobs")
    assert [job["status"] for job in listed].count("queued") == 2
    for job_id in ids:
        await _call(http, "DELETE", f"/jobs/{job_id}")


async def test_labels_beyond_the_class_limit_get_400(http: Any) -> None:
    data = at.data.synthetic("softmax", n=500, seed=3)
    y = np.asarray(data.y).copy()
    y[0] = 100_000  # one label of 1e5 would make a 100,001-class model
    buffer = io.BytesIO()
    np.savez(buffer, X=data.X, y=y)
    assert (await _call(http, "PUT", "/uploads/wide.npz", data=buffer.getvalue()))[0] == 201
    status, body = await _call(http, "POST", "/jobs", json={"file": "wide.npz", "model": "mlp"})
    assert status == 400
    assert "at most 50 classes" in body["error"]


async def test_metrics_scrape_shows_the_step_counter_move(http: Any) -> None:
    parser = pytest.importorskip("prometheus_client.parser")

    async def steps() -> float:
        async with http.get("/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
        families = {f.name: f for f in parser.text_string_to_metric_families(text)}
        assert all(name.startswith("asynctrain_") for name in families)
        return float(families["asynctrain_steps"].samples[0].value)

    job_id = await _start(http, **LONG)
    await _sse(http, job_id, until_step=1)
    first = await steps()
    await _sse(http, job_id, until_step=int(first) + 3)
    assert await steps() >= first + 3
    await _call(http, "DELETE", f"/jobs/{job_id}")


async def test_a_throttled_event_stream_ends_with_the_latest_step(
    http: Any,
) -> None:
    job_id = await _start(http, problem="softmax", n=4000, epochs=2, batch_size=128)
    events = await _sse(http, job_id, rate="1")  # one step a second at most
    assert [e["event"] for e in await _sse(http, job_id, rate="all")].count("step") == 58
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert len(steps) < 58
    assert steps[-1] == 57  # the latest step, before the final status
    assert [e["event"] for e in events][-1] == "status"
    async with http.get(f"/jobs/{job_id}/events", params={"rate": "-1"}) as response:
        assert response.status == 400


async def test_uploads_stay_in_the_data_directory(http: Any, tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside.npz"
    for name in ["..%2Foutside.npz", "..%2F..%2Fetc%2Fx.npz", ".hidden.npz", "a.npy"]:
        status, _ = await _call(http, "PUT", f"/uploads/{name}", data=b"x")
        assert status in (400, 404), name
    os.symlink(outside, tmp_path / "link.npz")
    status, body = await _call(http, "POST", "/jobs", json={"file": "link.npz", "model": "mlp"})
    assert status == 400
    assert "not inside the data directory" in body["error"]
    assert not outside.exists()
    assert sorted(os.listdir(tmp_path)) == ["link.npz"]


async def test_a_job_trains_on_an_uploaded_npz(http: Any, tmp_path: Path) -> None:
    data = at.data.synthetic("softmax", n=2000, seed=3)
    buffer = io.BytesIO()
    np.savez(buffer, X=data.X, y=data.y)
    status, body = await _call(http, "PUT", "/uploads/train.npz", data=buffer.getvalue())
    assert (status, body["file"]) == (201, "train.npz")
    job_id = await _start(http, file="train.npz", model="softmax", epochs=2)
    assert (await _sse(http, job_id))[-1]["status"] == "done"
    too_big = io.BytesIO(bytes((1 << 20) + 1))
    status, body = await _call(http, "PUT", "/uploads/big.npz", data=too_big)
    assert status == 413
    assert sorted(os.listdir(tmp_path)) == ["train.npz"]  # no partial file left


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
async def test_a_prediction_that_overflows_is_null_in_valid_json(http: Any) -> None:
    # A linear model's output of a finite input (3e38, near float32's largest) overflows
    # to inf: the answer held "Infinity", which is not JSON (the FastAPI service's
    # encoder, pydantic's, sends null).
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4)).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, X=X, y=1000 * X[:, 0])
    assert (await _call(http, "PUT", "/uploads/steep.npz", data=buffer.getvalue()))[0] == 201
    job_id = await _start(http, file="steep.npz", model="linear", epochs=3, lr=1.0, batch_size=64)
    assert (await _sse(http, job_id))[-1]["status"] == "done"
    rows = [[3e38, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    async with http.post(f"/jobs/{job_id}/predict", json={"X": rows}) as response:
        assert response.status == 200
        text = await response.text()

    def refuse(name: str) -> Any:
        raise AssertionError(f"not JSON: {name} in {text}")

    predictions = json.loads(text, parse_constant=refuse)["predictions"]
    assert predictions[0] is None
    assert isinstance(predictions[1], float)


def _auth_snippet() -> str:
    """docs/service.md's bearer-token check for aiohttp (the block up to its FastAPI part)."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "service.md").read_text()
    block = docs.split("Or check in the app itself")[1].split("```python\n")[1]
    return block[: block.index("# FastAPI:")]


async def test_the_documented_token_check_answers_401_to_any_header(
    tmp_path: Path, no_task_leaks: None
) -> None:
    # compare_digest raises TypeError on a str with non-ASCII characters: the documented
    # middleware answered a header such as "Bearer é" with a 500 and a logged traceback.
    import secrets

    namespace = {"web": web, "secrets": secrets, "error": app_module.error, "TOKEN": "s3cret"}
    exec(_auth_snippet(), namespace)
    app = app_module.create_app(_settings(tmp_path))
    app.middlewares.insert(0, namespace["bearer_token"])
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        for header, status in [
            (b"Bearer s3cret", b"200"),
            (b"Bearer nope", b"401"),
            (b"Bearer \xc3\xa9", b"401"),
            (b"Bearer \xff", b"401"),
        ]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
            writer.write(b"Authorization: " + header + b"\r\n\r\n")
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
            assert answer.split(b"\r\n")[0].split(b" ")[1] == status, (header, answer)
    finally:
        await runner.cleanup()


async def test_an_npz_that_unpacks_too_large_is_refused(http: Any) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("X.npy", b"\0" * (4 << 20))  # 4 MiB that compresses to a few KiB
    status, _ = await _call(http, "PUT", "/uploads/bomb.npz", data=buffer.getvalue())
    assert status == 201
    status, body = await _call(http, "POST", "/jobs", json={"file": "bomb.npz", "model": "mlp"})
    assert status == 400
    assert "unpacks to" in body["error"]


async def test_shutdown_ends_streams_and_leaves_nothing_running(
    tmp_path: Path, no_task_leaks: None
) -> None:
    runner = web.AppRunner(app_module.create_app(_settings(tmp_path)), handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
        job_id = await _start(http, **LONG)
        await _sse(http, job_id, until_step=2)
        stream = asyncio.ensure_future(_sse(http, job_id))
        await asyncio.sleep(0.05)  # the stream is open
        await asyncio.wait_for(runner.cleanup(), timeout=30)
        events = await asyncio.wait_for(stream, timeout=30)
    assert events[-1]["status"] == "cancelled"
    threads = [t for t in threading.enumerate() if t.name.startswith("asynctrain")]
    assert threads == []


@contextlib.asynccontextmanager
async def _small_buffers(tmp_path: Path, *, cancellation: bool) -> AsyncIterator[Any]:
    """The app served from a listener whose sockets have small send buffers (a few KiB
    fill them, not the 4 MiB loopback allows); yields its runner, not cleaned up."""
    app = app_module.create_app(_settings(tmp_path))
    runner = web.AppRunner(app, handler_cancellation=cancellation)
    await runner.setup()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        await web.SockSite(runner, listener).start()
        yield runner


async def _stalled_stream(http: Any, stalled: socket.socket, port: int, job_id: str) -> None:
    """Open the job's event stream on ``stalled`` and read nothing, until the server's
    writes to it block."""
    await open_unread_stream(stalled, port, job_id)
    await _sse(http, job_id, until_step=STALLED_AFTER)


async def test_a_client_that_reads_nothing_does_not_hold_the_shutdown(
    tmp_path: Path, no_task_leaks: None
) -> None:
    # Its stream's writes block once the socket's buffers are full, and aiohttp waited
    # for that handler twice its shutdown_timeout (60 s each) after the streams had ended.
    async with _small_buffers(tmp_path, cancellation=True) as runner:
        host, port = runner.addresses[0][:2]
        with socket.socket() as stalled:
            async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
                job_id = await _start(http, **LONG)
                await _stalled_stream(http, stalled, port, job_id)
                reader = asyncio.ensure_future(_sse(http, job_id))
                await asyncio.sleep(0.05)  # the reading stream is open too
                started = time.monotonic()
                await asyncio.wait_for(runner.cleanup(), timeout=30)
                took = time.monotonic() - started
                events = await asyncio.wait_for(reader, timeout=30)
    grace = _settings(tmp_path).stream_grace
    assert grace <= took < grace + 3
    assert events[-1]["status"] == "cancelled"  # a client that reads gets the end


async def test_a_stalled_client_that_resets_is_no_server_error(
    tmp_path: Path, no_task_leaks: None, caplog: pytest.LogCaptureFixture
) -> None:
    # Without handler_cancellation (aiohttp's default, as in web.run_app) the write
    # waiting for the client raised ConnectionError("Connection lost"), which is no
    # ConnectionResetError: aiohttp logged "Error handling request" with a traceback.
    async with _small_buffers(tmp_path, cancellation=False) as runner:
        host, port = runner.addresses[0][:2]
        try:
            async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
                job_id = await _start(http, **LONG)
                with socket.socket() as stalled:
                    await _stalled_stream(http, stalled, port, job_id)
                    linger = struct.pack("ii", 1, 0)  # on, 0 s: close() resets the connection
                    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                # closed with a reset; the stream ends and unsubscribes
                job = runner.app[app_module.API].service[job_id]
                await _sse(http, job_id, until_step=job.step + 10)  # still training
                status, _ = await _call(http, "GET", "/health")
                assert status == 200
        finally:
            await runner.cleanup()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors[0].getMessage()


def test_the_script_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    command = [sys.executable, str(SERVICE_DIR / "app.py"), "--port", "0"]
    command += ["--data-dir", str(tmp_path / "uploads"), "--workers", "1"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("listening on http://127.0.0.1:"), line
            with urllib.request.urlopen(line.split()[-1] + "/health", timeout=30) as response:
                assert json.load(response)["status"] == "ok"
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_the_script_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    # SIGTERM (systemd, Docker, Kubernetes) ended the process at once, status -15: jobs
    # not cancelled, event streams cut without their final status.
    command = [sys.executable, str(SERVICE_DIR / "app.py"), "--port", "0"]
    command += ["--data-dir", str(tmp_path / "uploads"), "--workers", "1"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().split()[-1]
            body = json.dumps(LONG).encode()
            request = urllib.request.Request(url + "/jobs", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                job_id = json.load(response)["id"]
            with urllib.request.urlopen(f"{url}/jobs/{job_id}/events", timeout=30) as stream:
                assert stream.readline().startswith(b"event: ")
                process.send_signal(signal.SIGTERM)
                lines = [line.decode().strip() for line in stream if line.strip()]
            assert process.wait(timeout=30) == 0
            assert lines[-2] == "event: status"
            assert json.loads(lines[-1].removeprefix("data: "))["status"] == "cancelled"
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.parametrize("option", [["--workers", "0"], ["--max-running", "0"], ["--port", "x"]])
def test_the_script_refuses_a_bad_setting_in_one_line(tmp_path: Path, option: list[str]) -> None:
    # A setting the TrainingService refuses, or a port in use, ended in a traceback.
    command = [sys.executable, str(SERVICE_DIR / "app.py"), "--port", "0", *option]
    command += ["--data-dir", str(tmp_path / "uploads")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("app.py: error: "), done.stderr


def test_the_script_says_in_one_line_that_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        command = [sys.executable, str(SERVICE_DIR / "app.py"), "--port", port]
        command += ["--data-dir", str(tmp_path / "uploads")]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "address already in use" in done.stderr.splitlines()[-1]


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C as a terminal delivers it, even when this test run
    inherited SIGINT ignored (a background job of a shell without job control)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_a_model_beyond_the_parameter_limit_gets_400(http: Any) -> None:
    # A 64 MB upload of 100 rows of 160,000 features, within every other limit, made an
    # MLP of 512 hidden units: 82 M parameters, 3.6 GB of memory for one job.
    X = np.zeros((20, 2000), np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, X=X, y=np.arange(20) % 2)
    assert (await _call(http, "PUT", "/uploads/wide.npz", data=buffer.getvalue()))[0] == 201
    job = {"file": "wide.npz", "model": "mlp", "hidden": 1024}
    status, body = await _call(http, "POST", "/jobs", json=job)
    assert status == 400
    assert "at most 1000000 per job" in body["error"]
    status, _ = await _call(http, "POST", "/jobs", json={**job, "hidden": 64})
    assert status == 201


async def test_an_upload_to_a_full_disk_is_a_json_507(
    http: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The OSError went through json_errors unmapped: a plain-text 500, "Server got
    # itself in trouble", where every error of the service is a JSON object.
    def full(source: Any, target: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    status, body = await _call(http, "PUT", "/uploads/a.npz", data=b"x" * 1000)
    assert (status, body["status"]) == (507, 507)
    assert "no space left" in body["error"]
    monkeypatch.undo()
    assert not list(await asyncio.to_thread(tmp_path.glob, ".upload-*"))
