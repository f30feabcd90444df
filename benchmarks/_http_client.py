"""The service benchmark's HTTP client: paced ``GET`` requests, run in a process of its own.

Only the standard library, and run by path in isolated mode (``python -I <this file> URL
SECONDS``), so that starting it, inside the window being measured, costs milliseconds and
takes no CPU the service would notice. It prints the latencies (ms) as a JSON list.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.parse

RATE = 100  # GET requests per second


def paced_client(url: str, seconds: float, rate: int = RATE) -> list[float]:
    """GET ``url`` ``rate`` times a second for ``seconds`` on one keep-alive connection.

    Latency counts from the moment a request was due, so a stalled server is charged
    for the requests it delayed (no coordinated omission).
    """
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    latencies, start = [], time.perf_counter()
    for i in range(int(seconds * rate)):
        due = start + i / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        connection.request("GET", parts.path)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url} answered {response.status}")
        latencies.append((time.perf_counter() - due) * 1e3)
    connection.close()
    return latencies


if __name__ == "__main__":
    print(json.dumps(paced_client(sys.argv[1], float(sys.argv[2]))))
