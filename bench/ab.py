"""A/B a server change: one checkout of ``app/`` against another, alternating, several rounds.

On a shared machine one pair of runs proves nothing; alternating A, B, A, B ... and taking the
median of the per-round ratios does. Used for the "predicted vs measured" notes in
docs/BENCHMARKS.md and the memory figures of docs/SIZING.md:

    cp -r app /tmp/variant/app && $EDITOR /tmp/variant/app/...   # the change
    python -m bench ab --variant-dir /tmp/variant --rounds 3 --out bench/results/ab-NAME
    python -m bench ab --base-dir /tmp/old-checkout --variant-dir . --pin none   # old vs new
    python -m bench ab --variant-dir . --setting-b max_batch_size=8              # one setting

Both sides run the same model, workload and concurrency, pinned as in ``bench run``; ``--setting``
applies to both, ``--setting-a`` / ``--setting-b`` to one. Each side also reports the server's
resident memory (RSS) once ready, its peak during the load and again after it, the figures a replica's memory
request and limit follow from.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
from pathlib import Path
from typing import Any

from bench import servers
from bench.run import Point, choose_cpus, measure_point
from bench.workloads import build_image_sets, build_workloads
from harness.server import rss_bytes

MB = 1024 * 1024


def run_ab(args: Any) -> dict[str, Any]:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    client_cpus, server_cpus, client_procs = choose_cpus(args.pin)
    sets = build_image_sets(out / "images")
    workload = build_workloads(sets, [args.workload])[args.workload]
    workload.to_json(out / "workloads" / args.workload)
    shared = parse_settings(args.setting)
    settings = {"A": shared | parse_settings(args.setting_a), "B": shared | parse_settings(args.setting_b)}
    model = args.model.resolve()
    sides = {"A": (args.base_dir or servers.REPO_ROOT).resolve(), "B": args.variant_dir.resolve()}
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        row: dict[str, Any] = {}
        for side, app_dir in sides.items():
            topo = servers.start_ours(
                f"{side}{index}", model, settings[side], out / "logs", server_cpus, cwd=app_dir
            )
            try:
                pid = topo.procs[0].server.pid
                rss_ready = rss_bytes(pid)
                point = Point(side, args.workload, args.concurrency)
                with PeakRss(pid) as peak:
                    row[side] = measure_point(
                        topo,
                        point,
                        out / "workloads" / args.workload,
                        args,
                        client_cpus,
                        client_procs,
                        0.0,
                        out,
                    )
                row[side] |= {
                    "rss_ready_mb": rss_ready / MB,
                    "rss_peak_mb": peak.peak / MB,
                    "rss_after_mb": rss_bytes(pid) / MB,
                }
            finally:
                topo.stop()
            print_side(index, side, row[side])
        rounds.append(row)
    summary = summarise_rounds(rounds) | {
        "base_dir": str(sides["A"]),
        "variant_dir": str(sides["B"]),
        "workload": args.workload,
        "concurrency": args.concurrency,
        "settings": settings,
    }
    for row in rounds:
        for r in row.values():
            r.pop("latency_sample_ms", None)
    (out / "ab.json").write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=1))
    print(
        f"B/A over {args.rounds} rounds (median): CPU per image "
        f"{summary['median_cpu_per_image_ratio_B_over_A']:.3f}x, images/s "
        f"{summary['median_throughput_ratio_B_over_A']:.3f}x; RSS after load (median) "
        f"A {summary['median_rss_after_mb']['A']:.0f} MB, B {summary['median_rss_after_mb']['B']:.0f} MB"
    )
    return summary


class PeakRss:
    """The highest RSS of ``pid`` sampled every ``interval_s`` while the block runs."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def parse_settings(items: list[str]) -> dict[str, str]:
    """``["max_batch_size=8"]`` -> ``{"max_batch_size": "8"}``."""
    return dict(item.split("=", 1) for item in items)


def print_side(index: int, side: str, r: dict[str, Any]) -> None:
    print(
        f"round {index} {side}: {r['images_per_s']:7.1f} images/s  "
        f"{1000 * r['server_cpu_s_per_image']:6.2f} CPU-ms/image  "
        f"p99 {r['latency_ms']['p99']:7.1f} ms  "
        f"batch {r['mean_batch_size'] or float('nan'):4.1f}  errors {r['error_count']}  "
        f"RSS MB ready {r['rss_ready_mb']:.0f} peak {r['rss_peak_mb']:.0f} after {r['rss_after_mb']:.0f}",
        flush=True,
    )


def summarise_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians over rounds: B/A ratios of CPU per image and images/s, and each side's RSS."""

    def median_of(side: str, key: str) -> float:
        return statistics.median(r[side][key] for r in rounds)

    return {
        "median_cpu_per_image_ratio_B_over_A": statistics.median(
            r["B"]["server_cpu_s_per_image"] / r["A"]["server_cpu_s_per_image"] for r in rounds
        ),
        "median_throughput_ratio_B_over_A": statistics.median(
            r["B"]["images_per_s"] / r["A"]["images_per_s"] for r in rounds
        ),
        "median_images_per_s": {side: median_of(side, "images_per_s") for side in ("A", "B")},
        "median_rss_ready_mb": {side: median_of(side, "rss_ready_mb") for side in ("A", "B")},
        "median_rss_peak_mb": {side: median_of(side, "rss_peak_mb") for side in ("A", "B")},
        "median_rss_after_mb": {side: median_of(side, "rss_after_mb") for side in ("A", "B")},
    }
