"""The real server process with the real default model, over HTTP."""

from __future__ import annotations

import concurrent.futures
import subprocess
from pathlib import Path

import httpx
import onnxruntime as ort
import pytest

from harness.metrics import read_metrics
from harness.server import APP_ARGV, REPO_ROOT, ServerProcess, child_env, free_port, settings_env
from tests.app.photos import PHOTOS


def test_real_photos_get_their_imagenet_classes_in_the_top_5(default_server: ServerProcess) -> None:
    names = sorted(PHOTOS)
    files = [("file", (f"{name}{PHOTOS[name][0].suffix}", PHOTOS[name][0].read_bytes())) for name in names]
    response = httpx.post(f"{default_server.base_url}/predict", files=files, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "efficientnet_lite0-imagenet1k"
    assert [p["filename"] for p in body["predictions"]] == [name + PHOTOS[name][0].suffix for name in names]
    for name, prediction in zip(names, body["predictions"], strict=True):
        top5 = [score["label"] for score in prediction["top_k"]]
        assert len(top5) == 5 and PHOTOS[name][1] & set(top5), (name, top5)
        probabilities = [score["probability"] for score in prediction["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001


def test_raw_body_upload_like_the_readme_curl(default_server: ServerProcess) -> None:
    path, _ = PHOTOS["coffee"]
    response = httpx.post(
        f"{default_server.base_url}/predict?top_k=3",
        content=path.read_bytes(),
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["top_k"][0]["label"] == "espresso"


def test_concurrent_requests_form_batches_larger_than_one(default_server: ServerProcess) -> None:
    url = default_server.base_url
    before = read_metrics(url)
    photos = [path.read_bytes() for path, _ in PHOTOS.values()]

    def send(i: int) -> int:
        with httpx.Client(timeout=120) as client:
            return client.post(
                f"{url}/predict", files=[("file", (f"{i}.img", photos[i % len(photos)]))]
            ).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(send, range(48)))
    assert statuses == [200] * 48
    after = read_metrics(url)
    batches = after["imgserve_batch_size_count"] - before["imgserve_batch_size_count"]
    singles = after['imgserve_batch_size_bucket{le="1.0"}'] - before['imgserve_batch_size_bucket{le="1.0"}']
    images = after["imgserve_batch_size_sum"] - before["imgserve_batch_size_sum"]
    assert images == 48
    assert batches < 48 and batches - singles >= 1, f"{batches} batches, {singles} of size 1"
    assert after["imgserve_queue_images"] == 0


def test_models_health_and_request_logs(default_server: ServerProcess) -> None:
    url = default_server.base_url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    model = httpx.get(f"{url}/v1/models").json()["models"][0]
    assert (model["num_classes"], model["input"]["shape"], model["execution_provider"]) == (
        1000,
        [None, 224, 224, 3],
        "CPUExecutionProvider",
    )
    response = httpx.get(f"{url}/healthz", headers={"X-Request-ID": "e2e-trace-1"})
    assert response.headers["x-request-id"] == "e2e-trace-1"
    logged = [line for line in default_server.log_lines() if line.get("request_id") == "e2e-trace-1"]
    assert logged and logged[0]["status"] == 200 and logged[0]["route"] == "/healthz"
    assert {"latency_ms", "images", "method", "path"} <= set(logged[0])


def test_bad_input_never_kills_the_process(default_server: ServerProcess) -> None:
    url = default_server.base_url
    bad = [
        httpx.post(
            f"{url}/predict", content=b"\x89PNG\r\n\x1a\nbroken", headers={"Content-Type": "image/png"}
        ),
        httpx.post(f"{url}/predict", files=[("file", ("x.gif", b"GIF89a" + b"\xff" * 100))]),
        httpx.post(
            f"{url}/predict",
            content=b"--b\r\n\r\n",
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        ),
    ]
    assert [r.status_code for r in bad] == [422, 422, 422]
    assert default_server.proc.poll() is None
    assert httpx.get(f"{url}/readyz").status_code == 200


@pytest.mark.parametrize(
    ("settings", "message", "code"),
    [
        ({"max_batch_size": "-1"}, "IMGSERVE_MAX_BATCH_SIZE: Input should be greater than or equal to 0", 1),
        ({"model_path": "/nonexistent/model.onnx"}, "model file '/nonexistent/model.onnx' does not exist", 3),
        pytest.param(
            {"require_cuda": "true"},
            "IMGSERVE_REQUIRE_CUDA is set but this ONNX Runtime build",
            3,
            marks=pytest.mark.skipif(
                "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here"
            ),
        ),
    ],
)
def test_bad_configuration_stops_the_process_with_a_clear_message(
    tiny_model_path: Path, settings: dict[str, str], message: str, code: int
) -> None:
    env = child_env(free_port(), settings_env(tiny_model_path, settings), inherit_settings=False)
    result = subprocess.run(
        [*APP_ARGV], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr  # one line says why
