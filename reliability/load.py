"""A small HTTP load generator (threads + httpx) for the overload, fault and soak checks.

Closed loop: ``concurrency`` clients each send the next request when the last one returns.
Open loop: requests start at a fixed rate whatever the server does (as real traffic does),
with at most ``max_in_flight`` outstanding; a request that cannot start is counted as dropped.
Every request is bounded in time, and every loop stops by itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Result:
    started_s: float  # since the run began
    latency_s: float
    status: int  # 0: no HTTP response (connection refused, reset, timeout)
    error: str = ""
    retry_after: str | None = None


@dataclass(frozen=True)
class Target:
    url: str
    body: bytes
    headers: dict[str, str]
    timeout_s: float = 30.0


class _Clients(threading.local):
    client: httpx.Client | None = None


def _send(target: Target, clients: _Clients, t0: float) -> Result:
    if clients.client is None:
        clients.client = httpx.Client(timeout=target.timeout_s)
    start = time.monotonic()
    try:
        response = clients.client.post(target.url, content=target.body, headers=target.headers)
    except httpx.HTTPError as exc:
        clients.client.close()
        clients.client = None
        return Result(start - t0, time.monotonic() - start, 0, type(exc).__name__)
    return Result(
        start - t0, time.monotonic() - start, response.status_code, "", response.headers.get("retry-after")
    )


def closed_loop(target: Target, concurrency: int, duration_s: float) -> list[Result]:
    """``concurrency`` clients back to back for ``duration_s``."""
    t0 = time.monotonic()
    results: list[Result] = []
    lock = threading.Lock()
    clients = _Clients()

    def client_loop() -> None:
        while time.monotonic() - t0 < duration_s:
            result = _send(target, clients, t0)
            with lock:
                results.append(result)
        if clients.client is not None:
            clients.client.close()

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + target.timeout_s + 5)
    return sorted(results, key=lambda r: r.started_s)


def open_loop(
    target: Target, rate_per_s: float, duration_s: float, max_in_flight: int = 64
) -> tuple[list[Result], int]:
    """Start requests at ``rate_per_s`` for ``duration_s``; returns (results, dropped)."""
    t0 = time.monotonic()
    clients = _Clients()
    slots = threading.BoundedSemaphore(max_in_flight)
    futures = []
    dropped = 0

    def run() -> Result:
        try:
            return _send(target, clients, t0)
        finally:
            slots.release()

    with ThreadPoolExecutor(max_in_flight) as pool:
        n = 0
        while (due := t0 + n / rate_per_s) < t0 + duration_s:
            time.sleep(max(0.0, due - time.monotonic()))
            n += 1
            if not slots.acquire(blocking=False):
                dropped += 1
                continue
            futures.append(pool.submit(run))
        results = [f.result() for f in futures]
    return sorted(results, key=lambda r: r.started_s), dropped


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def throughput(results: Sequence[Result], status: int = 200) -> float:
    """Responses with ``status`` per second over the span of the results."""
    ok = [r for r in results if r.status == status]
    if len(ok) < 2:
        return 0.0
    span = max(r.started_s + r.latency_s for r in ok) - min(r.started_s for r in ok)
    return len(ok) / span if span > 0 else 0.0
