"""The v2 benchmark point: server CPU per image of v2 binary BYTES requests vs ``/predict``.

    python -m bench.v2_point                       # 3 interleaved rounds of 10 s each, c=32
    python -m bench.v2_point --rounds 5 --duration 20 --out bench/results/v2_point.json

One server (the default model, default settings) serves both paths; rounds alternate
``/predict`` (a raw JPEG body) and ``POST /v2/models/{name}/infer`` with the binary tensor
extension (a JSON header, then the JPEG as one length-prefixed BYTES element), both asking for
the labelled top-5, so the work per image is the same and only the protocol differs. The load
comes from ``harness.loadgen``'s closed loop (32 keep-alive connections, pre-built requests); the
server's CPU is read from /proc at the edges of each measured window, and the images it
classified from its own ``imgserve_images_total``. The server is pinned to its own CPUs and the
load generator to others, as ``python -m bench`` does. Target: v2 within 10% of ``/predict``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import servers
from bench.workloads import encode, load_source_photos, resize_crop
from harness import loadgen

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


@dataclass(frozen=True)
class LoadPath:
    """One way to ask for the same thing: a name, the load target, the images counter it feeds."""

    name: str
    target: loadgen.Target
    protocol: str


def v2_binary_body(image: bytes) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1, 1],
                    "parameters": {"binary_data_size": len(image) + 4},
                }
            ],
            "outputs": [{"name": "probs", "parameters": {"classification": 5}}],
        }
    ).encode()
    return header + struct.pack("<I", len(image)) + image, len(header)


def build_paths(port: int, model_name: str, images: list[bytes]) -> list[LoadPath]:
    base = f"http://{HOST}:{port}"
    predict = loadgen.Target(f"{base}/predict", [(image, "image/jpeg") for image in images])
    v2_bodies: list[loadgen.Body] = []
    for image in images:
        body, header_length = v2_binary_body(image)
        v2_bodies.append(
            (body, "application/octet-stream", {"Inference-Header-Content-Length": str(header_length)})
        )
    v2 = loadgen.Target(f"{base}/v2/models/{model_name}/infer", v2_bodies)
    return [LoadPath("/predict (raw JPEG)", predict, "rest"), LoadPath("v2 binary BYTES", v2, "v2_http")]


def measure(
    proc: servers.Proc, path: LoadPath, connections: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Closed-loop load on one path; server CPU and images over the measured window."""
    t0 = time.monotonic() + 0.2
    window_start, window_end = t0 + warmup_s, t0 + warmup_s + duration_s
    results: list[loadgen.Result] = []
    load = threading.Thread(
        target=lambda: results.extend(
            loadgen.closed_loop(path.target, connections, warmup_s + duration_s, t0=t0)
        )
    )
    load.start()
    time.sleep(max(0.0, window_start - time.monotonic()))
    cpu0, m0 = proc.cpu_s(), servers.scrape(proc.port)
    time.sleep(max(0.0, window_end - time.monotonic()))
    cpu1, m1 = proc.cpu_s(), servers.scrape(proc.port)
    load.join()
    inside = [r for r in results if warmup_s <= r.finished_s <= warmup_s + duration_s]
    latencies = [r.latency_s for r in inside if r.status == 200]
    errors = Counter(r.error or str(r.status) for r in inside if r.status != 200)
    key = f'imgserve_images_total{{protocol="{path.protocol}"}}'
    images = m1.get(key, 0.0) - m0.get(key, 0.0)
    cpu_s = cpu1 - cpu0
    summary = loadgen.summarise(latencies, dict(errors), duration_s, 1)
    return {
        "path": path.name,
        "images": images,
        "server_cpu_s": cpu_s,
        "cpu_ms_per_image": 1000 * cpu_s / images if images else float("nan"),
        "images_per_s": summary["images_per_s"],
        "p50_ms": summary["latency_ms"]["p50"],
        "p99_ms": summary["latency_ms"]["p99"],
        "errors": summary["error_count"],
        "mean_batch": servers.metrics_delta(m0, m1).mean_batch_size,
    }


def split_cpus(pin: str) -> tuple[set[int] | None, str | None]:
    """(client CPUs, server CPUs as taskset text): 'auto' puts the server on the last core."""
    if pin == "none":
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "auto":
        if len(cpus) < 2:
            return None, None
        return set(cpus[:1]), ",".join(str(c) for c in cpus[1:])
    client, server = pin.split(":")
    return {int(c) for c in client.split(",")}, server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.v2_point", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "default" / "model.onnx")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per path and round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pin", default="auto", help="auto, none, or CLIENT_CPUS:SERVER_CPUS, e.g. 0:1")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)

    client_cpus, server_cpus = split_cpus(args.pin)
    images = [encode(resize_crop(photo, 500, 375), "JPEG") for _, photo in load_source_photos()]
    log_dir = REPO_ROOT / "bench" / "results" / "v2_point"
    topo = servers.start_ours("server", args.model, {}, log_dir, server_cpus)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    try:
        proc = topo.procs[0]
        model_name = httpx.get(f"http://{HOST}:{proc.port}/v1/models").json()["models"][0]["name"]
        paths = build_paths(proc.port, model_name, images)
        print(
            f"server pid {proc.server.pid} on CPUs {server_cpus or 'any'}; "
            f"load generator on {client_cpus or 'any'}"
        )
        print(
            f"{len(images)} photos at 500x375 JPEG, c={args.connections}, "
            f"{args.rounds} rounds of {args.duration} s"
        )
        rounds = []
        for index in range(args.rounds):
            order = paths if index % 2 == 0 else paths[::-1]  # alternate which path goes first
            result = {p.name: measure(proc, p, args.connections, args.warmup, args.duration) for p in order}
            rounds.append(result)
            ratio = result[paths[1].name]["cpu_ms_per_image"] / result[paths[0].name]["cpu_ms_per_image"]
            for name in (p.name for p in paths):
                r = result[name]
                print(
                    f"round {index + 1}  {name:20s} {r['images_per_s']:7.1f} img/s  "
                    f"p50 {r['p50_ms']:7.1f} ms  "
                    f"p99 {r['p99_ms']:7.1f} ms  server CPU {r['cpu_ms_per_image']:6.2f} ms/img  "
                    f"mean batch {r['mean_batch'] or float('nan'):5.1f}  errors {r['errors']}"
                )
            print(f"round {index + 1}  v2 / predict CPU per image: {ratio:.3f}")
    finally:
        topo.stop()
    ratios = [r[paths[1].name]["cpu_ms_per_image"] / r[paths[0].name]["cpu_ms_per_image"] for r in rounds]
    median = statistics.median(ratios)
    verdict = "met" if median <= 1.10 else "missed"
    print(
        f"median v2 / predict server CPU per image over {len(ratios)} rounds: {median:.3f} "
        f"(target <= 1.10: {verdict})"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"rounds": rounds, "ratios": ratios, "median_ratio": median}, indent=2)
        )


if __name__ == "__main__":
    main()
