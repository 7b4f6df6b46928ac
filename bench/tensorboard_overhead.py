"""What TensorBoard logging costs a training run: the README's digits example with and without it.

    python -m bench.tensorboard_overhead [--rounds 3] [--out bench/results/tensorboard-overhead]

Writes the digits (``python -m model_export sample-data digits``) if they are missing, then
runs the worked example's ``train`` command (efficientnet_lite0, 64 px, 2 head + 4 fine-tuning
epochs) ``--rounds`` times each with ``--no-tensorboard`` and with ``--tensorboard``,
alternating, so both sides share the machine's load. Prints each run's wall and CPU time and
the time the run itself spent inside the logging calls (``train`` reports it), and the medians of
the per-round ratios (on / off); writes results.json. On a busy shared machine the wall-time
ratio carries the neighbours' noise; the in-run logging time does not.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_ARGS = [
    "--arch", "efficientnet_lite0", "--crop-size", "64", "--resize-size", "64",
    "--head-epochs", "2", "--epochs", "4", "--lr", "3e-3", "--hflip-prob", "0",
]  # fmt: skip


def run_train(data_dir: Path, output_dir: Path, tensorboard: bool) -> dict[str, float]:
    """One ``train`` run in a fresh process: its wall and CPU seconds (children included), and the
    seconds it says it spent in TensorBoard logging."""
    flag = "--tensorboard" if tensorboard else "--no-tensorboard"
    command = [sys.executable, "-m", "model_export", "train", "--data", str(data_dir), *EXAMPLE_ARGS]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started_s = time.perf_counter()
    done = subprocess.run(
        [*command, "--output-dir", str(output_dir), flag],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    wall_s = time.perf_counter() - started_s
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    logged = re.search(r"TensorBoard logging ([0-9.]+) s", done.stdout)
    return {"wall_s": wall_s, "cpu_s": cpu_s, "logging_s": float(logged.group(1)) if logged else 0.0}


def measure(out: Path, rounds: int) -> dict[str, Any]:
    data_dir = out / "data" / "digits64"
    if not data_dir.is_dir():
        subprocess.run(
            [sys.executable, "-m", "model_export", "sample-data", "digits", "--output-dir", str(data_dir)],
            cwd=REPO_ROOT,
            check=True,
        )
    rows = []
    for index in range(rounds):
        row = {}
        for side, tensorboard in (("off", False), ("on", True)):
            run = row[side] = run_train(data_dir, out / "runs" / f"{side}-{index}", tensorboard)
            print(
                f"round {index + 1}: tensorboard {side:3}  wall {run['wall_s']:6.1f} s  "
                f"cpu {run['cpu_s']:6.1f} s  logging {run['logging_s']:4.1f} s",
                flush=True,
            )
        rows.append(row)

    def median_ratio(top: str, key: str, bottom: str, bottom_key: str) -> float:
        return statistics.median(row[top][key] / row[bottom][bottom_key] for row in rows)

    return {
        "command": f"python -m model_export train --data DIGITS64 {' '.join(EXAMPLE_ARGS)}",
        "rounds": rows,
        "median_wall_ratio_on_over_off": median_ratio("on", "wall_s", "off", "wall_s"),
        "median_cpu_ratio_on_over_off": median_ratio("on", "cpu_s", "off", "cpu_s"),
        "median_logging_share_of_wall": median_ratio("on", "logging_s", "on", "wall_s"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/tensorboard-overhead"))
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    result = measure(out, args.rounds)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"median per-round ratio on/off: wall {result['median_wall_ratio_on_over_off']:.3f}, "
        f"CPU {result['median_cpu_ratio_on_over_off']:.3f}; time inside the logging calls: "
        f"{result['median_logging_share_of_wall']:.1%} of the run (median)"
    )


if __name__ == "__main__":
    main()
