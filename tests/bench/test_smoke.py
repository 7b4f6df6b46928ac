"""CI's short run of the whole benchmark (``python -m bench run --smoke``), so the suite cannot rot.

It starts the real servers (ours with batching on and off, the naive baseline, ours with a
small queue under overload, nginx + 2 replicas when nginx is installed) on a tiny stand-in
model, drives each for about a second (closed loop, and the open-loop sweep of Poisson
arrivals at fractions of the measured capacity), and checks that the report holds sane,
non-zero figures and no errors but the overload point's 503s. It asserts nothing about
speed: figures from a smoke run on a shared CI machine mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Minutes on 2 cores: CI runs them in their own step (make test-slow).
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench-smoke")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, f"smoke run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads((out / "results.json").read_text()), out


def _finite_positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_every_planned_point_ran_without_errors(smoke_report: tuple[dict[str, Any], Path]) -> None:
    report, _ = smoke_report
    planned = {p["topology"] for p in report["plan"]}
    assert {"batching_on", "batching_off", "naive", "overload"} <= planned
    # an open-loop point is skipped when its capacity point served nothing (a stalled machine)
    served = {key: point["requests_ok"] for key, point in report["points"].items()}
    assert len(report["points"]) == len(report["plan"]), served
    for key, point in report["points"].items():
        if point["topology"] == "overload":
            continue  # its 503s are the point; test_overload_is_shed_at_once checks them
        assert point["error_count"] == 0, (key, point["errors"], point["sample_error_body"])
        assert point["requests_ok"] > 0, key
        assert _finite_positive(point["images_per_s"]), key
        latency = point["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"], (key, latency)
        assert _finite_positive(point["server_cpu_s_per_image"]), key
        assert _finite_positive(point["client_cpu_s_per_request"]), key


def test_server_metrics_were_read(smoke_report: tuple[dict[str, Any], Path]) -> None:
    points = smoke_report[0]["points"]
    # batching off: every model run holds exactly one image
    assert points["batching_off/jpeg_500x375/c8"]["mean_batch_size"] == 1.0
    # 8 images per request are enqueued together, so every batch is full: the CPU's cap of 4
    assert points["batching_on/multi8_500x375/c2"]["mean_batch_size"] >= 4.0
    on = points["batching_on/jpeg_500x375/c8"]
    assert on["batches"] > 0
    # the server's own image count agrees with what the client saw completed (window edges aside)
    assert on["server_images"] == pytest.approx(on["images_ok"], rel=0.5, abs=8)


def test_ceiling_and_report(smoke_report: tuple[dict[str, Any], Path]) -> None:
    report, out = smoke_report
    ceiling = report["ceiling"]["pipeline"]["jpeg_500x375"]
    assert _finite_positive(ceiling["images_per_s"])
    assert _finite_positive(ceiling["cpu_s_per_image"])
    assert 0 < ceiling["preprocess_cpu_s_per_image"] < 10 * ceiling["cpu_s_per_image"]
    assert report["ceiling"]["provider"] in report["machine"]["onnxruntime_providers"]
    markdown = (out / "report.md").read_text()
    assert "## Targets" in markdown and "Overhead" in markdown
    for name in ("throughput_vs_concurrency.png", "latency_cdf_c32.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_open_loop_sweep_offers_fractions_of_the_measured_capacity(
    smoke_report: tuple[dict[str, Any], Path],
) -> None:
    points, settings = smoke_report[0]["points"], smoke_report[0]["settings"]
    sending_s = settings["warmup_s"] + settings["duration_s"]
    for topology in ("batching_on", "naive"):
        capacity = points[f"{topology}/jpeg_500x375/c8"]["images_per_s"]
        for fraction in (0.1, 0.5):
            point = points[f"{topology}/jpeg_500x375/open{fraction:g}"]
            assert point["mode"] == "open" and point["rate_fraction"] == fraction
            assert point["capacity_images_per_s"] == capacity
            assert point["offered_images_per_s"] == pytest.approx(fraction * capacity)
            # Poisson arrivals over warm-up + window: about offered x that many seconds, none dropped
            expected = point["offered_images_per_s"] * sending_s
            assert abs(point["requests_sent"] - expected) < 5 * math.sqrt(expected) + 2, (point, expected)
            assert "dropped" not in point["errors"]


def test_overload_is_shed_at_once(smoke_report: tuple[dict[str, Any], Path]) -> None:
    point = smoke_report[0]["points"]["overload/jpeg_500x375/c64"]
    shed = point["shed"]
    assert point["errors"] == {"http_503": shed["count"]} and shed["count"] > 0, point["errors"]
    assert shed["with_retry_after"] == shed["count"]
    assert "overloaded" in point["sample_error_body"] and "max_queue_images" in point["sample_error_body"]
    assert point["requests_ok"] > 0


def test_report_sets_light_load_figures_against_their_targets(
    smoke_report: tuple[dict[str, Any], Path],
) -> None:
    report, out = smoke_report
    single = report["ceiling"]["pipeline"]["jpeg_500x375"]["single_image"]
    assert single["images"] > 0 and 0 < single["p50_ms"] <= single["p99_ms"]
    markdown = (out / "report.md").read_text()
    light = markdown.split("### Light load")[1].split("## Details")[0]
    c1 = report["points"]["batching_on/jpeg_500x375/c1"]["latency_ms"]["p50"]
    naive_c1 = report["points"]["naive/jpeg_500x375/c1"]["latency_ms"]["p50"]
    verdict = "met" if c1 <= naive_c1 else "**missed**"
    row = "| c=1, 500x375 JPEG: p50 ÷ the naive baseline's p50 (same run, interleaved) |"
    assert f"{row} {c1 / naive_c1:.2f}x | ≤ 1 | {verdict} |" in light
    assert "Open loop (Poisson) at 50% of capacity" in light and "c=128" in light
    single_line = "single-image latency (decode + preprocess + the model at batch 1, one image at a time)"
    assert f"{single_line}: p50 {single['p50_ms']:.2f} ms" in light
    assert (out / "latency_vs_offered_load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
