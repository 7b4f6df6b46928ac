"""The GPU run's plan (steps, limits, sizes), its results file, and the runner.

Each step runs in its own process group (``python -m bench.gpu.step NAME``) under a hard time
limit: a step that hangs (a CUDA call, a server that never gets ready) is killed with everything
it started, and the next step runs. A step also gets a soft deadline a little before its limit
and stops between measurements when it passes it, so a slow machine cuts points, not steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = "results.json"


@dataclass(frozen=True)
class Sizes:
    """How much each step measures: the GPU machine's sizes or the dry run's."""

    sweep_batches: tuple[int, ...]
    sweep_seconds: float  # per point
    parity_photos: int  # 0: every photo of the set
    server_warmup_s: float
    server_duration_s: float
    # topology -> concurrency levels, in the order they run (most important first)
    server_points: dict[str, tuple[int, ...]]
    server_processes: int  # the "several processes" topologies
    # open loop (Poisson arrivals) on batching_on at this offered rate: the latency target's point
    open_loop_images_per_s: float
    max_batch_size: int
    tensorrt_batches: tuple[int, ...]


GPU_SIZES = Sizes(
    sweep_batches=(1, 8, 32, 64, 128, 256),
    sweep_seconds=0.6,
    parity_photos=0,
    server_warmup_s=1.0,
    server_duration_s=3.0,
    server_points={
        "batching_on": (1, 8, 32, 128, 512),
        "batching_on_procs": (8, 32, 128, 512),
        "batching_off": (1, 32, 128, 512),
        "batching_off_procs": (32, 128, 512),
    },
    server_processes=4,
    open_loop_images_per_s=2000.0,
    max_batch_size=64,
    tensorrt_batches=(1, 32, 128),
)

DRY_SIZES = Sizes(
    sweep_batches=(1, 4),
    sweep_seconds=0.05,
    parity_photos=2,
    server_warmup_s=0.5,
    server_duration_s=1.0,
    server_points={
        "batching_on": (1, 4),
        "batching_on_procs": (4,),
        "batching_off": (4,),
        "batching_off_procs": (4,),
    },
    server_processes=2,
    open_loop_images_per_s=20.0,
    max_batch_size=8,
    tensorrt_batches=(1,),
)


@dataclass(frozen=True)
class Step:
    name: str
    limit_s: float  # on the GPU machine
    dry_limit_s: float  # on the CPU dry run (a shared CI core included)
    what: str


# Most important first: a run cut short still has the providers, parity and the model sweep.
STEPS = (
    Step("env", 30, 30, "ONNX Runtime, its providers, the GPU, what CUDA lacks"),
    Step("models", 30, 60, "the fp32 model and its fp16 twin"),
    Step("parity", 45, 30, "CUDA provider against the CPU provider on real photos"),
    Step("sweep", 60, 30, "the model alone: batch sizes x fp32/fp16 x I/O binding"),
    Step("server", 190, 120, "the server end to end: JPEGs, c=1..512, batching on/off, 1 or N processes"),
    Step("tensorrt", 60, 20, "the TensorRT provider, where it loads"),
)
STEP_NAMES = tuple(step.name for step in STEPS)
# What the whole run may take on the GPU machine: the steps' limits, plus the report.
DEFAULT_BUDGET_S = 360.0
REPORT_RESERVE_S = 10.0


# --- the results file ------------------------------------------------------------------------
def load_results(out: Path) -> dict[str, Any]:
    path = out / RESULTS
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(out: Path, results: dict[str, Any]) -> None:
    """Atomically: a run killed mid-write leaves the previous complete file."""
    tmp = out / f".{RESULTS}.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(out / RESULTS)


def update_results(out: Path, section: str, *keys: str, value: Any) -> None:
    """results[section][keys...] = value, written at once (one step writes at a time)."""
    results = load_results(out)
    node = results.setdefault(section, {})
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if keys:
        node[keys[-1]] = value
    else:
        results[section] = value
    save_results(out, results)


# --- the runner ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunOptions:
    out: Path
    work: Path
    dry_run: bool
    budget_s: float
    only: tuple[str, ...]
    limits: dict[str, float]  # step -> seconds, overriding the plan
    model: Path | None
    fp16_model: Path | None
    images: Path | None

    @property
    def sizes(self) -> Sizes:
        return DRY_SIZES if self.dry_run else GPU_SIZES


def step_limit(step: Step, options: RunOptions) -> float:
    if step.name in options.limits:
        return options.limits[step.name]
    return step.dry_limit_s if options.dry_run else step.limit_s


def run_plan(options: RunOptions) -> dict[str, Any]:
    """Every step in order under its limit and the overall budget; the report after each."""
    from bench.gpu.report import write_report

    started = time.monotonic()
    options.out.mkdir(parents=True, exist_ok=True)
    options.work.mkdir(parents=True, exist_ok=True)
    save_results(
        options.out,
        {
            "run": {
                "command": " ".join(["python -m bench.gpu", *sys.argv[1:]]),
                "dry_run": options.dry_run,
                "budget_s": options.budget_s,
                "sizes": asdict(options.sizes),
                "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            },
            "steps": {},
        },
    )
    steps = [s for s in STEPS if not options.only or s.name in options.only]
    with tqdm(total=len(steps), desc="GPU plan", unit="step") as bar:
        for step in steps:
            left = options.budget_s - REPORT_RESERVE_S - (time.monotonic() - started)
            limit = min(step_limit(step, options), left)
            bar.set_postfix_str(f"{step.name} (limit {limit:.0f} s)")
            env_status = load_results(options.out).get("steps", {}).get("env", {}).get("status")
            if not options.dry_run and step.name != "env" and env_status in ("failed", "timeout"):
                # CUDA does not run here (or its check hung): nothing after it would mean anything
                status: dict[str, Any] = {"status": "skipped", "why": "the env step found no working CUDA"}
            elif limit < 1:
                status = {"status": "skipped", "why": "the run's time budget is spent"}
            else:
                status = run_step(step.name, limit, options)
            status["limit_s"] = round(limit, 1)
            update_results(options.out, "steps", step.name, value=status)
            tqdm.write(
                f"step {step.name}: {status['status']} in {status.get('wall_s', 0):.1f} s"
                f"{' (' + status['why'] + ')' if status.get('why') else ''}"
            )
            write_report(load_results(options.out), options.out, plots=False)
            bar.update()
    results = load_results(options.out)
    results["run"]["wall_s"] = round(time.monotonic() - started, 1)
    save_results(options.out, results)
    report = write_report(results, options.out)
    print(report.read_text().split("## Details")[0])
    print(f"results: {options.out / RESULTS}, report: {report}, total {results['run']['wall_s']:.0f} s")
    return results


def run_step(name: str, limit_s: float, options: RunOptions) -> dict[str, Any]:
    """``python -m bench.gpu.step NAME`` in its own process group; killed (with every server
    and load generator it started) at ``limit_s``."""
    argv = [
        sys.executable,
        "-m",
        "bench.gpu.step",
        name,
        "--out",
        str(options.out),
        "--work",
        str(options.work),
        # the step stops between measurements past this (wall clock, shared with the child)
        "--deadline",
        repr(time.time() + max(0.5, limit_s - min(15.0, 0.15 * limit_s))),
    ]
    if options.dry_run:
        argv.append("--dry-run")
    for flag, path in (
        ("--model", options.model),
        ("--fp16-model", options.fp16_model),
        ("--images", options.images),
    ):
        if path is not None:
            argv += [flag, str(path.resolve())]
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, start_new_session=True)
    try:
        code = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        return {
            "status": "timeout",
            "wall_s": round(time.monotonic() - started, 1),
            "why": f"killed at its {limit_s:.0f} s limit; what it measured before is kept",
        }
    except BaseException:
        stop_group(proc)
        raise
    wall = round(time.monotonic() - started, 1)
    written = load_results(options.out).get("steps", {}).get(name, {})
    if code != 0:
        return {"status": "failed", "wall_s": wall, "why": written.get("why") or f"exit status {code}"}
    return {
        "status": written.get("status", "ok"),
        "wall_s": wall,
        **({"why": written["why"]} if written.get("why") else {}),
    }


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the step's whole process group (servers drain), SIGKILL 5 s later."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; its group may not be
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
