"""Reading Server-Sent Events from the example services, whatever the HTTP client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import Any


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
