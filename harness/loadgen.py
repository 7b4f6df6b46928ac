"""The HTTP/1.1 load generator of the tests, the benchmarks and the soak command.

asyncio (uvloop when installed) on raw sockets with pre-built requests: each request is one
byte string, each response is read as status line + headers + Content-Length bytes. That
costs about 50 CPU-µs a request, an eighth of an httpx client on threads (measured side by
side against the same server), so on a small machine the server, not the client, sets the
figures. Not wrk: the GPU machines have no package manager, and one tool everywhere keeps the
figures comparable.

Two loops, each bounded in time:

- closed loop: ``concurrency`` keep-alive connections, each sends its next request as soon as
  the previous answer arrives;
- open loop: requests fall due on a schedule of ``rate_per_s`` made before the load starts,
  whatever the server does (as real traffic comes): evenly spaced (``uniform``) or with
  exponential gaps (``poisson``: independent users, bursts included; seeded, so repeatable).
  They go out on as many connections as needed up to ``max_in_flight``; a request due while
  that many are outstanding is not sent and is counted as dropped. Latency counts from the
  moment a request was due, not from when it was written, so neither a stalled server nor a
  late client can hide queueing (no coordinated omission).

In process, ``closed_loop`` and ``open_loop`` return one ``Result`` per request. As a command,
``python -m harness.loadgen --workload DIR --port 8000 --connections 32`` (the benchmarks run
several, pinned to their own cores), it reads a saved workload and writes JSON. Every process
gets the same absolute ``--t0`` (CLOCK_MONOTONIC is system-wide): load starts at t0, and only
requests that *complete* inside [t0 + warmup, t0 + warmup + duration] count, so the caller can
sample the server's CPU time and metrics at the same two instants.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit

T = TypeVar("T")
ERROR_BODY_CHARS = 300  # enough of a non-200 body to say what went wrong
# A connection idle longer than this is replaced before use. Below the server's keep-alive
# timeout (IMGSERVE_KEEP_ALIVE_TIMEOUT_S, 5 s by default), so a request is never written just
# as the server closes the connection: that race ends in a reset that is the client's doing.
MAX_IDLE_S = 2.0


# How the requests of an open loop fall due: evenly spaced, or a Poisson process
Arrivals = Literal["uniform", "poisson"]

# A request body: (bytes, content type), or (bytes, content type, extra headers).
Body = tuple[bytes, str] | tuple[bytes, str, Mapping[str, str]]


@dataclass(frozen=True)
class Target:
    """Where the load goes and what it sends: POSTs to ``url``, the ``bodies`` in turn, each
    bounded by ``timeout_s`` from connect to the last byte of the answer."""

    url: str
    bodies: Sequence[Body]
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Result:
    """One request. ``status`` 0 means no HTTP response; ``error`` then says why: refused (no
    connection), closed (the server closed it before a whole answer), reset, timeout, or
    bad_response (one this generator cannot frame)."""

    started_s: float  # since the load began; in the open loop, when the request was due
    latency_s: float
    status: int
    error: str = ""
    retry_after: str | None = None
    error_body: str = ""  # the start of a non-200 answer's body
    # open loop: how late the generator itself sent it (its own lag, part of ``latency_s``)
    send_lag_s: float = 0.0

    @property
    def finished_s(self) -> float:
        return self.started_s + self.latency_s


class ResponseError(Exception):
    """An answer without Content-Length: the only framing this generator reads."""


# Checked in order: what each failure means for a request.
_FAILURES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (TimeoutError, "timeout"),
    (ConnectionRefusedError, "refused"),
    (asyncio.IncompleteReadError, "closed"),
    ((ConnectionResetError, BrokenPipeError), "reset"),
    ((ResponseError, ValueError, asyncio.LimitOverrunError), "bad_response"),
)


def failure_kind(exc: BaseException) -> str:
    return next((kind for types, kind in _FAILURES if isinstance(exc, types)), type(exc).__name__)


def build_requests(target: Target) -> list[bytes]:
    """Every request of ``target`` as the bytes that go on the wire."""
    url = urlsplit(target.url)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    requests = []
    for body, content_type, *extra in target.bodies:
        headers = "".join(f"{name}: {value}\r\n" for name, value in (extra[0] if extra else {}).items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUser-Agent: harness-loadgen\r\n"
            f"Accept: application/json\r\nContent-Type: {content_type}\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests


def header(head: bytes, name: str) -> str | None:
    """The value of header ``name`` in a response head, or None."""
    match = re.search(rb"\r\n" + re.escape(name.encode()) + rb":[ \t]*([^\r]*)", head, re.IGNORECASE)
    return match.group(1).decode("latin-1").strip() if match else None


class Connection:
    """One keep-alive connection, opened on first use and again after the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.idle_since = 0.0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def exchange(self, request: bytes) -> tuple[int, bytes, bytes]:
        """Send one request; (status, head, body) of the answer."""
        stale = time.monotonic() - self.idle_since > MAX_IDLE_S
        if self.reader is None or self.writer is None or stale or self.reader.at_eof():
            self.close()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        index = lower.find(b"\r\ncontent-length:")
        if index < 0:
            raise ResponseError("response without Content-Length")
        length = int(lower[index + 17 : lower.find(b"\r\n", index + 2)])
        body = await self.reader.readexactly(length) if length else b""
        if b"\r\nconnection: close" in lower:
            self.close()
        self.idle_since = time.monotonic()
        return int(head[9:12]), head, body


async def _send(conn: Connection, request: bytes, started: float, t0: float, timeout_s: float) -> Result:
    lag_s = time.monotonic() - started
    try:
        async with asyncio.timeout(timeout_s):
            status, head, body = await conn.exchange(request)
    except (OSError, EOFError, ValueError, ResponseError, asyncio.LimitOverrunError) as exc:
        conn.close()
        return Result(started - t0, time.monotonic() - started, 0, failure_kind(exc), send_lag_s=lag_s)
    latency_s = time.monotonic() - started
    if status == 200:
        return Result(started - t0, latency_s, 200, send_lag_s=lag_s)
    error_body = body[:ERROR_BODY_CHARS].decode(errors="replace")
    return Result(started - t0, latency_s, status, "", header(head, "retry-after"), error_body, lag_s)


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"the load generator speaks plain HTTP to host:port; got {url!r}")
    return parts.hostname, parts.port or 80


async def _closed_loop(
    target: Target, concurrency: int, duration_s: float, t0: float, offset: int
) -> list[Result]:
    requests, (host, port) = build_requests(target), _address(target.url)
    results: list[Result] = []

    async def client(index: int) -> None:
        conn = Connection(host, port)
        n = offset + index
        await asyncio.sleep(max(0.0, t0 - time.monotonic()))
        while (started := time.monotonic()) < t0 + duration_s:
            results.append(await _send(conn, requests[n % len(requests)], started, t0, target.timeout_s))
            n += concurrency
        conn.close()

    await asyncio.gather(*(client(index) for index in range(concurrency)))
    return results


def arrival_offsets(
    rate_per_s: float, duration_s: float, arrivals: Arrivals = "uniform", seed: int = 0
) -> list[float]:
    """When each request of an open loop falls due, in seconds from its start, all before
    ``duration_s``: every 1/rate s from 0 (``uniform``), or after gaps drawn from an exponential
    distribution of mean 1/rate (``poisson``, from a generator seeded with ``seed``)."""
    if rate_per_s <= 0:
        raise ValueError(f"an open loop needs a rate above 0 requests/s; got {rate_per_s}")
    if arrivals not in get_args(Arrivals):
        raise ValueError(f"arrivals must be one of {get_args(Arrivals)}; got {arrivals!r}")
    if arrivals == "uniform":
        return [n / rate_per_s for n in range(math.ceil(rate_per_s * duration_s))]
    rng, offsets = random.Random(seed), []
    due = rng.expovariate(rate_per_s)
    while due < duration_s:
        offsets.append(due)
        due += rng.expovariate(rate_per_s)
    return offsets


async def _open_loop(
    target: Target, offsets: Sequence[float], max_in_flight: int, t0: float, offset: int
) -> tuple[list[Result], int]:
    requests, (host, port) = build_requests(target), _address(target.url)
    results: list[Result] = []
    idle: list[Connection] = []
    in_flight: set[asyncio.Task[None]] = set()
    dropped = 0

    async def send(request: bytes, due: float) -> None:
        conn = idle.pop() if idle else Connection(host, port)
        results.append(await _send(conn, request, due, t0, target.timeout_s))
        idle.append(conn)

    for n, due in enumerate(t0 + x for x in offsets):
        # sleep(0) too: when behind schedule the answers still get read
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if len(in_flight) >= max_in_flight:
            dropped += 1
        else:
            task = asyncio.create_task(send(requests[(offset + n) % len(requests)], due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight, timeout=target.timeout_s + 1)
    for conn in idle:
        conn.close()
    return results, dropped


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """On uvloop when it is installed (less CPU per request), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def closed_loop(
    target: Target, concurrency: int, duration_s: float, *, t0: float | None = None, offset: int = 0
) -> list[Result]:
    """``concurrency`` clients back to back for ``duration_s`` from ``t0`` (an absolute
    ``time.monotonic()``, default now); the results in order of start. ``offset`` is the first
    body's index (processes sharing one workload start at different bodies)."""
    start = time.monotonic() if t0 is None else t0
    results = _run(_closed_loop(target, concurrency, duration_s, start, offset))
    return sorted(results, key=lambda r: r.started_s)


def open_loop(
    target: Target,
    rate_per_s: float,
    duration_s: float,
    max_in_flight: int = 64,
    *,
    t0: float | None = None,
    offset: int = 0,
    arrivals: Arrivals = "uniform",
    seed: int = 0,
) -> tuple[list[Result], int]:
    """Requests due at ``rate_per_s`` (``arrival_offsets``) for ``duration_s`` from ``t0``
    (default now); returns (the results in order of due time, each timed from it, and how many
    were dropped because ``max_in_flight`` were out)."""
    start = time.monotonic() if t0 is None else t0
    offsets = arrival_offsets(rate_per_s, duration_s, arrivals, seed)
    results, dropped = _run(_open_loop(target, offsets, max_in_flight, start, offset))
    return sorted(results, key=lambda r: r.started_s), dropped


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least ``q`` percent of the values
    at or below it, i.e. the ceil(q/100 x n)-th smallest (the smallest for q = 0); nan for no
    values. Every percentile the harness, the benchmarks and the soak report is this one."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    # rounded first, so that float noise (99.9 / 100 x 1000 = 999.0000000000001) cannot push
    # the rank past an exact one
    rank = math.ceil(round(q / 100 * len(ordered), 9))
    return ordered[min(len(ordered), max(1, rank)) - 1]


def throughput(results: Sequence[Result], status: int = 200) -> float:
    """Answers with ``status`` per second over the span of those answers."""
    ok = [r for r in results if r.status == status]
    if len(ok) < 2:
        return 0.0
    span = max(r.finished_s for r in ok) - min(r.started_s for r in ok)
    return len(ok) / span if span > 0 else 0.0


def summarise(
    latencies_s: Sequence[float], errors: dict[str, int], duration_s: float, images_per_request: int
) -> dict[str, Any]:
    """The figures of one measurement window: answers and images per second, latency in ms
    (percentiles, mean, max) of the 200s, and the failures by kind."""
    ok = len(latencies_s)
    return {
        "requests_ok": ok,
        "images_ok": ok * images_per_request,
        "requests_per_s": ok / duration_s,
        "images_per_s": ok * images_per_request / duration_s,
        "latency_ms": {f"p{q:g}": 1000 * percentile(latencies_s, q) for q in (50, 90, 95, 99, 99.9)}
        | {
            "mean": 1000 * sum(latencies_s) / ok if ok else float("nan"),
            "max": 1000 * max(latencies_s, default=float("nan")),
        },
        "errors": errors,
        "error_count": sum(errors.values()),
    }


# --- the command -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SavedWorkload:
    """Request bodies saved in a folder for load generator processes: ``workload.json`` names
    the workload, its images per request, and each body's file and content type."""

    name: str
    images_per_request: int
    bodies: list[tuple[bytes, str]]


def save_workload(
    folder: Path, name: str, images_per_request: int, bodies: Sequence[tuple[bytes, str]]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, (body, content_type) in enumerate(bodies):
        (folder / f"body{index}.bin").write_bytes(body)
        files.append({"file": f"body{index}.bin", "content_type": content_type})
    meta = {"name": name, "images_per_request": images_per_request, "bodies": files}
    (folder / "workload.json").write_text(json.dumps(meta))


def load_workload(folder: Path) -> SavedWorkload:
    meta = json.loads((folder / "workload.json").read_text())
    bodies = [((folder / b["file"]).read_bytes(), b["content_type"]) for b in meta["bodies"]]
    return SavedWorkload(meta["name"], meta["images_per_request"], bodies)


def measure(args: argparse.Namespace, workload: SavedWorkload) -> dict[str, Any]:
    """Run the loop the arguments ask for; the window's figures, latencies and client cost."""
    target = Target(f"http://{args.host}:{args.port}{args.path}", workload.bodies, args.timeout_s)
    total_s = args.warmup + args.duration
    cpu_before, wall_before = os.times(), time.monotonic()
    if args.rate:
        results, dropped = open_loop(
            target,
            args.rate,
            total_s,
            args.max_in_flight,
            t0=args.t0,
            offset=args.offset,
            arrivals=args.arrivals,
            seed=args.seed,
        )
    else:
        results, dropped = closed_loop(target, args.connections, total_s, t0=args.t0, offset=args.offset), 0
    cpu_after = os.times()
    window = [r for r in results if args.warmup <= r.finished_s < total_s]
    errors = Counter(r.error or f"http_{r.status}" for r in window if r.status != 200)
    if dropped:
        errors["dropped"] = dropped  # over the whole run: a dropped request has no finish time
    latencies_s = [r.latency_s for r in window if r.status == 200]
    shed = [r for r in window if r.status == 503]
    return summarise(latencies_s, dict(errors), args.duration, workload.images_per_request) | {
        "workload": workload.name,
        "images_per_request": workload.images_per_request,
        "mode": "open" if args.rate else "closed",
        "connections": args.connections,
        "rate": args.rate,
        "arrivals": args.arrivals if args.rate else None,
        "duration_s": args.duration,
        "requests_sent": len(results),
        "sample_error_body": next((r.error_body for r in window if r.error_body), ""),
        "client_cpu_s": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
        "client_wall_s": time.monotonic() - wall_before,
        "latencies_s": latencies_s,
        # load shedding: how fast a refused client learns it, and whether it is told when to retry
        "shed_latencies_s": [r.latency_s for r in shed],
        "shed_with_retry_after": sum(1 for r in shed if r.retry_after is not None),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.loadgen", description="HTTP/1.1 load generator")
    parser.add_argument("--workload", type=Path, required=True, help="a folder written by save_workload")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--connections", type=int, default=1, help="closed loop: fixed concurrency")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="open loop: requests/s (overrides --connections)"
    )
    parser.add_argument("--max-in-flight", type=int, default=512, help="open loop: most requests out")
    parser.add_argument(
        "--arrivals", choices=get_args(Arrivals), default="uniform", help="open loop: the schedule's gaps"
    )
    parser.add_argument("--seed", type=int, default=0, help="open loop: the Poisson schedule's seed")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per request")
    parser.add_argument("--t0", type=float, default=0.0, help="absolute time.monotonic() to start at")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--offset", type=int, default=0, help="first body index (spreads processes)")
    parser.add_argument("--out", type=Path, help="write the JSON result here (default: stdout)")
    args = parser.parse_args(argv)
    if args.t0 == 0.0:
        args.t0 = time.monotonic() + 0.2
    result = measure(args, load_workload(args.workload))
    if args.out:
        args.out.write_text(json.dumps(result))
    else:
        latencies = result.pop("latencies_s")
        result.pop("shed_latencies_s")
        print(json.dumps(result, indent=2), f"\n{len(latencies)} latencies")


if __name__ == "__main__":
    main()
