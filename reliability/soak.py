"""Soak: drive the server at a fraction of its measured capacity for a set time, then report
errors, latency percentiles over time and the server's memory at the start and the end.

    python -m reliability.soak --duration-s 600                     # the record: 10 minutes, 70%
    python -m reliability.soak --duration-s 30 --warmup-s 10        # a short run
    python -m reliability.soak --model /path/model.onnx --json soak.json

It starts its own server (``python -m app`` on 127.0.0.1, settings from IMGSERVE_* in the
environment or ``--set NAME=VALUE``) so that it can read the process's RSS from /proc. Steps:
measure capacity (closed loop), a 5 s burst that fills the queue (so the largest batches
have run), warm up at the target rate, take RSS, soak at the target
rate (open loop: requests start on schedule whatever the server does), take RSS again.
Exit status 0 only with no errors and RSS growth under ``--max-rss-growth`` (default 5%).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.loadgen import Result, Target, closed_loop, open_loop, percentile, throughput
from harness.server import REPO_ROOT, ServerProcess, settings_env

MB = 1024 * 1024


@dataclass
class Window:
    start_s: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    rss_mb: float


@dataclass
class SoakReport:
    model: str
    capacity_rps: float
    target_rps: float
    load_fraction: float
    warmup_s: float
    duration_s: float
    requests: int
    errors: int
    dropped: int
    error_kinds: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    rss_start_mb: float
    rss_end_mb: float
    rss_peak_mb: float
    rss_growth_pct: float
    gpu_memory: str
    windows: list[Window] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.errors == 0 and self.dropped == 0

    def text(self) -> str:
        lines = [
            f"model {self.model}: capacity {self.capacity_rps:.1f} req/s, "
            f"soak at {self.target_rps:.1f} req/s ({self.load_fraction:.0%}) "
            f"for {self.duration_s:.0f} s after {self.warmup_s:.0f} s warm-up",
            f"requests {self.requests}, errors {self.errors} {self.error_kinds or ''}, not started (client "
            f"saturated) {self.dropped}",
            f"latency ms: p50 {self.p50_ms:.1f}, p90 {self.p90_ms:.1f}, "
            f"p99 {self.p99_ms:.1f}, max {self.max_ms:.1f}",
            f"server RSS: start {self.rss_start_mb:.1f} MB, end {self.rss_end_mb:.1f} MB "
            f"({self.rss_growth_pct:+.2f}%), peak {self.rss_peak_mb:.1f} MB; GPU memory: {self.gpu_memory}",
            "",
            "  t (s)   reqs errors   p50 ms   p90 ms   p99 ms   max ms   RSS MB",
        ]
        for w in self.windows:
            lines.append(
                f"{w.start_s:7.0f} {w.requests:6d} {w.errors:6d} {w.p50_ms:8.1f} {w.p90_ms:8.1f} "
                f"{w.p99_ms:8.1f} {w.max_ms:8.1f} {w.rss_mb:8.1f}"
            )
        return "\n".join(lines)


def photo_jpeg() -> bytes:
    """scikit-image's astronaut (512x512) as a JPEG: a real photo, never a download."""
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def gpu_memory(pid: int) -> str:
    """The process's GPU memory from nvidia-smi, or 'no GPU'."""
    if shutil.which("nvidia-smi") is None:
        return "no GPU"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        return f"nvidia-smi failed: {exc}"
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if fields and fields[0] == str(pid):
            return f"{fields[1]} MiB"
    return "GPU present, process not using it"


class RssSampler(threading.Thread):
    """RSS of one process every ``interval_s``, as (seconds since start, bytes)."""

    def __init__(self, server: ServerProcess, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self.t0 = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.monotonic() - self.t0, self.server.rss()))
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def windows(
    results: list[Result], rss: list[tuple[float, int]], window_s: float, duration_s: float
) -> list[Window]:
    out = []
    start = 0.0
    while start < duration_s - 1e-9:
        chunk = [r for r in results if start <= r.started_s < start + window_s]
        ok = [r.latency_s * 1000 for r in chunk if r.status == 200]
        rss_in = [b for t, b in rss if t < start + window_s]
        out.append(
            Window(
                start_s=start,
                requests=len(chunk),
                errors=sum(r.status != 200 for r in chunk),
                p50_ms=percentile(ok, 50),
                p90_ms=percentile(ok, 90),
                p99_ms=percentile(ok, 99),
                max_ms=max(ok, default=float("nan")),
                rss_mb=(rss_in[-1] if rss_in else float("nan")) / MB,
            )
        )
        start += window_s
    return out


def soak(
    server: ServerProcess,
    target: Target,
    *,
    duration_s: float,
    warmup_s: float,
    load_fraction: float,
    capacity_s: float,
    concurrency: int,
    window_s: float,
    model: str,
    burst_clients: int = 48,
    log: bool = True,
) -> SoakReport:
    say = print if log else (lambda *a, **k: None)
    say(f"measuring capacity: {concurrency} closed-loop clients for {capacity_s:.0f} s ...", flush=True)
    capacity = throughput(closed_loop(target, concurrency, capacity_s))
    if capacity <= 0:
        raise RuntimeError("the server answered no request with 200 while measuring capacity")
    rate = capacity * load_fraction
    max_in_flight = max(64, concurrency * 8)  # room for stalls of a second or two at the target rate
    say(f"capacity {capacity:.1f} req/s; burst of {burst_clients} clients for 5 s, then warm-up at "
        f"{rate:.1f} req/s for {warmup_s:.0f} s ...", flush=True)  # fmt: skip
    # The burst fills the queue so that the largest batches run (and the model runtime's
    # memory arena reaches its size) before the RSS that growth is measured from.
    closed_loop(target, burst_clients, 5.0)
    open_loop(target, rate, warmup_s, max_in_flight)
    time.sleep(1.0)
    rss_start = server.rss()
    say(f"soak at {rate:.1f} req/s for {duration_s:.0f} s (RSS {rss_start / MB:.1f} MB) ...", flush=True)
    sampler = RssSampler(server)
    sampler.start()
    results, dropped = open_loop(target, rate, duration_s, max_in_flight)
    time.sleep(1.0)
    sampler.stop()
    rss_end = server.rss()
    ok = [r.latency_s * 1000 for r in results if r.status == 200]
    kinds: dict[str, int] = {}
    for r in results:
        if r.status != 200:
            key = str(r.status) if r.status else r.error
            kinds[key] = kinds.get(key, 0) + 1
    return SoakReport(
        model=model,
        capacity_rps=capacity,
        target_rps=rate,
        load_fraction=load_fraction,
        warmup_s=warmup_s,
        duration_s=duration_s,
        requests=len(results),
        errors=sum(kinds.values()),
        dropped=dropped,
        error_kinds=kinds,
        p50_ms=percentile(ok, 50),
        p90_ms=percentile(ok, 90),
        p99_ms=percentile(ok, 99),
        max_ms=max(ok, default=float("nan")),
        rss_start_mb=rss_start / MB,
        rss_end_mb=rss_end / MB,
        rss_peak_mb=max([b for _, b in sampler.samples] + [rss_end]) / MB,
        rss_growth_pct=100.0 * (rss_end - rss_start) / rss_start,
        gpu_memory=gpu_memory(server.pid),
        windows=windows(results, sampler.samples, window_s, duration_s),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m reliability.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "default" / "model.onnx")
    parser.add_argument(
        "--duration-s", type=float, default=600.0, help="soak time after warm-up (default 600)"
    )
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity (default 0.7)")
    parser.add_argument("--capacity-s", type=float, default=15.0, help="capacity measurement time")
    parser.add_argument("--concurrency", type=int, default=8, help="clients for the capacity measurement")
    parser.add_argument(
        "--window-s", type=float, default=60.0, help="report latency per window of this length"
    )
    parser.add_argument("--max-rss-growth", type=float, default=5.0, help="percent (default 5)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="an IMGSERVE_ setting"
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {}
    for item in args.set:
        name, _, value = item.partition("=")
        settings[name.upper().removeprefix("IMGSERVE_")] = value
    env = settings_env(args.model, settings)
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(env, Path(tmp) / "server.log") as server:
        target = Target(f"{server.base_url}/predict", [(photo_jpeg(), "image/jpeg")])
        report = soak(
            server,
            target,
            duration_s=args.duration_s,
            warmup_s=args.warmup_s,
            load_fraction=args.load,
            capacity_s=args.capacity_s,
            concurrency=args.concurrency,
            window_s=args.window_s,
            model=str(args.model),
        )
    print()
    print(report.text())
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    grew = report.rss_growth_pct >= args.max_rss_growth
    verdict = "PASS" if report.passed and not grew else "FAIL"
    print(f"\n{verdict}: {report.errors} errors, {report.dropped} not started, RSS growth "
          f"{report.rss_growth_pct:+.2f}% (limit {args.max_rss_growth}%)")  # fmt: skip
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
