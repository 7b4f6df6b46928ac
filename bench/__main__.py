"""``python -m bench``: the benchmark suite's commands (see docs/BENCHMARKS.md).

python -m bench run --out bench/results/$(date +%F)   # the full run (~10 min on 2 cores)
python -m bench run --smoke --out bench/results/smoke  # seconds: what CI runs
python -m bench report bench/results/DIR               # redo report.md and plots from results.json
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="the image-server benchmark suite")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="ceiling + every topology and workload, side by side; report and plots")
    run.add_argument(
        "--out", type=Path, default=Path("bench/results") / datetime.now().strftime("%Y-%m-%d-%H%M")
    )
    run.add_argument("--smoke", action="store_true", help="a few seconds of each piece, a tiny model (CI)")
    run.add_argument(
        "--model", type=Path, help="ONNX model (default: models/default/model.onnx, exported if absent)"
    )
    run.add_argument(
        "--naive-model", type=Path, help="the naive baseline's model (default: a float-input twin)"
    )
    run.add_argument("--duration", type=float, help="measured seconds per point (default 10, smoke 2)")
    run.add_argument(
        "--warmup", type=float, help="unmeasured seconds before each point (default 2, smoke 0.5)"
    )
    run.add_argument(
        "--ceiling-duration", type=float, help="seconds per ceiling measurement (default 8, smoke 1)"
    )
    run.add_argument(
        "--pin",
        default="auto",
        help="auto (client on the first quarter of the cores, servers on the rest), none, "
        "or CLIENT_CPUS:SERVER_CPUS in taskset syntax, e.g. 0:1 or 0-3:4-15",
    )
    run.add_argument(
        "--client-procs", type=int, default=0, help="load generator processes (default: one per client core)"
    )
    run.add_argument(
        "--require-cuda", action="store_true", help="GPU machine: fail unless every session runs on CUDA"
    )
    run.add_argument("--only", nargs="+", help="run only the points whose key contains one of these strings")
    ab = sub.add_parser("ab", help="A/B the current app/ against a patched copy, alternating rounds")
    ab.add_argument("--variant-dir", type=Path, required=True, help="B: a folder holding the patched app/")
    ab.add_argument(
        "--base-dir", type=Path, help="A: a folder holding the app/ to compare with (default: this one)"
    )
    ab.add_argument("--out", type=Path, default=Path("bench/results/ab"))
    ab.add_argument("--model", type=Path, default=Path("models/default/model.onnx"))
    ab.add_argument("--workload", default="jpeg_500x375")
    ab.add_argument("--concurrency", type=int, default=32)
    ab.add_argument("--rounds", type=int, default=3)
    ab.add_argument("--duration", type=float, default=10.0)
    ab.add_argument("--warmup", type=float, default=2.0)
    ab.add_argument("--pin", default="auto")
    ab.add_argument(
        "--setting", nargs="*", default=[], help="server settings for both sides, e.g. max_batch_size=8"
    )
    ab.add_argument("--setting-a", nargs="*", default=[], help="server settings for side A only")
    ab.add_argument("--setting-b", nargs="*", default=[], help="server settings for side B only")
    tail = sub.add_parser("tail", help="open-loop p99 against the ideal server of bench.queueing, in rounds")
    tail.add_argument("--out", type=Path, default=Path("bench/results/tail"))
    tail.add_argument("--model", type=Path, default=Path("models/default/model.onnx"))
    tail.add_argument("--workload", default="jpeg_500x375")
    tail.add_argument("--concurrency", type=int, default=32, help="closed-loop clients for capacity")
    tail.add_argument("--loads", type=float, nargs="+", default=[0.5], help="fractions of capacity")
    tail.add_argument("--rounds", type=int, default=3)
    tail.add_argument("--duration", type=float, default=30.0, help="measured seconds per point")
    tail.add_argument("--warmup", type=float, default=3.0)
    tail.add_argument("--pin", default="none", help="as bench run's --pin (default none: every core)")
    tail.add_argument(
        "--instances", type=int, default=0, help="the ideal's instances (0: the server's cores)"
    )
    tail.add_argument("--setting", nargs="*", default=[], help="server settings, e.g. max_batch_size=8")
    report = sub.add_parser("report", help="rewrite report.md and the plots from a results.json")
    report.add_argument("folder", type=Path)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "ab":
        from bench.ab import run_ab

        run_ab(args)
        return
    if args.command == "tail":
        from bench.tail import run_tail

        run_tail(args)
        return
    if args.command == "report":
        from bench.report import write_report

        print(write_report(json.loads((args.folder / "results.json").read_text()), args.folder).read_text())
        return
    # smoke: 2 s windows, so a point on a busy shared CI core still completes a few requests
    defaults = (2.0, 0.5, 1.0) if args.smoke else (10.0, 2.0, 8.0)
    args.duration = args.duration or defaults[0]
    args.warmup = args.warmup if args.warmup is not None else defaults[1]
    args.ceiling_duration = args.ceiling_duration or defaults[2]
    from bench.run import execute

    execute(args)


if __name__ == "__main__":
    main()
