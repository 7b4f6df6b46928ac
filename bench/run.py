"""``python -m bench run``: every piece of the benchmark, side by side, in one run.

Stages: describe the machine -> get the model (and its float twin for the naive baseline) ->
build images and request bodies -> the in-process ceiling -> our server (batching on) and the
naive baseline together, their points interleaved (closed loop at fixed concurrency levels,
then an open-loop sweep of Poisson arrivals at fractions of each one's measured capacity) ->
each other topology in turn (batching off, smaller batches, a small queue under overload,
nginx + 1 and + 2 replicas) -> results.json, report.md, plots.

Fairness on a small machine: by default (``--pin auto``) the load generator runs on the first
core(s) and everything under test (servers, nginx, the ceiling) on the others, so the servers'
CPU-seconds per image and the ceiling's are measured on the same cores with the same thread
counts, and the client's own cost (also reported) does not steal from the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from tqdm import tqdm

from bench import servers
from bench.report import OVERLOAD_CLIENTS, OVERLOAD_QUEUE
from bench.servers import Topology
from bench.workloads import ImageSet, Workload, build_image_sets, build_workloads
from harness.loadgen import percentile, summarise
from harness.nginx import find_nginx

REPO_ROOT = servers.REPO_ROOT
DEFAULT_MODEL = REPO_ROOT / "models" / "default" / "model.onnx"


@dataclass(frozen=True)
class Point:
    """One measurement: a topology, a workload, and a concurrency (closed loop) or rate (open)."""

    topology: str
    workload: str
    concurrency: int = 0
    # open loop: offered images/s = rate_fraction x capacity, the best images/s of these point keys
    rate_of: tuple[str, ...] = ()
    rate_fraction: float = 0.0
    offered_images_per_s: float = 0.0  # open loop at a fixed offered rate

    @property
    def key(self) -> str:
        load = f"c{self.concurrency}"
        if self.rate_of:
            load = f"open{self.rate_fraction:g}"
        elif self.offered_images_per_s:
            load = f"open{self.offered_images_per_s:g}ips"
        return f"{self.topology}/{self.workload}/{load}"


@dataclass
class Plan:
    """Which topologies exist and which points each runs. The ``interleaved`` topologies are up
    together and their points run in plan order (one loaded at a time, the others idle), so
    their comparison is not skewed by what else the machine did minutes apart; every other
    topology runs alone, its points one after another."""

    topologies: dict[str, dict[str, Any]]  # name -> {"kind": ..., "settings": {...}}
    points: list[Point] = field(default_factory=list)
    interleaved: tuple[str, ...] = ()


BATCHING_ON: dict[
    str, str
] = {}  # the server's defaults: max_batch_size by provider (CPU 4, GPU 32), max_delay_ms 5
BATCHING_OFF = {"max_batch_size": "1"}
# On CPU an image costs the same in any batch (docs/BENCHMARKS.md), and the default cap there is 4:
# larger maxima, for their images/s and memory
BATCH_LARGER = {"batch8": {"max_batch_size": "8"}, "batch32": {"max_batch_size": "32"}}
MAIN = "jpeg_500x375"
# Overload: a queue of 8 images under 64 clients, so most requests must be shed
OVERLOAD = {"max_queue_images": str(OVERLOAD_QUEUE), "max_images_per_request": str(OVERLOAD_QUEUE)}
OVERLOAD_CONCURRENCY = OVERLOAD_CLIENTS
CONCURRENCY = (1, 8, 32, 128)
CAPACITY_CONCURRENCY = (32, 128)  # capacity: the best closed-loop images/s at these
SWEEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)  # open loop: offered load as a fraction of capacity
SMOKE_SWEEP_FRACTIONS = (0.1, 0.5)
PAIR = ("batching_on", "naive")  # measured interleaved, point by point
CEILING_BATCH_SIZES = (1, 4, 8, 16)  # besides max_batch_size, for the main image set


def interleave(*points: Point) -> list[Point]:
    """The same load on each topology of the pair, one after the other."""
    return [Point(topology, p.workload, p.concurrency) for p in points for topology in PAIR]


def sweep(fractions: tuple[float, ...], capacity_concurrency: tuple[int, ...]) -> list[Point]:
    """Open loop at each fraction of each pair member's own capacity, interleaved."""
    return [
        Point(topology, MAIN, rate_of=tuple(f"{topology}/{MAIN}/c{c}" for c in capacity_concurrency),
              rate_fraction=fraction)
        for fraction in fractions
        for topology in PAIR
    ]  # fmt: skip


def full_plan(replicas: bool, gpu: bool) -> Plan:
    topologies: dict[str, dict[str, Any]] = {
        "batching_on": {"kind": "ours", "settings": BATCHING_ON},
        "naive": {"kind": "naive"},
        "batching_off": {"kind": "ours", "settings": BATCHING_OFF},
        "overload": {"kind": "ours", "settings": OVERLOAD},
    }
    points = interleave(*(Point("", MAIN, c) for c in CONCURRENCY))
    points += interleave(Point("", "jpeg_12mp", 1), Point("", "jpeg_12mp", 32), Point("", "png_512", 32))
    points += [Point("batching_on", "multi8_500x375", 8), Point("batching_on", "raw_500x375", 32)]
    points += sweep(SWEEP_FRACTIONS, CAPACITY_CONCURRENCY)
    if gpu:
        # the issue's GPU latency target: p99 at 2,000 images/s offered
        points += [Point("batching_on", MAIN, offered_images_per_s=2000.0)]
    points += [Point("batching_off", MAIN, c) for c in CONCURRENCY]
    if not gpu:
        for name, settings in BATCH_LARGER.items():
            topologies[name] = {"kind": "ours", "settings": settings}
            points += [Point(name, MAIN, 32)]
    points += [Point("overload", MAIN, OVERLOAD_CONCURRENCY)]
    if replicas:
        topologies["nginx_1"] = {"kind": "replicas", "replicas": 1, "settings": BATCHING_ON}
        topologies["nginx_2"] = {"kind": "replicas", "replicas": 2, "settings": BATCHING_ON}
        points += [Point("nginx_1", MAIN, 32), Point("nginx_2", MAIN, 32)]
    return Plan(topologies, points, PAIR)


def smoke_plan(replicas: bool) -> Plan:
    topologies: dict[str, dict[str, Any]] = {
        "batching_on": {"kind": "ours", "settings": BATCHING_ON},
        "naive": {"kind": "naive"},
        "batching_off": {"kind": "ours", "settings": BATCHING_OFF},
        "overload": {"kind": "ours", "settings": OVERLOAD},
    }
    points = interleave(Point("", MAIN, 1), Point("", MAIN, 8))
    points += [Point("batching_on", "multi8_500x375", 2)]
    points += sweep(SMOKE_SWEEP_FRACTIONS, (8,))
    points += [Point("batching_off", MAIN, 8), Point("overload", MAIN, OVERLOAD_CONCURRENCY)]
    if replicas:
        topologies["nginx_2"] = {"kind": "replicas", "replicas": 2, "settings": BATCHING_ON}
        points.append(Point("nginx_2", MAIN, 8))
    return Plan(topologies, points, PAIR)


# --- the machine ----------------------------------------------------------------------------------
def _git(*args: str) -> str:
    with contextlib.suppress(OSError):
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()
    return ""


def describe_machine() -> dict[str, Any]:
    import numpy
    import onnxruntime
    import PIL

    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    providers = onnxruntime.get_available_providers()
    gpu = ""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    return {
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "app_uncommitted_changes": bool(_git("status", "--porcelain", "--", "app")),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "hostname": platform.node(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": providers,
        "cuda_provider_available": "CUDAExecutionProvider" in providers,
        "gpu": gpu or "none",
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "kernel": platform.release(),
    }


def parse_cpus(spec: str) -> list[int]:
    """'0,2-3' -> [0, 2, 3] (taskset's list syntax)."""
    cpus: list[int] = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


class Pinning(NamedTuple):
    """Where the load generator and everything under test run (taskset lists; None: anywhere)."""

    client_cpus: str | None
    server_cpus: str | None
    client_procs: int


def choose_cpus(pin: str) -> Pinning:
    """The pinning for ``--pin``: auto, none, or 'CLIENT:SERVER'."""
    if pin == "none":
        return Pinning(None, None, max(1, (os.cpu_count() or 1) // 8))
    if ":" in pin:
        client, server = pin.split(":", 1)
        return Pinning(client, server, len(parse_cpus(client)))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Pinning(None, None, 1)
    n_client = max(1, len(cpus) // 4)
    client, server = cpus[:n_client], cpus[n_client:]
    return Pinning(",".join(map(str, client)), ",".join(map(str, server)), n_client)


# --- models ---------------------------------------------------------------------------------------
def create_tiny_model(out_dir: Path, *, layout: Literal["NHWC", "NCHW"] = "NHWC") -> Path:
    """The smoke stand-in: the real artifact format and ImageNet sizes (resize 256, crop 224),
    so the smoke run exercises the real decode/preprocess/HTTP path, with almost no compute.
    The NCHW float twin (same weights) is what the naive baseline runs."""
    import numpy as np

    from harness.tiny_model import tiny_card, write_model

    classes = 10
    card = tiny_card(
        labels=[f"class_{index}" for index in range(classes)],
        layout=layout,
        resize_size=256,
        crop_size=224,
        name="bench-tiny",
        version="0.0.1",
        weights_source="random, seed 0",
    )
    weights = np.random.default_rng(0).normal(size=(3, classes)).astype(np.float32)
    return write_model(out_dir, card, weights, np.zeros(classes, np.float32))


def prepare_models(args: Any, out: Path) -> tuple[Path, Path]:
    """(the server's model, the naive baseline's model: the float twin when it can be made)."""
    if args.smoke and args.model is None:
        return create_tiny_model(out / "models" / "tiny"), create_tiny_model(
            out / "models" / "tiny-float", layout="NCHW"
        )
    model = args.model or DEFAULT_MODEL
    if not model.exists():
        tqdm.write(f"exporting the default model to {model.parent} (once) ...")
        export(model.parent, [])
    naive = args.naive_model
    if naive is None:
        naive = out.parent / "models" / f"{model.parent.name}-float" / "model.onnx"
        if not naive.exists():
            tqdm.write(f"exporting the float-input twin to {naive.parent} for the naive baseline ...")
            if not export(naive.parent, ["--float-input"]):
                tqdm.write("  could not export a float-input twin; the naive baseline runs the uint8 model")
                naive = model
    return model, naive


def export(folder: Path, extra: list[str]) -> bool:
    command = [sys.executable, "-m", "model_export", "default", "--output-dir", str(folder), *extra]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tqdm.write(done.stderr[-2000:])
    return done.returncode == 0


# --- measuring ------------------------------------------------------------------------------------
def start_topology(
    name: str,
    spec: dict[str, Any],
    model: Path,
    naive_model: Path,
    out: Path,
    cpus: str | None,
    extra_settings: dict[str, str],
) -> Topology:
    logs = out / "logs"
    if spec["kind"] == "naive":
        return servers.start_naive(naive_model, logs, cpus)
    settings = spec["settings"] | extra_settings
    if spec["kind"] == "ours":
        return servers.start_ours(name, model, settings, logs, cpus)
    return servers.start_replicas(model, settings, spec["replicas"], logs / name, cpus)


def measure_point(
    topo: Topology,
    point: Point,
    workload_dir: Path,
    args: Any,
    client_cpus: str | None,
    client_procs: int,
    rate: float,
    out: Path,
) -> dict[str, Any]:
    t0 = time.monotonic() + 0.6 + 0.2 * client_procs  # time for the client processes to start and connect
    window_start, window_end = t0 + args.warmup, t0 + args.warmup + args.duration
    procs, outs = [], []
    for index in range(client_procs):
        result_path = out / "tmp" / f"client{index}.json"
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "harness.loadgen",
            "--workload",
            str(workload_dir),
            "--port",
            str(topo.port_for(index)),
            "--t0",
            repr(t0),
            "--warmup",
            str(args.warmup),
            "--duration",
            str(args.duration),
            "--offset",
            str(index * 7),
            "--out",
            str(result_path),
        ]
        if getattr(args, "path", None):  # another route or query than /predict (bench.explain)
            argv += ["--path", args.path]
        if rate:
            # one Poisson stream per process, each seeded apart: together a Poisson stream of ``rate``
            argv += ["--rate", repr(rate / client_procs), "--arrivals", "poisson", "--seed", str(index)]
        else:
            share = point.concurrency // client_procs + (1 if index < point.concurrency % client_procs else 0)
            if share == 0:
                continue
            argv += ["--connections", str(share)]
        procs.append(subprocess.Popen([*servers.taskset_prefix(client_cpus), *argv], cwd=REPO_ROOT))
        outs.append(result_path)
    time.sleep(max(0.0, window_start - time.monotonic()))
    cpu_before, metrics_before = topo.cpu_s(), topo.scrape_all()
    time.sleep(max(0.0, window_end - time.monotonic()))
    cpu_after, metrics_after = topo.cpu_s(), topo.scrape_all()
    for proc in procs:
        if proc.wait(timeout=120) != 0:
            raise RuntimeError(f"load generator failed with exit status {proc.returncode}")
    clients = [json.loads(path.read_text()) for path in outs]
    return merge(
        point,
        topo,
        clients,
        cpu_after - cpu_before,
        servers.sum_deltas(metrics_before, metrics_after),
        args.duration,
        rate,
    )


def merge(
    point: Point,
    topo: Topology,
    clients: list[dict[str, Any]],
    server_cpu_s: float,
    delta: servers.MetricsDelta,
    duration_s: float,
    rate: float,
) -> dict[str, Any]:
    latencies = sorted(lat for c in clients for lat in c["latencies_s"])
    shed = [lat for c in clients for lat in c["shed_latencies_s"]]
    ipr = clients[0]["images_per_request"]
    errors: Counter[str] = Counter()
    for c in clients:
        errors.update(c["errors"])
    window = summarise(latencies, dict(errors), duration_s, ipr)
    # Images the server finished in the window, by its own count when it keeps one (both sides of
    # the ratio then come from the server); else what the client saw completed.
    server_images = delta.images_processed if delta.images_processed else window["images_ok"]
    client_cpu = sum(c["client_cpu_s"] for c in clients)
    client_requests = sum(c["requests_sent"] for c in clients)
    return {
        "key": point.key,
        "topology": point.topology,
        "workload": point.workload,
        "images_per_request": ipr,
        "mode": "open" if rate else "closed",
        "concurrency": point.concurrency,
        "offered_images_per_s": rate * ipr if rate else None,
        "rate_fraction": point.rate_fraction or None,
        "duration_s": duration_s,
        **window,
        "requests_sent": client_requests,
        "shed": {
            "count": len(shed),
            "with_retry_after": sum(c["shed_with_retry_after"] for c in clients),
            "latency_ms": {f"p{q}": 1000 * percentile(shed, q) for q in (50, 99)},
        },
        "sample_error_body": next((c["sample_error_body"] for c in clients if c["sample_error_body"]), ""),
        "server_cpu_s": server_cpu_s,
        "server_images": server_images,
        "server_cpu_s_per_image": server_cpu_s / server_images if server_images else None,
        "server_cores_busy": server_cpu_s / duration_s,
        "mean_batch_size": delta.mean_batch_size
        if delta.batches
        else (1.0 if topo.name == "naive" else None),
        "batches": delta.batches,
        "client_cpu_s_per_request": client_cpu / client_requests if client_requests else None,
        "latency_sample_ms": [round(1000 * x, 3) for x in latencies[:: max(1, len(latencies) // 4000)]],
    }


def run_ceiling(
    model: Path, image_dirs: list[Path], batch_sizes: tuple[int, ...], args: Any, cpus: str | None, out: Path
) -> dict[str, Any]:
    result_path = out / "ceiling.json"
    argv = [
        sys.executable,
        "-m",
        "bench.ceiling",
        "--model",
        str(model),
        "--duration",
        str(args.ceiling_duration),
        "--out",
        str(result_path),
        "--images",
        *map(str, image_dirs),
        "--batch-sizes",
        *map(str, batch_sizes),
        "--other-batch-sizes",
        *([] if args.smoke else ["1"]),
        "--model-batch-sizes",
        *map(str, (1,) if args.smoke else (1, 2, 4, 8, 16, 32)),
        "--single-image-duration",
        str(args.ceiling_duration / 2),
    ]
    env = {**os.environ, **{f"IMGSERVE_{k.upper()}": v for k, v in BATCHING_ON.items()}}
    subprocess.run(
        [*servers.taskset_prefix(cpus), *argv], cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL
    )
    return json.loads(result_path.read_text())


@dataclass(frozen=True)
class Run:
    """What every stage of one run reads: the arguments, where results go, the pinning, the
    machine, the models, the images, the plan and its request bodies."""

    args: Any
    out: Path
    pinning: Pinning
    machine: dict[str, Any]
    model: Path
    naive_model: Path
    sets: dict[str, ImageSet]
    plan: Plan
    workloads: dict[str, Workload]


def execute(args: Any) -> Path:
    """The run, stage by stage: prepare, the in-process ceiling, every load point, the report."""
    started = time.monotonic()
    run = prepare_run(args)
    ceiling = measure_ceiling(run)
    points = measure_points(run)
    report = assemble_report(run, ceiling, points, time.monotonic() - started)
    write_results(report, run.out)
    return run.out


def prepare_run(args: Any) -> Run:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    pinning = choose_cpus(args.pin)
    if args.client_procs:
        pinning = pinning._replace(client_procs=args.client_procs)
    machine = describe_machine() | {
        "client_cpus": pinning.client_cpus or "any",
        "server_cpus": pinning.server_cpus or "any",
        "client_processes": pinning.client_procs,
    }
    print_machine(machine)
    model, naive_model = prepare_models(args, out)
    sets = build_image_sets(out / "images", smoke=args.smoke)
    plan = choose_plan(args, machine["cuda_provider_available"])
    workloads = write_workloads(sets, plan, out)
    return Run(args, out, pinning, machine, model, naive_model, sets, plan, workloads)


def print_machine(machine: dict[str, Any]) -> None:
    print(f"machine: {machine['cpu_model']} x{machine['cpu_count']}, GPU: {machine['gpu']}")
    print(
        f"ONNX Runtime {machine['onnxruntime']} providers: {machine['onnxruntime_providers']} "
        f"(CUDA provider {'AVAILABLE' if machine['cuda_provider_available'] else 'not available'})"
    )
    print(
        f"load generator on cpus {machine['client_cpus']} ({machine['client_processes']} process(es)), "
        f"servers and ceiling on cpus {machine['server_cpus']}"
    )


def choose_plan(args: Any, cuda: bool) -> Plan:
    """The smoke or the full plan (nginx topologies only where nginx is installed), ``--only``."""
    replicas = find_nginx() is not None
    plan = smoke_plan(replicas) if args.smoke else full_plan(replicas, cuda)
    if args.only:
        plan.points = [p for p in plan.points if any(part in p.key for part in args.only)]
    return plan


def write_workloads(sets: dict[str, ImageSet], plan: Plan, out: Path) -> dict[str, Workload]:
    """The request bodies of every workload the plan uses, saved for the load generators."""
    workloads = build_workloads(sets, sorted({p.workload for p in plan.points}))
    for name, workload in workloads.items():
        workload.to_json(out / "workloads" / name)
    return workloads


def measure_ceiling(run: Run) -> dict[str, Any]:
    """The in-process ceiling on the servers' cores; with --require-cuda, stop unless on CUDA."""
    args = run.args
    ceiling_sets = [MAIN] if args.smoke else [MAIN, "jpeg_12mp", "png_512"]
    print(f"ceiling: in process, {args.ceiling_duration:g} s per image set ...")
    ceiling = run_ceiling(
        run.model,
        [run.out / "images" / s for s in ceiling_sets],
        () if args.smoke else CEILING_BATCH_SIZES,
        args,
        run.pinning.server_cpus,
        run.out,
    )
    if args.require_cuda and ceiling["provider"] != "CUDAExecutionProvider":
        raise SystemExit(f"--require-cuda: the ceiling's session runs on {ceiling['providers']}, not CUDA")
    for name, fig in ceiling["pipeline"].items():
        print(
            f"  {name:14s} {fig['images_per_s']:8.1f} images/s  {1000 * fig['cpu_s_per_image']:7.2f} "
            f"CPU-ms/image (preprocess alone {1000 * fig['preprocess_cpu_s_per_image']:.2f})  "
            f"provider {ceiling['provider']}"
        )
    return ceiling


def measure_points(run: Run) -> dict[str, dict[str, Any]]:
    """Every point of the plan: the interleaved topologies up together, then each other
    topology alone; the figures by point key."""
    results: dict[str, dict[str, Any]] = {}
    used = [t for t in run.plan.topologies if any(p.topology == t for p in run.plan.points)]
    together = [t for t in used if t in run.plan.interleaved]
    with tqdm(total=len(run.plan.points), desc="load points", unit="point") as bar:
        if together:
            measure_topologies(run, together, results, bar)
        for topo_name in used:
            if topo_name not in together:
                measure_topologies(run, [topo_name], results, bar)
    return results


def measure_topologies(
    run: Run, names: list[str], results: dict[str, dict[str, Any]], bar: tqdm[Any]
) -> None:
    """Start these topologies, measure their points in plan order into ``results``, stop them."""
    topos: dict[str, Topology] = {}
    try:
        for name in names:
            topos[name] = start_topology(
                name,
                run.plan.topologies[name],
                run.model,
                run.naive_model,
                run.out,
                run.pinning.server_cpus,
                server_settings(run.args),
            )
        for point in (p for p in run.plan.points if p.topology in topos):
            rate = offered_rate(point, run.workloads[point.workload], results)
            if rate is None:
                tqdm.write(f"{point.key}: skipped, none of {', '.join(point.rate_of)} served anything")
                bar.update()
                continue
            bar.set_postfix_str(point.key)
            results[point.key] = measure_point(
                topos[point.topology],
                point,
                run.out / "workloads" / point.workload,
                run.args,
                run.pinning.client_cpus,
                run.pinning.client_procs,
                rate,
                run.out,
            )
            if point.rate_of:
                results[point.key]["capacity_images_per_s"] = capacity_of(point, results)
            bar.update()
            tqdm.write(one_line(results[point.key]))
    finally:
        for topo in reversed(topos.values()):
            topo.stop()


def server_settings(args: Any) -> dict[str, str]:
    """What every server of the run gets besides its topology's settings."""
    # smoke: the tiny model needs no warm-up at every batch size
    settings = {"warmup_batch_sizes": "1"} if args.smoke else {}
    if args.require_cuda:
        settings["require_cuda"] = "true"
    return settings


def capacity_of(point: Point, results: dict[str, dict[str, Any]]) -> float | None:
    """Images/s the point's rate is a fraction of: the best of its ``rate_of`` points (closed
    loop at high concurrency) that ran; None when none ran or served anything."""
    measured = [results[key]["images_per_s"] for key in point.rate_of if key in results]
    return max(measured) if measured and max(measured) > 0 else None


def offered_rate(point: Point, workload: Workload, results: dict[str, dict[str, Any]]) -> float | None:
    """Requests/s for an open-loop point (0: closed loop); None when its capacity is unknown."""
    if not point.rate_of:
        return point.offered_images_per_s / workload.images_per_request
    capacity = capacity_of(point, results)
    if capacity is None:
        return None
    return point.rate_fraction * capacity / workload.images_per_request


def assemble_report(
    run: Run, ceiling: dict[str, Any], points: dict[str, dict[str, Any]], wall_s: float
) -> dict[str, Any]:
    """results.json: the machine, the settings, the inputs, the ceiling and every point."""
    args = run.args
    return {
        "machine": run.machine,
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "ceiling_duration_s": args.ceiling_duration,
            "smoke": args.smoke,
            "pin": args.pin,
        },
        "model": str(run.model),
        "naive_model": str(run.naive_model),
        "image_sets": {
            name: {
                "count": len(s.images),
                "size": s.pixel_size,
                "mean_bytes": sum(map(len, s.images)) / len(s.images),
                "note": s.note,
            }
            for name, s in run.sets.items()
        },
        "workloads": {
            name: {
                "images_per_request": w.images_per_request,
                "mean_body_bytes": w.mean_body_bytes,
                "description": w.description,
            }
            for name, w in run.workloads.items()
        },
        "ceiling": ceiling,
        "points": points,
        "plan": [asdict(p) for p in run.plan.points],
        "wall_s": wall_s,
    }


def write_results(report: dict[str, Any], out: Path) -> None:
    """results.json, report.md and the plots; the report's summary on stdout."""
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    from bench.report import write_report

    md = write_report(report, out)
    print()
    print(md.read_text().split("## Details")[0])
    print(f"results: {out / 'results.json'}, report: {md}, total {report['wall_s']:.0f} s")


def one_line(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    cpu = r["server_cpu_s_per_image"]
    batch = r["mean_batch_size"]
    shed = r["shed"]["count"]
    shed_text = f" ({shed} shed, p50 {r['shed']['latency_ms']['p50']:.1f} ms)" if shed else ""
    return (
        f"{r['key']:40s} {r['images_per_s']:8.1f} img/s  p50 {lat['p50']:7.1f}  p99 {lat['p99']:7.1f} ms  "
        f"server {1000 * cpu if cpu else float('nan'):6.2f} CPU-ms/img  "
        f"batch {batch if batch else float('nan'):5.1f}  "
        f"errors {r['error_count']}{shed_text}"
    )
