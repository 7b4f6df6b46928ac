"""Precision variants side by side: the model alone, then through the server at c=1 and c=32.

    python -m bench.precision --variant models/default/variants/int8/model.onnx --rounds 3

Model only: CPU-ms per image, one thread, batch 16, on real-photo crops, each file on the
runtime its card is made for (fp32: ONNX Runtime's CPU provider; an OpenVINO variant: the
OpenVINO runtime), interleaved over rounds in one process. Through the server: one server per
model and round, the fp32 model first, each measured at c=1 and at c=32 with ``bench run``'s
load generator and pinning; the ratios are the medians of the per-round ratios. Serves a
variant whatever its gate said (that is the point of measuring it): its card's provider is
used, as ``IMGSERVE_EXECUTION_PROVIDER=auto`` does.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from bench import servers
from bench.run import Point, choose_cpus, measure_point
from bench.workloads import build_image_sets, build_workloads
from model_card import load_card

CONCURRENCIES = (1, 32)


def model_only(fp32: Path, variants: list[Path], rounds: int) -> dict[str, Any]:
    from model_export.optimize import cpu_ms_per_image, openvino_runner, ort_runner
    from model_export.photos import GATE_PHOTOS, photo_crops

    card = load_card(fp32)
    crops = photo_crops(GATE_PHOTOS, 64, card.preprocessing, seed=7, source="bench")
    runners = {"fp32": ort_runner(fp32)}
    for path in variants:
        variant = load_card(path)
        runner = openvino_runner if variant.execution_provider == "openvino" else ort_runner
        runners[f"{variant.precision} ({variant.execution_provider})"] = runner(path)
    timings = cpu_ms_per_image(runners, crops.pixels, rounds=rounds)
    return {
        name: {"cpu_ms_per_image": ms, "speedup_vs_fp32": timings["fp32"] / ms}
        for name, ms in timings.items()
    }


def through_server(args: argparse.Namespace, models: dict[str, Path]) -> dict[str, Any]:
    out: Path = args.out.resolve()
    client_cpus, server_cpus, client_procs = choose_cpus(args.pin)
    sets = build_image_sets(out / "images")
    workload = build_workloads(sets, [args.workload])[args.workload]
    workload.to_json(out / "workloads" / args.workload)
    rows: list[dict[str, Any]] = []
    for index in range(args.rounds):
        row: dict[str, Any] = {}
        for name, path in models.items():
            topo = servers.start_ours(f"{name}-{index}", path.resolve(), {}, out / "logs", server_cpus)
            try:
                for concurrency in CONCURRENCIES:
                    point = Point(name, args.workload, concurrency)
                    result = measure_point(
                        topo,
                        point,
                        out / "workloads" / args.workload,
                        args,
                        client_cpus,
                        client_procs,
                        0.0,
                        out,
                    )
                    result.pop("latency_sample_ms", None)
                    row[f"{name}@c{concurrency}"] = result
                    print(
                        f"round {index} {name:>5} c={concurrency:<2}: "
                        f"{result['images_per_s']:7.1f} images/s, "
                        f"p50 {result['latency_ms']['p50']:7.1f} ms, "
                        f"{1000 * result['server_cpu_s_per_image']:6.2f} CPU-ms/image, "
                        f"errors {result['error_count']}",
                        flush=True,
                    )
            finally:
                topo.stop()
        rows.append(row)
    return {"rounds": rows, "summary": summarise(rows, list(models))}


def summarise(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    base = names[0]
    summary: dict[str, Any] = {}
    for name in names[1:]:
        summary[name] = {
            "c32_images_per_s_ratio": statistics.median(
                r[f"{name}@c32"]["images_per_s"] / r[f"{base}@c32"]["images_per_s"] for r in rows
            ),
            "c1_p50_ratio": statistics.median(
                r[f"{name}@c1"]["latency_ms"]["p50"] / r[f"{base}@c1"]["latency_ms"]["p50"] for r in rows
            ),
        }
    for name in names:
        summary.setdefault(name, {}).update(
            {
                "c32_images_per_s": statistics.median(r[f"{name}@c32"]["images_per_s"] for r in rows),
                "c1_p50_ms": statistics.median(r[f"{name}@c1"]["latency_ms"]["p50"] for r in rows),
            }
        )
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=Path("models/default/model.onnx"), help="the fp32 model"
    )
    parser.add_argument("--variant", type=Path, action="append", required=True, help="a variant's model.onnx")
    parser.add_argument("--out", type=Path, default=Path("bench/results/precision"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workload", default="jpeg_500x375")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--pin", default="auto")
    parser.add_argument("--skip-server", action="store_true", help="the model-only part alone")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"model_only": model_only(args.model, args.variant, args.rounds)}
    for name, figures in results["model_only"].items():
        print(
            f"model only {name:>18}: {figures['cpu_ms_per_image']:6.2f} CPU-ms/image, "
            f"{figures['speedup_vs_fp32']:.2f}x fp32",
            flush=True,
        )
    if not args.skip_server:
        models = {"fp32": args.model} | {load_card(p).precision: p for p in args.variant}
        results["server"] = through_server(args, models)
        for name, figures in results["server"]["summary"].items():
            print(f"server {name}: {json.dumps(figures)}")
    (args.out / "precision.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
