"""A lean HTTP/1.1 load generator: asyncio (uvloop when installed), raw sockets, pre-built requests.

Why not wrk: the GPU machines have no package manager access, and one tool everywhere keeps the
figures comparable. Why not httpx/aiohttp: their per-request cost (header objects, URL parsing)
is several times ours. Each request is a pre-built byte string; each response is read as
status line + headers + Content-Length bytes. The generator measures its own CPU time, so its
cost per request is known and reported beside the server's.

Two modes:

- closed loop (``--connections N``): N keep-alive connections, each sends its next request as
  soon as the previous answer arrives. Concurrency is exactly N.
- open loop (``--rate R``): requests start on a fixed schedule of R per second whatever the
  server does, on as many connections as needed (up to ``--max-connections``); latency is
  counted from the scheduled start, so a stalled server cannot hide its queueing
  (no coordinated omission).

Timing: every process gets the same absolute ``--t0`` (CLOCK_MONOTONIC is system-wide). Load
starts at t0; only requests that *complete* inside [t0 + warmup, t0 + warmup + duration] are
recorded; the orchestrator samples the server's CPU and metrics at the same two instants.

Run standalone: ``python -m bench.loadgen --workload DIR --port 8000 --connections 32``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Workload:
    """Request bodies as ``bench.workloads.Workload.to_json`` wrote them (no NumPy/Pillow import here)."""

    name: str
    images_per_request: int
    bodies: list[tuple[bytes, str]]


def load_workload(path: Path) -> Workload:
    meta = json.loads((path / "workload.json").read_text())
    bodies = [((path / b["file"]).read_bytes(), b["content_type"]) for b in meta["bodies"]]
    return Workload(meta["name"], meta["images_per_request"], bodies)


def build_request(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-loadgen\r\n"
        f"Accept: application/json\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class ResponseError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, keep_alive) of one response; raises on anything but Content-Length framing."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    keep_alive = b"connection: close" not in lower
    index = lower.find(b"content-length:")
    if index < 0:
        raise ResponseError("response without Content-Length")
    end = lower.find(b"\r\n", index)
    length = int(lower[index + 15 : end])
    body = await reader.readexactly(length) if length else b""
    return status, body, keep_alive


@dataclass
class Recorder:
    window_start: float
    window_end: float
    images_per_request: int
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    sample_error_body: str = ""

    def done(self, started: float, finished: float, status: int, body: bytes) -> None:
        if not self.window_start <= finished < self.window_end:
            return
        if status == 200:
            self.latencies_s.append(finished - started)
        else:
            self.errors[f"http_{status}"] += 1
            if not self.sample_error_body:
                self.sample_error_body = body[:300].decode(errors="replace")

    def failed(self, kind: str, finished: float) -> None:
        if self.window_start <= finished < self.window_end:
            self.errors[kind] += 1


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(payload)
        status, body, keep_alive = await asyncio.wait_for(read_response(self.reader), REQUEST_TIMEOUT_S)
        if not keep_alive:
            self.close()
        return status, body


async def _one(conn: Connection, payload: bytes, started: float, rec: Recorder) -> None:
    try:
        status, body = await conn.request(payload)
    except TimeoutError:
        conn.close()
        rec.failed("timeout", time.monotonic())
        return
    except (OSError, asyncio.IncompleteReadError, ResponseError, ValueError):
        conn.close()
        rec.failed("connection", time.monotonic())
        return
    rec.done(started, time.monotonic(), status, body)


async def closed_loop(
    host: str, port: int, payloads: list[bytes], connections: int, t0: float, rec: Recorder, offset: int
) -> None:
    conns = [Connection(host, port) for _ in range(connections)]
    await asyncio.gather(*(c.open() for c in conns))
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))

    async def worker(index: int, conn: Connection) -> None:
        n = offset + index
        while True:
            started = time.monotonic()
            if started >= rec.window_end:
                return
            rec.sent += 1
            await _one(conn, payloads[n % len(payloads)], started, rec)
            n += connections

    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    for conn in conns:
        conn.close()


async def open_loop(
    host: str, port: int, payloads: list[bytes], rate: float, max_connections: int, t0: float, rec: Recorder
) -> None:
    idle: list[Connection] = []
    opened = 0
    slot_free = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def send(payload: bytes, scheduled: float) -> None:
        nonlocal opened
        while not idle and opened >= max_connections:
            slot_free.clear()
            await slot_free.wait()
        if idle:
            conn = idle.pop()
        else:
            opened += 1
            conn = Connection(host, port)
        await _one(conn, payload, scheduled, rec)
        idle.append(conn)
        slot_free.set()

    n = 0
    while True:
        scheduled = t0 + n / rate
        if scheduled >= rec.window_end:
            break
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        rec.sent += 1
        task = asyncio.create_task(send(payloads[n % len(payloads)], scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S)
    for conn in idle:
        conn.close()


def percentile_ms(sorted_latencies: list[float], q: float) -> float:
    if not sorted_latencies:
        return float("nan")
    index = min(len(sorted_latencies) - 1, max(0, round(q / 100 * len(sorted_latencies)) - 1))
    return sorted_latencies[index] * 1000


def summarise(rec: Recorder, duration_s: float, images_per_request: int) -> dict[str, object]:
    lat = sorted(rec.latencies_s)
    ok = len(lat)
    return {
        "requests_ok": ok,
        "images_ok": ok * images_per_request,
        "requests_per_s": ok / duration_s,
        "images_per_s": ok * images_per_request / duration_s,
        "latency_ms": {f"p{q}": percentile_ms(lat, q) for q in (50, 90, 95, 99, 99.9)}
        | {
            "mean": 1000 * sum(lat) / ok if ok else float("nan"),
            "max": lat[-1] * 1000 if lat else float("nan"),
        },
        "errors": dict(rec.errors),
        "error_count": sum(rec.errors.values()),
        "sample_error_body": rec.sample_error_body,
    }


def run(args: argparse.Namespace, workload: Workload) -> dict[str, object]:
    payloads = [build_request(args.host, args.port, args.path, b, ct) for b, ct in workload.bodies]
    window_start = args.t0 + args.warmup
    rec = Recorder(window_start, window_start + args.duration, workload.images_per_request)
    cpu_before = os.times()
    if args.rate:
        coro = open_loop(args.host, args.port, payloads, args.rate, args.max_connections, args.t0, rec)
    else:
        coro = closed_loop(args.host, args.port, payloads, args.connections, args.t0, rec, args.offset)
    wall_before = time.monotonic()
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)
    cpu_after = os.times()
    cpu_s = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    result = summarise(rec, args.duration, workload.images_per_request)
    result |= {
        "workload": workload.name,
        "images_per_request": workload.images_per_request,
        "mode": "open" if args.rate else "closed",
        "connections": args.connections,
        "rate": args.rate,
        "duration_s": args.duration,
        "requests_sent": rec.sent,
        "client_cpu_s": cpu_s,
        "client_wall_s": time.monotonic() - wall_before,
        "latencies_s": rec.latencies_s,
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="lean HTTP/1.1 load generator")
    parser.add_argument("--workload", type=Path, required=True, help="folder written by Workload.to_json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--connections", type=int, default=1, help="closed loop: fixed concurrency")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="open loop: requests/s (overrides --connections)"
    )
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--t0", type=float, default=0.0, help="absolute time.monotonic() to start at")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--offset", type=int, default=0, help="first body index (spreads processes)")
    parser.add_argument("--out", type=Path, help="write the JSON result here (default: stdout)")
    args = parser.parse_args(argv)
    if args.t0 == 0.0:
        args.t0 = time.monotonic() + 0.2
    result = run(args, load_workload(args.workload))
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text)
    else:
        latencies = result.pop("latencies_s")
        print(json.dumps(result, indent=2), f"\n{len(latencies)} latencies", file=sys.stdout)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
