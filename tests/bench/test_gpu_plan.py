"""The GPU run's plan (``python -m bench.gpu``), dry-run on the CPU so that it cannot rot unseen.

The dry run goes through the same steps, servers and report as the run on a lent GPU machine,
with the CPU provider, a tiny model and its fp16 twin, and sub-second windows. It asserts that
every step ran and wrote sane, non-zero figures, that only the files a device call can bring
back are written, and that a step past its time limit is killed with everything it started
while the run keeps what it had. Nothing about speed: the figures of a dry run mean nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from bench.gpu.plan import DRY_SIZES

# Minutes on 2 cores: CI runs them in their own step (make test-slow).
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_plan(
    out: Path, *args: str, timeout_s: float = 300, dry_run: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu",
            *(["--dry-run"] if dry_run else []),
            "--out",
            str(out / "out"),
            "--work",
            str(out / "work"),
            *args,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    folder = tmp_path_factory.mktemp("gpu-dry")
    done = run_plan(folder)
    assert done.returncode == 0, f"dry run failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return json.loads((folder / "out" / "results.json").read_text()), folder / "out"


def test_every_step_runs_and_tensorrt_says_why_it_cannot(dry_run: tuple[dict[str, Any], Path]) -> None:
    results, _ = dry_run
    steps = results["steps"]
    assert {name: s["status"] for name, s in steps.items()} == {
        "env": "ok",
        "models": "ok",
        "parity": "ok",
        "sweep": "ok",
        "server": "ok",
        "tensorrt": "skipped",
    }
    assert "no TensorRT provider" in steps["tensorrt"]["why"]
    assert all(0 < s["wall_s"] <= s["limit_s"] for s in steps.values())
    env = results["env"]
    assert env["provider_under_test"] == "CPUExecutionProvider"
    assert env["versions"]["onnxruntime"] and "CPUExecutionProvider" in env["available_providers"]
    assert "has no CUDA provider" in env["cuda_unavailable"]


def test_parity_compares_both_models_with_the_cpu_on_real_photos(
    dry_run: tuple[dict[str, Any], Path],
) -> None:
    parity = dry_run[0]["parity"]
    assert set(parity) == {"fp32", "fp16"}
    assert parity["fp32"]["photos"] == DRY_SIZES.parity_photos
    assert parity["fp32"]["top1_agreement"] == 1.0 and parity["fp32"]["max_abs_diff"] < 1e-5
    # half precision differs, a little
    assert 0 < parity["fp16"]["max_abs_diff"] < 1e-2 and parity["fp16"]["top5_overlap"] >= 0.8


def test_the_sweep_covers_both_precisions_both_feedings_and_every_batch(
    dry_run: tuple[dict[str, Any], Path],
) -> None:
    points = dry_run[0]["sweep"]["points"]
    expected = {
        f"{v}/{b}/b{n}"
        for v in ("fp32", "fp16")
        for b in ("host", "iobinding")
        for n in DRY_SIZES.sweep_batches
    }
    assert set(points) == expected
    assert all(p["images_per_s"] > 0 and p["runs"] >= 3 for p in points.values())


def test_the_server_answers_every_point_of_every_topology(dry_run: tuple[dict[str, Any], Path]) -> None:
    server = dry_run[0]["server"]
    expected = {f"{t}/jpeg_500x375/c{c}" for t, levels in DRY_SIZES.server_points.items() for c in levels}
    expected.add(f"batching_on/jpeg_500x375/open{DRY_SIZES.open_loop_images_per_s:g}ips")
    assert set(server["points"]) == expected
    for key, point in server["points"].items():
        assert point["images_ok"] > 0 and point["error_count"] == 0, key
        assert point["processes"] == (DRY_SIZES.server_processes if "_procs" in key else 1), key
        assert point["gpu"] is None  # no nvidia-smi here
        if point["topology"].startswith("batching_off"):
            assert point["mean_batch_size"] == 1.0
    assert set(server["start_s"]) == set(DRY_SIZES.server_points)


def test_only_the_files_a_device_call_brings_back_are_written(dry_run: tuple[dict[str, Any], Path]) -> None:
    _, out = dry_run
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "results.json", "server.png", "sweep.png"]
    report = (out / "report.md").read_text()
    for heading in (
        "# GPU run: DRY RUN",
        "## Machine and providers",
        "## Parity with the CPU provider",
        "## The model alone",
        "## The server end to end",
        "## Details",
    ):
        assert heading in report
    assert "| tensorrt |" in report and "| skipped |" in report


def _processes_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_step_past_its_limit_is_killed_with_its_servers_and_the_run_keeps_what_it_had(
    tmp_path: Path,
) -> None:
    done = run_plan(tmp_path, "--only", "env", "models", "server", "--limit", "server=3", timeout_s=120)
    assert done.returncode != 0
    assert "steps that did not finish: server" in done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["steps"]["env"]["status"] == "ok" and results["steps"]["models"]["status"] == "ok"
    assert results["steps"]["server"]["status"] == "timeout"
    assert results["steps"]["server"]["wall_s"] < 3 + 12  # the limit, then SIGTERM to the group and a wait
    assert "| server |" in (tmp_path / "out" / "report.md").read_text()
    # the servers (they carry the model's path in IMGSERVE_MODEL_PATH) went with their step
    assert _processes_with(str(tmp_path / "work")) == []


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA works here")
def test_the_gpu_run_without_cuda_says_why_and_measures_nothing_else(tmp_path: Path) -> None:
    done = run_plan(tmp_path, timeout_s=120, dry_run=False)
    assert done.returncode != 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    steps = results["steps"]
    assert steps["env"]["status"] == "failed" and "has no CUDA provider" in steps["env"]["why"]
    assert {name: s["status"] for name, s in steps.items() if name != "env"} == dict.fromkeys(
        ("models", "parity", "sweep", "server", "tensorrt"), "skipped"
    )
    assert "the CUDA provider does not run here" in (tmp_path / "out" / "report.md").read_text()
