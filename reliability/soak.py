"""Soak: drive the server at a fraction of its measured capacity for a set time, then report
errors, latency over time, the server's memory, and for every window what the machine did:
so that a slow minute can be told apart as the server's own or the host's.

    python -m reliability.soak --duration-s 600                     # the record: 10 minutes
    python -m reliability.soak --duration-s 60 --window-s 10        # a short run
    python -m reliability.soak --model /path/model.onnx --json soak.json

It starts its own server (``python -m app`` on 127.0.0.1, settings from IMGSERVE_* in the
environment or ``--set NAME=VALUE``) so that it can read the process's CPU time and RSS from
/proc. Steps: measure capacity (closed loop), a 5 s burst that fills the queue (so the largest
batches have run), warm up at the target rate, take RSS, soak at the target rate (open loop:
requests fall due on schedule whatever the server does), take RSS again.

Every second it samples the host's CPU (/proc/stat: busy cores and steal), the server's and
its own (the load generator's) CPU time and the server's RSS; every few seconds the server's
own stall metrics (event-loop lag, garbage-collection pauses). Each request also records how
late the load generator sent it. A window is *slow* when its p90 is over twice that of the
run's good windows (the lower quartile of the windows' p90s) and 20 ms more. A slow window is
the host's when other processes took a quarter of a core more than in the median window, or
took a quarter of a core while the host's CPUs were 90% busy (the server could get no more),
when the hypervisor stole 5% or more, or when the load generator sent its requests late (p99
20 ms or more); it is the server's when, without any of those, its event loop lagged 100 ms or
more or garbage collection paused it for 100 ms or more in the window (a process starved of
CPU lags too: with the host to blame, its lag is a symptom); else it is unexplained.

Exit status: 0 (PASS) with no error, every request started, RSS growth under
``--max-rss-growth`` (default 5%) and no slow window; 2 (HOST NOISE) when all of that holds but
for slow windows that the host explains (the run says nothing about the server there: run it
again on a quieter machine); 1 (FAIL) otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from harness.loadgen import Result, Target, closed_loop, open_loop, percentile, throughput
from harness.metrics import read_metrics
from harness.server import REPO_ROOT, ServerProcess, rss_bytes, settings_env

MB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# What makes a window slow, and what explains one (see the module's docstring)
SLOW_P90_FACTOR = 2.0
SLOW_P90_MARGIN_MS = 20.0
OTHER_CORES_MARGIN = 0.25
HOST_BUSY_SHARE = 0.9
STEAL_PCT = 5.0
SEND_LAG_P99_MS = 20.0
SERVER_STALL_MS = 100.0
MAX_IN_FLIGHT = 512
LAG_METRIC = "imgserve_event_loop_lag_seconds"
GC_METRIC = "imgserve_gc_pause_seconds"


@dataclass
class Window:
    start_s: float
    requests: int
    errors: int
    not_started: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    rss_mb: float
    server_cores: float  # CPU time the server used, per second of the window
    client_cores: float  # ... the load generator (this process)
    other_cores: float  # ... every other process on the host
    steal_pct: float  # of the host's CPU time, taken by the hypervisor
    send_lag_p99_ms: float  # how late the load generator sent its requests
    loop_lag_max_ms: float  # the server's worst event-loop lag (the histogram bucket it fell in)
    gc_pause_ms: float  # the server's garbage collections, in total
    verdict: str = "ok"  # ok, or "slow: " and what explains it ("unexplained" when nothing does)


@dataclass
class Second:
    """One sample of the machine: seconds since the soak began and CPU per second since the last."""

    t_s: float
    server_cores: float
    client_cores: float
    other_cores: float
    steal_pct: float
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
    host_cores: int = 0
    windows: list[Window] = field(default_factory=list)
    seconds: list[Second] = field(default_factory=list)

    @property
    def slow_windows(self) -> list[Window]:
        return [w for w in self.windows if w.verdict != "ok"]

    @property
    def unexplained(self) -> list[Window]:
        """Slow windows that the host does not explain: the server's own, or nobody's."""
        return [w for w in self.windows if w.verdict.startswith(("slow: server", "slow: unexplained"))]

    def verdict(self, max_rss_growth_pct: float) -> str:
        """PASS, HOST NOISE or FAIL (see the module's docstring)."""
        if self.errors or self.dropped or self.unexplained or self.rss_growth_pct >= max_rss_growth_pct:
            return "FAIL"
        return "HOST NOISE" if self.slow_windows else "PASS"

    def text(self) -> str:
        lines = [
            f"model {self.model}: capacity {self.capacity_rps:.1f} req/s, "
            f"soak at {self.target_rps:.1f} req/s ({self.load_fraction:.0%}) "
            f"for {self.duration_s:.0f} s after {self.warmup_s:.0f} s warm-up; host: {self.host_cores} cores",
            f"requests {self.requests}, errors {self.errors} {self.error_kinds or ''}, not started (client "
            f"saturated) {self.dropped}",
            f"latency ms: p50 {self.p50_ms:.1f}, p90 {self.p90_ms:.1f}, "
            f"p99 {self.p99_ms:.1f}, max {self.max_ms:.1f}",
            f"server RSS: start {self.rss_start_mb:.1f} MB, end {self.rss_end_mb:.1f} MB "
            f"({self.rss_growth_pct:+.2f}%), peak {self.rss_peak_mb:.1f} MB; GPU memory: {self.gpu_memory}",
            f"slow windows: {len(self.slow_windows)}, not explained by the host: {len(self.unexplained)}",
            "",
            "  cores: CPU time per second of the window (server, load generator, every other process);",
            "  send lag: how late the load generator sent (p99); loop lag: the server's worst event-loop",
            "  lag; GC: the server's garbage-collection pauses in total",
            "",
            "  t (s)   reqs errs n/s   p50 ms   p90 ms   p99 ms   max ms   RSS MB  server client  other"
            " steal% sendlag looplag  GC ms  verdict",
        ]
        for w in self.windows:
            lines.append(
                f"{w.start_s:7.0f} {w.requests:6d} {w.errors:4d} {w.not_started:3d} {w.p50_ms:8.1f} "
                f"{w.p90_ms:8.1f} {w.p99_ms:8.1f} {w.max_ms:8.1f} {w.rss_mb:8.1f} {w.server_cores:7.2f} "
                f"{w.client_cores:6.2f} {w.other_cores:6.2f} {w.steal_pct:6.1f} {w.send_lag_p99_ms:7.1f} "
                f"{w.loop_lag_max_ms:7.0f} {w.gc_pause_ms:6.1f}  {w.verdict}"
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


def process_cpu_s(pid: int | str) -> float:
    """utime + stime of one process, all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def host_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole host since boot, from /proc/stat's first line."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


@dataclass
class _Tick:
    t_s: float
    host_busy_s: float
    host_steal_s: float
    server_s: float
    client_s: float
    rss: int


class MachineSampler(threading.Thread):
    """Every ``interval_s``: the host's CPU, the server's and this process's CPU time and the
    server's RSS; every ``metrics_every_s`` the server's stall metrics."""

    def __init__(self, server: ServerProcess, interval_s: float = 1.0, metrics_every_s: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.interval_s = interval_s
        self.metrics_every_s = metrics_every_s
        self.ticks: list[_Tick] = []
        self.scrapes: list[tuple[float, dict[str, float]]] = []
        self.t0 = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_scrape = 0.0
        while not self._stop_event.is_set():
            now = time.monotonic() - self.t0
            self.ticks.append(self._tick(now))
            if now >= next_scrape:
                self._scrape(now)
                next_scrape += self.metrics_every_s
            self._stop_event.wait(self.interval_s)
        self._scrape(time.monotonic() - self.t0)

    def _tick(self, now: float) -> _Tick:
        busy, steal = host_cpu_s()
        return _Tick(
            now,
            busy,
            steal,
            process_cpu_s(self.server.pid),
            process_cpu_s("self"),
            rss_bytes(self.server.pid),
        )

    def _scrape(self, now: float) -> None:
        # a missed scrape leaves that window's stall figures to the nearest other one
        with contextlib.suppress(httpx.HTTPError):
            self.scrapes.append((now, read_metrics(self.server.base_url)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def seconds(self, cores: int) -> list[Second]:
        out = []
        for a, b in zip(self.ticks, self.ticks[1:], strict=False):
            out.append(_usage(a, b, cores))
        return out


def _usage(a: _Tick, b: _Tick, cores: int) -> Second:
    span = max(b.t_s - a.t_s, 1e-9)
    server = (b.server_s - a.server_s) / span
    client = (b.client_s - a.client_s) / span
    busy = (b.host_busy_s - a.host_busy_s) / span
    steal = (b.host_steal_s - a.host_steal_s) / span
    return Second(
        t_s=round(b.t_s, 2),
        server_cores=round(server, 3),
        client_cores=round(client, 3),
        other_cores=round(max(0.0, busy - server - client), 3),
        steal_pct=round(100 * steal / cores, 2),
        rss_mb=round(b.rss / MB, 1),
    )


def _tick_near(ticks: list[_Tick], t: float) -> _Tick:
    return min(ticks, key=lambda x: abs(x.t_s - t))


def _scrape_near(scrapes: list[tuple[float, dict[str, float]]], t: float) -> dict[str, float]:
    return min(scrapes, key=lambda x: abs(x[0] - t))[1] if scrapes else {}


def histogram_delta(a: dict[str, float], b: dict[str, float], name: str) -> tuple[float, float]:
    """Between two scrapes of histogram ``name``: (the bound in ms of the smallest bucket that
    holds every new sample, i.e. the largest one is at most this; 0 for none), and the sum's
    gain in ms; over every label set."""
    series: dict[str, list[tuple[float, float]]] = {}
    prefix = f"{name}_bucket{{"
    for key, value in b.items():
        if key.startswith(prefix):
            parts = key[len(prefix) : -1].split(",")
            bound = next(p for p in parts if p.startswith("le="))[4:-1]
            rest = ",".join(p for p in parts if not p.startswith("le="))
            series.setdefault(rest, []).append((float(bound), value - a.get(key, 0.0)))
    worst = 0.0
    for buckets in series.values():
        buckets.sort()
        total = buckets[-1][1]  # the +Inf bucket: every new sample
        if total > 0:
            worst = max(worst, next(bound for bound, gained in buckets if gained >= total))
    summed = sum(v - a.get(k, 0.0) for k, v in b.items() if k.split("{")[0] == f"{name}_sum")
    return 1000 * worst, 1000 * summed


def due_in(rate: float, start_s: float, end_s: float, duration_s: float) -> int:
    """Requests the uniform schedule of ``rate`` makes due in [start_s, end_s)."""
    total = math.ceil(rate * duration_s)
    return min(total, math.ceil(rate * end_s)) - min(total, math.ceil(rate * start_s))


def windows(
    results: list[Result],
    sampler: MachineSampler,
    window_s: float,
    duration_s: float,
    rate: float,
    cores: int,
) -> list[Window]:
    out = []
    start = 0.0
    while start < duration_s - 1e-9:
        end = min(start + window_s, duration_s)
        chunk = [r for r in results if start <= r.started_s < end]
        ok = [r.latency_s * 1000 for r in chunk if r.status == 200]
        usage = _usage(_tick_near(sampler.ticks, start), _tick_near(sampler.ticks, end), cores)
        before, after = _scrape_near(sampler.scrapes, start), _scrape_near(sampler.scrapes, end)
        out.append(
            Window(
                start_s=start,
                requests=len(chunk),
                errors=sum(r.status != 200 for r in chunk),
                not_started=max(0, due_in(rate, start, end, duration_s) - len(chunk)),
                p50_ms=percentile(ok, 50),
                p90_ms=percentile(ok, 90),
                p99_ms=percentile(ok, 99),
                max_ms=max(ok, default=float("nan")),
                rss_mb=usage.rss_mb,
                server_cores=usage.server_cores,
                client_cores=usage.client_cores,
                other_cores=usage.other_cores,
                steal_pct=usage.steal_pct,
                send_lag_p99_ms=1000 * percentile([r.send_lag_s for r in chunk], 99),
                loop_lag_max_ms=histogram_delta(before, after, LAG_METRIC)[0],
                gc_pause_ms=histogram_delta(before, after, GC_METRIC)[1],
            )
        )
        start += window_s
    judge(out, cores)
    return out


def judge(windows: list[Window], cores: int) -> None:
    """Mark the slow windows and what explains each (see the module's docstring)."""
    p90s = sorted(w.p90_ms for w in windows if not math.isnan(w.p90_ms))
    if not p90s:
        return
    baseline = p90s[(len(p90s) - 1) // 4]  # the lower quartile: the machine's good windows
    median_other = statistics.median(w.other_cores for w in windows)
    for w in windows:
        slow = w.p90_ms > SLOW_P90_FACTOR * baseline and w.p90_ms > baseline + SLOW_P90_MARGIN_MS
        if slow or w.not_started:
            w.verdict = _explain(w, cores, median_other)


def _explain(w: Window, cores: int, median_other: float) -> str:
    host, server = [], []
    busy = w.server_cores + w.client_cores + w.other_cores
    if w.other_cores >= median_other + OTHER_CORES_MARGIN or (
        w.other_cores >= OTHER_CORES_MARGIN and busy >= HOST_BUSY_SHARE * cores
    ):
        host.append(f"other processes {w.other_cores:.2f} of {cores} cores (median {median_other:.2f})")
    if w.steal_pct >= STEAL_PCT:
        host.append(f"steal {w.steal_pct:.1f}%")
    if w.send_lag_p99_ms >= SEND_LAG_P99_MS:
        host.append(f"load generator late (p99 {w.send_lag_p99_ms:.0f} ms)")
    if w.loop_lag_max_ms >= SERVER_STALL_MS:
        server.append(f"event loop lag up to {w.loop_lag_max_ms:.0f} ms")
    if w.gc_pause_ms >= SERVER_STALL_MS:
        server.append(f"GC {w.gc_pause_ms:.0f} ms")
    # A starved process lags too: its event-loop lag is a symptom then, not a cause.
    if host:
        return "slow: host: " + ", ".join(host) + (f" (server: {', '.join(server)})" if server else "")
    if server:
        return "slow: server: " + ", ".join(server)
    return "slow: unexplained"


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
    # Open requests: the server's own bounds (its queue, the request timeout) answer for the
    # load, not the generator: as many as the load generator command allows by default.
    max_in_flight = MAX_IN_FLIGHT
    say(f"capacity {capacity:.1f} req/s; burst of {burst_clients} clients for 5 s, then warm-up at "
        f"{rate:.1f} req/s for {warmup_s:.0f} s ...", flush=True)  # fmt: skip
    # The burst fills the queue so that the largest batches run (and the model runtime's
    # memory arena reaches its size) before the RSS that growth is measured from.
    closed_loop(target, burst_clients, 5.0)
    open_loop(target, rate, warmup_s, max_in_flight)
    time.sleep(1.0)
    rss_start = server.rss()
    say(f"soak at {rate:.1f} req/s for {duration_s:.0f} s (RSS {rss_start / MB:.1f} MB) ...", flush=True)
    sampler = MachineSampler(server)
    sampler.t0 = time.monotonic() + 0.2
    sampler.start()
    results, dropped = open_loop(target, rate, duration_s, max_in_flight, t0=sampler.t0)
    time.sleep(1.0)
    sampler.stop()
    rss_end = server.rss()
    ok = [r.latency_s * 1000 for r in results if r.status == 200]
    kinds: dict[str, int] = {}
    for r in results:
        if r.status != 200:
            key = str(r.status) if r.status else r.error
            kinds[key] = kinds.get(key, 0) + 1
    cores = os.cpu_count() or 1  # the host's: /proc/stat counts them all
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
        rss_peak_mb=max([t.rss for t in sampler.ticks] + [rss_end]) / MB,
        rss_growth_pct=100.0 * (rss_end - rss_start) / rss_start,
        gpu_memory=gpu_memory(server.pid),
        host_cores=cores,
        windows=windows(results, sampler, window_s, duration_s, rate, cores),
        seconds=sampler.seconds(cores),
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
    parser.add_argument("--json", type=Path, help="also write the report as JSON here (per second too)")
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
        args.json.write_text(json.dumps(asdict(report), indent=1) + "\n")
    verdict = report.verdict(args.max_rss_growth)
    print(f"\n{verdict}: {report.errors} errors, {report.dropped} not started, RSS growth "
          f"{report.rss_growth_pct:+.2f}% (limit {args.max_rss_growth}%), {len(report.slow_windows)} "
          f"slow windows, {len(report.unexplained)} of them not explained by the host")  # fmt: skip
    return {"PASS": 0, "FAIL": 1}.get(verdict, 2)


if __name__ == "__main__":
    sys.exit(main())
