"""The GPU plan's server step: the real server, real multipart JPEGs, closed-loop load.

Topologies (each with the same model on the provider under test):

- ``batching_on``: one server process, dynamic batching up to ``max_batch_size``, decoding on
  every server core;
- ``batching_on_procs``: N server processes sharing the GPU, each decoding on its share of the
  cores (Python's per-process costs, the event loop and multipart parsing, then scale too);
  load generator process i talks to server i mod N (no load balancer: the lent machine has no
  nginx, and one would cost CPU the servers need);
- ``batching_off`` and ``batching_off_procs``: the same with ``max_batch_size=1``.

The load generators run on the first quarter of the cores, the servers on the rest
(``bench.run.choose_cpus``); each point is measured by ``bench.run.measure_point``, the CPU
suite's own code. ``max_queue_images`` is raised to 1,024 so that c=512 queues instead of
shedding: the figures are latency and throughput, not refusals. While each point is measured,
``nvidia-smi`` samples the GPU's utilisation, memory and power every 100 ms.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from bench import servers
from bench.run import Point, choose_cpus, measure_point, parse_cpus
from bench.servers import Proc, Topology
from bench.workloads import ImageSet, build_workloads
from harness.server import ServerProcess, settings_env

if TYPE_CHECKING:
    from bench.gpu.step import Context

WORKLOAD = "jpeg_500x375"


class GpuSampler:
    """``nvidia-smi`` every 100 ms in the background: (monotonic time, util %, memory MiB, W)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float, float]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return shutil.which("nvidia-smi") is not None

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu,memory.used,power.draw",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "100",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                util, memory, power = (
                    float(x) if x.strip() not in ("[N/A]", "N/A") else float("nan")
                    for x in line.split(",")[:3]
                )
                self.samples.append((time.monotonic(), util, memory, power))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)

    def window(self, start: float, end: float) -> dict[str, Any] | None:
        """Mean and max over [start, end]; None where there is no nvidia-smi or no sample."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return None
        util = [s[1] for s in inside]
        return {
            "samples": len(inside),
            "util_mean": sum(util) / len(util),
            "util_max": max(util),
            "memory_mib_max": max(s[2] for s in inside),
            "power_w_mean": sum(s[3] for s in inside) / len(inside),
        }


def server_settings(ctx: Context, batching: bool, decode_threads: int) -> dict[str, str]:
    sizes = ctx.sizes
    settings = {
        "max_batch_size": str(sizes.max_batch_size if batching else 1),
        "decode_threads": str(max(1, decode_threads)),
        "max_queue_images": "1024",
        "max_connections": "2048",
        "grpc_port": "0",
        "log_level": "warning",
        # warm every batch size the server can form: no cuDNN search inside a measured window
        "warmup_batch_sizes": ",".join(
            str(b) for b in (1, 2, 4, 8, 16, 32, 64, 128) if b <= (sizes.max_batch_size if batching else 1)
        ),
    }
    if ctx.dry_run:  # the tiny model needs no warm-up at every size; a start is seconds on a CI core
        settings["warmup_batch_sizes"] = "1"
    if not ctx.dry_run:
        settings["require_cuda"] = "true"
    return settings


def start_topology(ctx: Context, name: str, model: Path, server_cpus: str | None, logs: Path) -> Topology:
    """One or N servers, started together (a GPU server's start is seconds of CUDA set-up)."""
    processes = ctx.sizes.server_processes if name.endswith("_procs") else 1
    cores = len(parse_cpus(server_cpus)) if server_cpus else len(os.sched_getaffinity(0))
    settings = server_settings(ctx, name.startswith("batching_on"), cores // processes)
    started = [
        ServerProcess(
            settings_env(model, settings),
            logs / f"{name}-{i}.log",
            argv_prefix=servers.taskset_prefix(server_cpus),
        )
        for i in range(processes)
    ]
    for server in started:
        server.spawn()
    topo = Topology(name, started[0].port, client_ports=[s.port for s in started])
    try:
        for index, server in enumerate(started):
            server.wait_ready(servers.READY_TIMEOUT_S, poll_s=0.2)
            topo.procs.append(Proc(f"{name}-{index}", server))
    except BaseException:
        for server in started:
            with contextlib.suppress(RuntimeError):
                server.stop(servers.STOP_TIMEOUT_S)
        raise
    return topo


def run_server_points(ctx: Context) -> None:
    from bench.gpu.step import model_paths

    sizes = ctx.sizes
    model = model_paths(ctx)["fp32"]
    folder = Path(ctx.results()["models"]["images"])
    images = [p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg")]
    image_set = ImageSet(WORKLOAD, "image/jpeg", images, (500, 375), "real photos, 500x375 JPEG q90")
    workload = build_workloads({WORKLOAD: image_set}, [WORKLOAD])[WORKLOAD]
    workload_dir = ctx.work / "workloads" / WORKLOAD
    workload.to_json(workload_dir)
    pinning = choose_cpus("auto")
    ctx.record(
        "pinning",
        value={
            "client_cpus": pinning.client_cpus or "any",
            "server_cpus": pinning.server_cpus or "any",
            "client_processes": pinning.client_procs,
            "server_processes_procs": sizes.server_processes,
        },
    )
    args = SimpleNamespace(warmup=sizes.server_warmup_s, duration=sizes.server_duration_s)
    empty: list[str] = []
    with GpuSampler() as sampler:
        point_s = args.warmup + args.duration + 2.0
        for index, (name, levels) in enumerate(sizes.server_points.items()):
            # past the first, a topology starts only if its start (CUDA, warm-up) and one point fit
            if index and ctx.time_left() < point_s + (2.0 if ctx.dry_run else 15.0):
                ctx.record("cut", value=f"before {name}: the step's time limit")
                return
            t0 = time.monotonic()
            topo = start_topology(ctx, name, model, pinning.server_cpus, ctx.work / "logs")
            ctx.record("start_s", name, value=round(time.monotonic() - t0, 1))
            try:
                points = [Point(name, WORKLOAD, concurrency) for concurrency in levels]
                if name == "batching_on":  # the latency target: p99 at a fixed offered rate
                    points.append(Point(name, WORKLOAD, offered_images_per_s=sizes.open_loop_images_per_s))
                for point in points:
                    if ctx.time_left() < 0:
                        ctx.record("cut", value=f"at {point.key}: the step's time limit")
                        return
                    called = time.monotonic()
                    figures = measure_point(
                        topo,
                        point,
                        workload_dir,
                        args,
                        pinning.client_cpus,
                        pinning.client_procs,
                        point.offered_images_per_s / workload.images_per_request,
                        ctx.work,
                    )
                    window_start = called + 0.6 + 0.2 * pinning.client_procs + args.warmup
                    figures["gpu"] = sampler.window(window_start, window_start + args.duration)
                    figures["processes"] = len(topo.procs)
                    figures.pop("latency_sample_ms", None)
                    ctx.record("points", point.key, value=figures)
                    print(one_line(figures))
                    if not figures["images_ok"]:
                        empty.append(point.key)
            finally:
                topo.stop()
    if empty:  # every figure is kept; the step says it is not to be trusted
        raise SystemExit(f"no image was answered in the measured window of {', '.join(empty)}")


def one_line(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    gpu = r.get("gpu")
    gpu_text = f"GPU {gpu['util_mean']:3.0f}% (max {gpu['util_max']:.0f})" if gpu else "GPU -"
    batch = r.get("mean_batch_size")
    return (
        f"{r['key']:38s} {r['images_per_s']:8.1f} img/s  p50 {lat['p50']:7.1f}  p99 {lat['p99']:7.1f} ms  "
        f"batch {batch if batch else float('nan'):5.1f}  {gpu_text}  errors {r['error_count']}"
    )
