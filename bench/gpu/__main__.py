"""``python -m bench.gpu``: the GPU run (see bench/gpu/__init__.py and docs/GPU.md).

python -m bench.gpu --out "$OUT"                  # on a machine with an NVIDIA GPU
python -m bench.gpu --dry-run --out /tmp/gpu-dry  # the same plan on the CPU, in seconds
python -m bench.gpu report DIR                    # redo report.md and the plots
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.gpu.plan import DEFAULT_BUDGET_S, RESULTS, STEP_NAMES, RunOptions, run_plan


def parse_limits(items: list[str]) -> dict[str, float]:
    limits = {}
    for item in items:
        name, _, seconds = item.partition("=")
        if name not in STEP_NAMES or not seconds:
            raise SystemExit(
                f"--limit {item!r}: expected STEP=SECONDS with STEP one of {', '.join(STEP_NAMES)}"
            )
        limits[name] = float(seconds)
    return limits


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        from bench.gpu.report import write_report

        folder = Path(argv[1])
        print(write_report(json.loads((folder / RESULTS).read_text()), folder).read_text())
        return
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description="the GPU run, in minutes")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/results/gpu"),
        help="results.json, report.md and the plots (nothing else)",
    )
    parser.add_argument("--work", type=Path, help="models, images, logs (default: OUT/../gpu-work)")
    parser.add_argument("--dry-run", action="store_true", help="CPU provider, tiny model and sizes (CI)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run")
    parser.add_argument("--only", nargs="+", choices=STEP_NAMES, default=[], help="run only these steps")
    parser.add_argument("--limit", nargs="+", default=[], metavar="STEP=SECONDS", help="override step limits")
    parser.add_argument("--model", type=Path, help="fp32 model (default: models/default/model.onnx)")
    parser.add_argument("--fp16-model", type=Path, help="fp16 twin (default: models/default-fp16/model.onnx)")
    parser.add_argument(
        "--images", type=Path, help="a folder of real photos as 500x375 JPEGs (default: made)"
    )
    args = parser.parse_args(argv)
    out = args.out.resolve()
    options = RunOptions(
        out=out,
        work=(args.work or out.parent / f"{out.name}-work").resolve(),
        dry_run=args.dry_run,
        budget_s=args.budget,
        only=tuple(args.only),
        limits=parse_limits(args.limit),
        model=args.model,
        fp16_model=args.fp16_model,
        images=args.images,
    )
    results = run_plan(options)
    failed = [name for name, step in results["steps"].items() if step["status"] in ("failed", "timeout")]
    if not options.dry_run and results["steps"].get("env", {}).get("status") != "ok":
        failed = failed or ["env"]
    if failed:
        raise SystemExit(f"steps that did not finish: {', '.join(failed)} (see {out / 'report.md'})")


if __name__ == "__main__":
    main()
