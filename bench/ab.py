"""A/B a server change: the current ``app/`` against a patched copy, alternating, several rounds.

On a shared machine one pair of runs proves nothing; alternating A, B, A, B ... and taking the
median of the per-round ratios does. Used for the "predicted vs measured" notes in
docs/BENCHMARKS.md:

    cp -r app /tmp/variant/app && $EDITOR /tmp/variant/app/...   # the change
    python -m bench ab --variant-dir /tmp/variant --rounds 3 --out bench/results/ab-NAME

Both sides run the same model, settings, workload and concurrency, pinned as in ``bench run``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench import servers
from bench.run import Point, choose_cpus, measure_point
from bench.workloads import build_image_sets, build_workloads


def run_ab(args: Any) -> dict[str, Any]:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    client_cpus, server_cpus, client_procs = choose_cpus(args.pin)
    sets = build_image_sets(out / "images")
    workload = build_workloads(sets, [args.workload])[args.workload]
    workload.to_json(out / "workloads" / args.workload)
    settings = dict(kv.split("=", 1) for kv in args.setting)
    model = args.model.resolve()
    sides = {"A": servers.REPO_ROOT, "B": args.variant_dir.resolve()}
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        row: dict[str, Any] = {}
        for side, app_dir in sides.items():
            topo = servers.start_ours(
                f"{side}{index}", model, settings, out / "logs", server_cpus, cwd=app_dir
            )
            try:
                point = Point(side, args.workload, args.concurrency)
                row[side] = measure_point(
                    topo, point, out / "workloads" / args.workload, args, client_cpus, client_procs, 0.0, out
                )
            finally:
                topo.stop()
            r = row[side]
            print(
                f"round {index} {side}: {r['images_per_s']:7.1f} images/s  "
                f"{1000 * r['server_cpu_s_per_image']:6.2f} CPU-ms/image  "
                f"p99 {r['latency_ms']['p99']:7.1f} ms  "
                f"batch {r['mean_batch_size'] or float('nan'):4.1f}  errors {r['error_count']}",
                flush=True,
            )
        rounds.append(row)
    cpu_ratio = statistics.median(
        r["B"]["server_cpu_s_per_image"] / r["A"]["server_cpu_s_per_image"] for r in rounds
    )
    tput_ratio = statistics.median(r["B"]["images_per_s"] / r["A"]["images_per_s"] for r in rounds)
    summary = {
        "variant_dir": str(args.variant_dir),
        "workload": args.workload,
        "concurrency": args.concurrency,
        "settings": settings,
        "median_cpu_per_image_ratio_B_over_A": cpu_ratio,
        "median_throughput_ratio_B_over_A": tput_ratio,
    }
    for row in rounds:
        for r in row.values():
            r.pop("latency_sample_ms", None)
    (out / "ab.json").write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=1))
    print(
        f"B/A over {args.rounds} rounds (median): CPU per image {cpu_ratio:.3f}x, images/s {tput_ratio:.3f}x"
    )
    return summary
