"""A small HTTP load generator (threads + httpx) for the overload, fault and soak checks.

Closed loop: ``concurrency`` clients each send the next request when the last one returns.
Open loop: requests start at a fixed rate whatever the server does (as real traffic does),
with at most ``max_in_flight`` outstanding; a request that cannot start is counted as dropped.
Every request is bounded in time, and every loop stops by itself.
"""

from __future__ import annotations

import ssl
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


# One TLS context for every client: building one per client (httpx's default) loads the CA
# bundle each time, tens of milliseconds of CPU that would stall the first requests of a run.
_TLS_CONTEXT = ssl.create_default_context()


class _Clients:
    """One keep-alive client per thread; ``close_all`` closes every one of them."""

    def __init__(self, timeout_s: float) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[httpx.Client] = []
        self._timeout_s = timeout_s

    def get(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(timeout=self._timeout_s, verify=_TLS_CONTEXT)
            self._local.client = client
            with self._lock:
                self._all.append(client)
        return client

    def reset(self) -> None:
        """Drop this thread's client (after a transport error) and start afresh next time."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None

    def close_all(self) -> None:
        with self._lock:
            for client in self._all:
                client.close()


def _send(target: Target, clients: _Clients, t0: float) -> Result:
    client = clients.get()
    start = time.monotonic()
    try:
        response = client.post(target.url, content=target.body, headers=target.headers)
    except httpx.HTTPError as exc:
        clients.reset()
        return Result(start - t0, time.monotonic() - start, 0, type(exc).__name__)
    return Result(
        start - t0, time.monotonic() - start, response.status_code, "", response.headers.get("retry-after")
    )


def closed_loop(target: Target, concurrency: int, duration_s: float) -> list[Result]:
    """``concurrency`` clients back to back for ``duration_s``."""
    t0 = time.monotonic()
    results: list[Result] = []
    lock = threading.Lock()
    clients = _Clients(target.timeout_s)

    def client_loop() -> None:
        while time.monotonic() - t0 < duration_s:
            result = _send(target, clients, t0)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + target.timeout_s + 5)
    clients.close_all()
    return sorted(results, key=lambda r: r.started_s)


def open_loop(
    target: Target, rate_per_s: float, duration_s: float, max_in_flight: int = 64
) -> tuple[list[Result], int]:
    """Start requests at ``rate_per_s`` for ``duration_s``; returns (results, dropped)."""
    t0 = time.monotonic()
    clients = _Clients(target.timeout_s)
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
    clients.close_all()
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
