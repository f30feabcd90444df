"""Reading Server-Sent Events from the example services, whatever the HTTP client."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterable
from typing import Any

STALLED_AFTER = 1500
"""Step events after which a stream nobody reads has filled buffers of ``SMALL_BUFFER``."""

SMALL_BUFFER = 4096
"""Bytes of a socket buffer that a few KiB fill (loopback lets them grow to 4 MiB)."""


async def open_unread_stream(stalled: socket.socket, port: int, job_id: str) -> None:
    """Ask the server on ``port`` for the job's every event on ``stalled``, a client with
    a small receive buffer that will read nothing."""
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    stalled.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(stalled, ("127.0.0.1", port))
    request = f"GET /jobs/{job_id}/events?rate=all HTTP/1.1\r\nHost: x\r\n\r\n"
    await loop.sock_sendall(stalled, request.encode())


async def read_events(
    lines: AsyncIterable[str | bytes], *, until_step: int | None = None
) -> list[dict[str, Any]]:
    """Each ``event:``/``data:`` pair as ``{"event": kind, **data}``, to the stream's end
    or the first event at step ``until_step`` or later."""
    events: list[dict[str, Any]] = []
    kind = ""
    async for raw in lines:
        line = (raw.decode() if isinstance(raw, bytes) else raw).rstrip("\n")
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append({"event": kind, **json.loads(line.removeprefix("data: "))})
            if until_step is not None and events[-1].get("step", -1) >= until_step:
                break
    return events
