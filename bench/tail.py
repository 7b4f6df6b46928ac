"""The open-loop tail against an ideal server at the same load and the same measured costs.

    python -m bench tail --rounds 3 --out bench/results/tail      # p99 at 50% of capacity

Each round starts a fresh server (our defaults, pinned as in ``bench run``), measures its
capacity (closed loop, ``--concurrency`` clients, the best images/s the suite calls capacity),
then offers Poisson arrivals at each ``--loads`` fraction of that capacity (open loop; latency
from when each request fell due). The yardstick is :mod:`bench.queueing`'s ideal server with the
same model instances and the same capacity (``instances / capacity`` seconds per image, so the
load is the same fraction of both), batches capped as the server caps them: the tail that
queueing alone sets. It prints, per round and load, the measured p50/p99, the ideal's p99 and
their ratio, and the medians over the rounds.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

import httpx

from bench import servers
from bench.queueing import simulate
from bench.run import Point, choose_cpus, measure_point, parse_cpus
from bench.workloads import build_image_sets, build_workloads


def served_max_batch_size(port: int) -> int:
    """The default model's batch size cap, as the server reports it."""
    listing = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
    default = next(m for m in listing["models"] if m["name"] == listing["default_model"])
    return int(default["batching"]["max_batch_size"])


def server_instances(server_cpus: str | None) -> int:
    """Model instances of a server with default settings: one per core it may run on."""
    return len(parse_cpus(server_cpus)) if server_cpus else len(os.sched_getaffinity(0))


def run_tail(args: Any) -> dict[str, Any]:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    client_cpus, server_cpus, client_procs = choose_cpus(args.pin)
    workload = build_workloads(build_image_sets(out / "images"), [args.workload])[args.workload]
    workload_dir = out / "workloads" / args.workload
    workload.to_json(workload_dir)
    settings = dict(item.split("=", 1) for item in args.setting)
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        topo = servers.start_ours(f"tail{index}", args.model.resolve(), settings, out / "logs", server_cpus)
        try:
            instances = args.instances or server_instances(server_cpus)
            max_batch = served_max_batch_size(topo.port)
            closed = measure_point(
                topo, Point("ours", args.workload, args.concurrency), workload_dir, args,
                client_cpus, client_procs, 0.0, out,
            )  # fmt: skip
            capacity = closed["images_per_s"]
            row: dict[str, Any] = {"capacity_images_per_s": capacity, "closed": closed, "loads": {}}
            for load in args.loads:
                point = Point("ours", args.workload, rate_fraction=load)
                rate = load * capacity / closed["images_per_request"]  # requests/s
                measured = measure_point(
                    topo, point, workload_dir, args, client_cpus, client_procs, rate, out
                )
                ideal = simulate(load, service_s=instances / capacity, servers=instances, max_batch=max_batch)
                row["loads"][str(load)] = {
                    "measured": measured,
                    "ideal_p50_ms": 1000 * ideal.p50_s,
                    "ideal_p99_ms": 1000 * ideal.p99_s,
                    "ratio_p99": measured["latency_ms"]["p99"] / (1000 * ideal.p99_s),
                }
                print_load(index, load, capacity, row["loads"][str(load)])
        finally:
            topo.stop()
        rounds.append(row)
    summary = {
        str(load): statistics.median(r["loads"][str(load)]["ratio_p99"] for r in rounds)
        for load in args.loads
    }
    for row in rounds:
        for entry in [row["closed"], *(v["measured"] for v in row["loads"].values())]:
            entry.pop("latency_sample_ms", None)
    (out / "tail.json").write_text(json.dumps({"median_p99_over_ideal": summary, "rounds": rounds}, indent=1))
    print(
        "median p99 / ideal p99 over the rounds: "
        + ", ".join(f"{float(k):.0%}: {v:.2f}x" for k, v in summary.items())
    )
    return summary


def print_load(index: int, load: float, capacity: float, entry: dict[str, Any]) -> None:
    m = entry["measured"]
    print(
        f"round {index}: capacity {capacity:6.1f} images/s; open loop at {load:.0%} "
        f"({m['images_per_s']:6.1f} images/s): p50 {m['latency_ms']['p50']:6.1f} ms, "
        f"p99 {m['latency_ms']['p99']:6.1f} ms; ideal p99 {entry['ideal_p99_ms']:6.1f} ms; "
        f"ratio {entry['ratio_p99']:5.2f}x; errors {m['error_count']}",
        flush=True,
    )
