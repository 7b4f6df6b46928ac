"""What explanations cost: the graph's maps, and the server's CPU per image with them on and off.

    python -m bench.explain graph --model DIR=LABEL ... [--rounds 5] [--batch 16]
    python -m bench.explain server --side LABEL=APP_DIR,MODEL_DIR,QUERY ... [--rounds 3]

``graph`` runs each exported model in ONNX Runtime on one thread (as a model instance runs in
the server) over a batch of real photos, fetching the probabilities only and, where the graph
has them, the maps too; CPU seconds per image, the median over interleaved rounds (each round
runs every variant once, in a rotating order, so drift on a shared machine hits them alike).

``server`` starts each side's server (its own ``app/`` and model) in turn, round after round,
and drives it closed-loop at ``--concurrency`` with 500x375 JPEGs to ``/predict?QUERY``; it
reports the server's CPU per image (``bench run``'s measure) and each side's median ratio to
the first side.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def _photos_as_batch(spec: Any, batch: int) -> np.ndarray:
    from app.inference.preprocess import ImageLimits, preprocess
    from tests.app.photos import PHOTOS

    limits = ImageLimits(frozenset({"PNG", "JPEG"}), 100_000_000)
    arrays = [preprocess(path.read_bytes(), spec, limits, name) for name, (path, _) in PHOTOS.items()]
    return np.stack([arrays[i % len(arrays)] for i in range(batch)])


def _cpu_s_per_image(run: Any, batch: np.ndarray, seconds: float) -> float:
    run(batch)  # warm
    start_cpu, start = time.thread_time(), time.perf_counter()
    images = 0
    while time.perf_counter() - start < seconds:
        run(batch)
        images += len(batch)
    return (time.thread_time() - start_cpu) / images


def run_graph(args: argparse.Namespace) -> dict[str, float]:
    from app.inference.engine import EngineOptions, create_engine

    engines = {}
    for item in args.model:
        folder, _, label = item.partition("=")
        options = EngineOptions(intra_op_threads=1, instances=1)
        engines[label or folder] = create_engine(Path(folder) / "model.onnx", options)
    first = next(iter(engines.values()))
    batch = _photos_as_batch(first.card.preprocessing, args.batch)
    variants: dict[str, Any] = {}
    for label, engine in engines.items():
        variants[f"{label}: probabilities"] = engine.run
        if engine.explains:
            variants[f"{label}: with maps"] = lambda b, engine=engine: engine.run(b, explain=True)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            samples[name].append(_cpu_s_per_image(variants[name], batch, args.seconds))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    base = medians[names[0]]
    print(
        f"\nbatch {args.batch}, one thread, median of {args.rounds} interleaved rounds of {args.seconds:g} s:"
    )
    for name in names:
        print(f"  {name:45s} {1000 * medians[name]:6.2f} CPU-ms/image  {medians[name] / base:5.3f}x")
    return medians


def run_server(args: argparse.Namespace) -> dict[str, float]:
    from bench import servers
    from bench.run import Point, choose_cpus, measure_point
    from bench.workloads import build_image_sets, build_workloads

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    client_cpus, server_cpus, client_procs = choose_cpus(args.pin)
    sets = build_image_sets(out / "images")
    workload = build_workloads(sets, [args.workload])[args.workload]
    workload.to_json(out / "workloads" / args.workload)
    sides: dict[str, tuple[Path, Path, str]] = {}
    for item in args.side:
        label, _, spec = item.partition("=")
        app_dir, model_dir, query = [*spec.split(","), ""][:3]
        sides[label] = (Path(app_dir).resolve(), Path(model_dir).resolve() / "model.onnx", query)
    settings = dict(kv.split("=", 1) for kv in args.setting)
    samples: dict[str, list[float]] = {label: [] for label in sides}
    labels = list(sides)
    for round_index in range(args.rounds):
        order = labels[round_index % len(labels) :] + labels[: round_index % len(labels)]
        for label in order:
            app_dir, model, query = sides[label]
            topo = servers.start_ours(
                f"{label}{round_index}", model, settings, out / "logs", server_cpus, cwd=app_dir
            )
            try:
                point = Point(label, args.workload, args.concurrency)
                args.path = "/predict" + (f"?{query}" if query else "")
                result = measure_point(
                    topo, point, out / "workloads" / args.workload, args, client_cpus, client_procs, 0.0, out
                )
            finally:
                topo.stop()
            samples[label].append(result["server_cpu_s_per_image"])
            print(
                f"round {round_index + 1} {label:12s} {result['images_per_s']:7.1f} images/s  "
                f"{1000 * result['server_cpu_s_per_image']:6.2f} CPU-ms/image  "
                f"p99 {result['latency_ms']['p99']:7.1f} ms  errors {result['error_count']}",
                flush=True,
            )
    base = labels[0]
    print(
        f"\nc={args.concurrency}, {args.workload}, {args.rounds} interleaved rounds of {args.duration:g} s:"
    )
    medians = {}
    for label in labels:
        ratios = [s / b for s, b in zip(samples[label], samples[base], strict=True)]
        medians[label] = statistics.median(samples[label])
        print(
            f"  {label:12s} median {1000 * medians[label]:6.2f} CPU-ms/image; per-round ratio to {base}: "
            f"median {statistics.median(ratios):5.3f}x (rounds {', '.join(f'{r:.3f}' for r in ratios)})"
        )
    return medians


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    graph = sub.add_parser("graph", help="the maps' cost inside ONNX Runtime, one thread")
    graph.add_argument("--model", action="append", required=True, help="DIR=LABEL (DIR holds model.onnx)")
    graph.add_argument("--batch", type=int, default=16)
    graph.add_argument("--rounds", type=int, default=5)
    graph.add_argument("--seconds", type=float, default=3.0, help="per variant per round")
    server = sub.add_parser("server", help="server CPU per image, explain on and off, interleaved")
    server.add_argument(
        "--side", action="append", required=True, help="LABEL=APP_DIR,MODEL_DIR,QUERY (the first is the base)"
    )
    server.add_argument("--out", type=Path, default=Path("bench/results/explain"))
    server.add_argument("--workload", default="jpeg_500x375")
    server.add_argument("--concurrency", type=int, default=32)
    server.add_argument("--rounds", type=int, default=3)
    server.add_argument("--duration", type=float, default=10.0)
    server.add_argument("--warmup", type=float, default=2.0)
    server.add_argument("--pin", default="auto")
    server.add_argument("--setting", action="append", default=[], help="NAME=VALUE server setting")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "graph":
        run_graph(args)
    else:
        run_server(args)


if __name__ == "__main__":
    main()
