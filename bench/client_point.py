"""The Python client's benchmark point: is ``imgserve-client classify`` ever the bottleneck?

``python -m bench.client_point`` starts one server (the default model, default settings),
writes 1,000 distinct 500x375 JPEGs made from the packaged photos, and then, at each
concurrency N, in interleaved rounds (the order reverses every round, so a slow minute on a
shared machine hits every side):

- ``loadgen 1/req``: ``harness.loadgen``, N keep-alive connections, one raw JPEG per request;
- ``loadgen K/req``: the same with K images per multipart request, when the client packs K;
- ``client K/req``: ``imgserve-client classify FOLDER --concurrency N`` over the 1,000 files
  (its own figure: images classified / seconds from its first request to its last).

The load generator and the client run on the same cores, the server on the others (as
``python -m bench run`` splits them). Printed: images/s, the server's and the client's CPU
milliseconds per image, and client / the load generator's best, per round and over the
medians; the target is at least 0.8.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from imgserve_client import Client
from imgserve_client.images import images_per_request

from bench import servers
from bench.run import choose_cpus
from bench.workloads import Workload, load_source_photos, multipart_body, resize_crop

REPO_ROOT = servers.REPO_ROOT
DEFAULT_MODEL = REPO_ROOT / "models" / "default" / "model.onnx"
CLI = Path(sys.executable).with_name("imgserve-client")
SUMMARY = re.compile(r"classified (\d+) of (\d+) images in ([0-9.]+) s \(([0-9.]+) images/s\)")


def make_photos(folder: Path, count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct 500x375 JPEGs (quality 90): random crops of the packaged photos."""
    rng = random.Random(seed)
    sources = [photo for _, photo in load_source_photos()]
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(count):
        photo = sources[i % len(sources)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        path = folder / f"{i:04d}.jpg"
        resize_crop(photo.crop((x, y, x + cw, y + ch)), 500, 375).save(path, "JPEG", quality=90)
        images.append(path.read_bytes())
    return images


def write_workloads(out: Path, images: list[bytes], pack: int) -> dict[str, Path]:
    """The load generator's request bodies: one raw JPEG each, and packs of ``pack`` if > 1."""
    workloads = [Workload("jpeg_500x375", 1, [(data, "image/jpeg") for data in images])]
    if pack > 1:
        packs = [images[i : i + pack] for i in range(0, len(images) - pack + 1, pack)]
        bodies = [multipart_body([(d, "image/jpeg") for d in p]) for p in packs]
        workloads.append(Workload(f"multi{pack}_500x375", pack, bodies))
    paths = {}
    for workload in workloads:
        paths[f"loadgen {workload.images_per_request}/req"] = out / workload.name
        workload.to_json(out / workload.name)
    return paths


def run_loadgen(
    workload: Path, port: int, connections: int, duration_s: float, cpus: str | None
) -> dict[str, Any]:
    argv = [sys.executable, "-m", "harness.loadgen", "--workload", str(workload), "--port", str(port)]
    argv += ["--connections", str(connections), "--warmup", "1", "--duration", str(duration_s)]
    with subprocess.Popen(
        [*servers.taskset_prefix(cpus), *argv], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    ) as proc:
        stdout, _ = proc.communicate(timeout=duration_s + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator failed ({proc.returncode})")
    result = json.loads(stdout[: stdout.rindex("}") + 1])
    if result["error_count"]:
        raise RuntimeError(f"the load generator saw errors: {result['errors']} {result['sample_error_body']}")
    sent_images = result["requests_sent"] * result["images_per_request"]
    return {
        "images_per_s": result["images_per_s"],
        "client_cpu_ms_per_image": 1000 * result["client_cpu_s"] / sent_images,
    }


def run_client(folder: Path, port: int, concurrency: int, cpus: str | None, out: Path) -> dict[str, Any]:
    output = out / "labels.jsonl"
    output.unlink(missing_ok=True)
    argv = [str(CLI), "classify", str(folder), "--url", f"http://127.0.0.1:{port}", "-o", str(output)]
    argv += ["--concurrency", str(concurrency), "--no-progress"]
    usage_before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    run = subprocess.run([*servers.taskset_prefix(cpus), *argv], capture_output=True, text=True, check=False)
    wall_s, usage_after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    match = SUMMARY.search(run.stderr)
    if run.returncode != 0 or match is None or match.group(1) != match.group(2):
        raise RuntimeError(f"the client failed ({run.returncode}):\n{run.stderr[-2000:]}")
    classified = int(match.group(1))
    retries = re.search(r"retries: (\d+)", run.stderr)
    return {
        "images_per_s": float(match.group(4)),
        "seconds": float(match.group(3)),
        "command_wall_s": wall_s,  # with the interpreter's start and the /v1/models call
        "images": classified,
        "client_cpu_ms_per_image": 1000 * cpu_s / classified,  # the whole command, start-up included
        "retries": int(retries.group(1)) if retries else None,
    }


CPU_KEYS = ("server_cpu_ms_per_image", "client_cpu_ms_per_image")


def describe(result: dict[str, Any]) -> str:
    return (
        f"{result['images_per_s']:7.1f} images/s  server {result['server_cpu_ms_per_image']:5.2f} ms/image"
        f"  client {result['client_cpu_ms_per_image']:5.2f} ms/image"
    )


def measure(topo: servers.Topology, run: Any) -> dict[str, Any]:
    """Run one measurement and add the server's CPU milliseconds per image over it."""
    cpu_before, metrics_before = topo.cpu_s(), servers.scrape(topo.port)
    result: dict[str, Any] = run()
    cpu_after, metrics_after = topo.cpu_s(), servers.scrape(topo.port)
    images = servers.metrics_delta(metrics_before, metrics_after).images_processed
    result["server_cpu_ms_per_image"] = 1000 * (cpu_after - cpu_before) / images if images else None
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--concurrency", default="8,32", help="comma-separated (%(default)s)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of each load generator run")
    parser.add_argument("--pin", default="auto", help="as bench run: auto, none, or CLIENT_CPUS:SERVER_CPUS")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "client_point")
    args = parser.parse_args(argv)
    if not CLI.exists():
        sys.exit(f"{CLI} is missing: install the client (pip install -e './client[cli]')")
    client_cpus, server_cpus, _ = choose_cpus(args.pin)
    print(f"client and load generator on cpus {client_cpus or 'any'}, server on {server_cpus or 'any'}")
    folder = args.out / "photos"
    images = make_photos(folder, args.images)
    topo = servers.start_ours("server", args.model, {}, args.out / "logs", server_cpus)
    rows: list[dict[str, Any]] = []
    try:
        with Client(f"http://127.0.0.1:{topo.port}") as client:
            model = client.models()[0]
        plan: list[tuple[int, str, Any]] = []
        for concurrency in map(int, args.concurrency.split(",")):
            pack = images_per_request(model, concurrency, len(images))  # what the client will send
            workloads = write_workloads(args.out / f"c{concurrency}", images, pack)
            for name, workload in workloads.items():
                plan.append((concurrency, name, (workload, concurrency)))
            plan.append((concurrency, f"client {pack}/req", (None, concurrency)))
        for round_index in range(args.rounds):
            for concurrency, name, (workload, c) in plan if round_index % 2 == 0 else plan[::-1]:
                if workload is not None:
                    result = measure(
                        topo, lambda w=workload, c=c: run_loadgen(w, topo.port, c, args.duration, client_cpus)
                    )
                else:
                    result = measure(
                        topo, lambda c=c: run_client(folder, topo.port, c, client_cpus, args.out)
                    )
                rows.append({"round": round_index + 1, "concurrency": concurrency, "name": name, **result})
                print(
                    f"round {round_index + 1}  c={concurrency:<3} {name:<15} {describe(result)}", flush=True
                )
    finally:
        topo.stop()
    report(rows, args)


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n{args.images} images, {args.rounds} interleaved rounds; medians:")
    summary: dict[str, Any] = {}
    for concurrency in sorted({r["concurrency"] for r in rows}):
        mine = [r for r in rows if r["concurrency"] == concurrency]
        names = list(dict.fromkeys(r["name"] for r in mine))

        def median(name: str, key: str, rows: list[dict[str, Any]] = mine) -> float:
            return statistics.median(r[key] for r in rows if r["name"] == name)

        client = next(n for n in names if n.startswith("client"))
        loadgens = [n for n in names if n.startswith("loadgen")]
        for name in names:
            medians = {key: median(name, key) for key in ("images_per_s", *CPU_KEYS)}
            print(f"  c={concurrency:<3} {name:<15} {describe(medians)}")
        per_round = []
        for round_index in range(1, args.rounds + 1):
            rate = {r["name"]: r["images_per_s"] for r in mine if r["round"] == round_index}
            per_round.append(rate[client] / max(rate[n] for n in loadgens))
        best = max(median(n, "images_per_s") for n in loadgens)
        ratio = median(client, "images_per_s") / best
        print(
            f"  c={concurrency:<3} client / load generator's best: {ratio:.2f} of the medians; per round "
            + ", ".join(f"{r:.2f}" for r in per_round)
            + f" (median {statistics.median(per_round):.2f})"
        )
        summary[str(concurrency)] = {"ratio_of_medians": ratio, "per_round": per_round}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
