"""What the flood tests of tests/edge measure besides the answers: /healthz latencies, and the
CPU time the server's event loop spent (its main thread's, from /proc: unlike wall time, the
machine's other work does not change it)."""

from __future__ import annotations

import time

import httpx

from harness.server import ServerProcess, cpu_seconds


def healthz_latencies(base_url: str, seconds: float, pause_s: float = 0.01) -> list[float]:
    """/healthz one after another for ``seconds``; every one must answer 200."""
    latencies = []
    with httpx.Client(base_url=base_url, timeout=10) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(pause_s)
    return latencies


def event_loop_cpu_s(server: ServerProcess) -> float:
    """CPU seconds of the server's main thread, where uvicorn runs the event loop."""
    return cpu_seconds(server.pid, server.pid)
