"""The model repository over real server processes: a live swap under load with zero failed
requests, corrupt versions refused while the served one keeps answering, SIGHUP, a pinned
version beside the newest, and two different models side by side.

Load, unload and the index go through Triton's own Python client (``tritonclient.http``), so
the repository API is the one Triton's users already call.
"""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.metrics import read_metrics
from harness.server import ServerProcess
from tests.app.photos import PHOTOS
from tests.app.repository_models import truncate, version_labels, write_mislabelled_version, write_version
from tests.conftest import StartServer

tritonclient_http = pytest.importorskip("tritonclient.http")

CLIENTS = 4
REQUESTS_PER_CLIENT = 200
MB = 1024 * 1024


def red_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def triton(server: ServerProcess) -> Any:
    return tritonclient_http.InferenceServerClient(
        server.base_url.removeprefix("http://"), network_timeout=120
    )


def predict(url: str, path: str = "/predict") -> tuple[str, str]:
    response = httpx.post(url + path + "?top_k=1", content=red_png(), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model_version"], body["predictions"][0]["top_k"][0]["label"]


class Client(threading.Thread):
    """Sends ``/predict`` back to back over one keep-alive connection: at least ``minimum``
    requests, and on until told to stop; records (status, version, label) of each."""

    def __init__(self, url: str, minimum: int) -> None:
        super().__init__()
        self.url, self.minimum = url, minimum
        self.answers: list[tuple[int, str, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        body = red_png()
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while len(self.answers) < self.minimum or not self.stop.is_set():
                try:
                    response = client.post(
                        "/predict?top_k=1", content=body, headers={"Content-Type": "image/png"}
                    )
                except httpx.HTTPError as exc:
                    self.answers.append((0, type(exc).__name__, ""))
                    continue
                if response.status_code != 200:
                    self.answers.append((response.status_code, response.text, ""))
                    continue
                answer = response.json()
                self.answers.append(
                    (200, answer["model_version"], answer["predictions"][0]["top_k"][0]["label"])
                )


class ReadinessProbe(threading.Thread):
    """Polls ``/readyz`` every 10 ms until stopped; records (when it answered, status)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url, self.stop = url, threading.Event()
        self.statuses: list[tuple[float, int]] = []

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                status = client.get(f"{self.url}/readyz").status_code
                self.statuses.append((time.monotonic(), status))
                time.sleep(0.01)


def wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_new_version_swaps_in_under_load_with_no_failed_request(
    start_server: StartServer, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    v1 = write_version(repository, "colours", 1, ballast_mb=48)
    server = start_server(
        v1,
        log_level="info",
        model_repository=repository,
        model_control="explicit",
        max_batch_size=8,
        intra_op_threads=1,
    )
    clients = [Client(server.base_url, REQUESTS_PER_CLIENT) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    wait_for(lambda: min(len(c.answers) for c in clients) >= 30)
    write_version(repository, "colours", 2)
    rss_before = server.rss()
    assert read_metrics(server.base_url)["imgserve_onnx_sessions"] == 1
    probe = ReadinessProbe(server.base_url)
    probe.start()
    wait_for(lambda: len(probe.statuses) > 0)
    load_at = time.monotonic()
    triton(server).load_model("colours")  # returns once version 2 serves and version 1 has drained
    loaded_at = time.monotonic()
    swapped_at = [len(c.answers) for c in clients]
    wait_for(lambda: all(len(c.answers) >= n + 30 for c, n in zip(clients, swapped_at, strict=True)))
    for client in clients:
        client.stop.set()
    for client in clients:
        client.join(120)
    probe.stop.set()
    probe.join()
    assert {status for _, status in probe.statuses} == {200}, probe.statuses
    assert any(load_at <= at <= loaded_at for at, _ in probe.statuses) or loaded_at - load_at < 0.02

    for client in clients:
        failed = [a for a in client.answers if a[0] != 200]
        assert failed == [], failed[:5]
        versions = [version for _, version, _ in client.answers]
        first_v2 = versions.index("2")
        assert first_v2 >= 30 and versions == ["1"] * first_v2 + ["2"] * (len(versions) - first_v2)
        assert all(label == f"red-v{version}" for _, version, label in client.answers)
    assert sum(len(c.answers) for c in clients) >= CLIENTS * REQUESTS_PER_CLIENT
    # Version 1's session is gone: by reference (no session object left) and in memory.
    metrics = httpx.get(f"{server.base_url}/metrics").text
    assert read_metrics(server.base_url)["imgserve_onnx_sessions"] == 1
    assert 'version="1"' not in metrics
    assert rss_before - server.rss() > 30 * MB, (rss_before, server.rss())
    assert triton(server).get_model_repository_index() == [
        {"name": "colours", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
        {"name": "colours", "version": "2", "state": "READY", "reason": ""},
    ]


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda repo: truncate(write_version(repo, "colours", 3)), "ONNX Runtime cannot load"),
        (
            lambda repo: write_mislabelled_version(repo, "colours", 3),
            "the graph has 4 classes but the card has 5 labels",
        ),
    ],
    ids=["truncated-onnx", "labels-not-matching-the-graph"],
)
def test_a_corrupt_version_is_refused_and_the_served_one_keeps_answering(
    start_server: StartServer, tmp_path: Path, corrupt: Callable[[Path], object], reason: str
) -> None:
    repository = tmp_path / "repository"
    write_version(repository, "colours", 2)
    server = start_server(
        repository / "colours" / "2" / "model.onnx",
        log_level="info",
        model_repository=repository,
        model_control="explicit",
    )
    corrupt(repository)
    client = triton(server)
    with pytest.raises(tritonclient_http.InferenceServerException) as error:
        client.load_model("colours")
    path = repository / "colours" / "3" / "model.onnx"
    message = error.value.message()
    assert error.value.status() == "400"
    assert message.startswith(f"failed to load 'colours': cannot load model 'colours' version 3 ({path}): ")
    assert reason in message
    index = client.get_model_repository_index()
    assert index == [
        {"name": "colours", "version": "2", "state": "READY", "reason": ""},
        {
            "name": "colours",
            "version": "3",
            "state": "UNAVAILABLE",
            "reason": message.removeprefix("failed to load 'colours': "),
        },
    ]
    assert predict(server.base_url) == ("2", "red-v2")
    assert httpx.get(f"{server.base_url}/readyz").status_code == 200
    assert server.proc is not None and server.proc.poll() is None  # the same process, never restarted


def test_sighup_rescans_and_a_pinned_version_answers_beside_the_newest(
    start_server: StartServer, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    v1 = write_version(repository, "colours", 1)
    (repository / "colours" / "config.toml").write_text("[version_policy]\nlatest = 2\n")
    server = start_server(v1, log_level="info", model_repository=repository)  # model control "none"
    url = server.base_url
    assert httpx.post(f"{url}/v2/repository/index").status_code == 404  # the API is off
    write_version(repository, "colours", 2)
    server.signal(signal.SIGHUP)
    wait_for(lambda: predict(url)[0] == "2", timeout_s=60)
    assert predict(url) == ("2", "red-v2")
    assert predict(url, "/v1/models/colours/predict") == ("2", "red-v2")
    assert predict(url, "/v1/models/colours/versions/1/predict") == ("1", "red-v1")
    listing = httpx.get(f"{url}/v1/models").json()
    assert [(m["name"], m["version"], m["labels"]) for m in listing["models"]] == [
        ("colours", "1", version_labels(1)),
        ("colours", "2", version_labels(2)),
    ]
    assert listing["versions"] == [
        {"name": "colours", "version": "1", "state": "READY", "reason": ""},
        {"name": "colours", "version": "2", "state": "READY", "reason": ""},
    ]
    assert server.proc is not None and server.proc.poll() is None


def digit_images(count: int) -> list[tuple[int, bytes]]:
    """scikit-learn's digits drawn as the training fixture draws them (tests/model_export)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for image, target in list(zip(digits.images, digits.target, strict=True))[-count:]:
        gray = (255 - image * (255 / 16)).astype(np.uint8)
        pil = Image.fromarray(gray, mode="L").resize((32, 32), Image.Resampling.BILINEAR).convert("RGB")
        buffer = io.BytesIO()
        pil.save(buffer, format="PNG")
        images.append((int(target), buffer.getvalue()))
    return images


@pytest.mark.slow
def test_two_models_side_by_side_each_with_its_own_labels_and_preprocessing(
    start_server: StartServer,
    tmp_path: Path,
    default_model_path: Path,
) -> None:
    """The ImageNet default and a simple_cnn trained here for a few seconds on the digits, exported
    straight into the repository (``--repository --name``), answering concurrently."""
    pytest.importorskip("torch")
    from tests.model_export.conftest import write_digits_image_folder

    repository = tmp_path / "repository"
    (repository / "imagenet" / "1").mkdir(parents=True)
    for name in ("model.onnx", "model.json"):
        shutil.copy(default_model_path.parent / name, repository / "imagenet" / "1" / name)
    digits = write_digits_image_folder(tmp_path / "digits")
    run = tmp_path / "run"
    export = [sys.executable, "-m", "model_export", "--threads", "1"]
    train_args = ["--arch", "simple_cnn", "--crop-size", "32", "--resize-size", "32", "--epochs", "3"]
    train_args += ["--lr", "3e-3", "--hflip-prob", "0", "--min-scale", "0.8", "--shear-deg", "5"]
    for command in (
        [*export, "train", "--data", str(digits), *train_args, "--output-dir", str(run)],
        [
            *export,
            "export",
            "--checkpoint",
            str(run / "best.pt"),
            "--repository",
            str(repository),
            "--name",
            "digits",
        ],
    ):
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "serving folder: " + str(repository / "digits" / "1") in result.stdout

    server = start_server(default_model_path, log_level="info", model_repository=repository)
    url = server.base_url
    cards = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}
    assert (cards["imagenet"]["num_classes"], cards["imagenet"]["preprocessing"]["crop_size"]) == (
        1000,
        224,
    )
    assert cards["digits"]["labels"] == [str(d) for d in range(10)]
    assert (cards["digits"]["preprocessing"]["crop_size"], cards["digits"]["version"]) == (32, "1")
    cat = PHOTOS["chelsea"][0].read_bytes()

    def imagenet(_: int) -> tuple[str, str]:
        response = httpx.post(
            f"{url}/v1/models/imagenet/predict", files={"file": ("cat.png", cat)}, timeout=60
        )
        assert response.status_code == 200, response.text
        return response.json()["model"], response.json()["predictions"][0]["top_k"][0]["label"]

    def digit(item: tuple[int, bytes]) -> tuple[str, str, int]:
        target, data = item
        response = httpx.post(f"{url}/v1/models/digits/predict", files={"file": ("d.png", data)}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["model"], response.json()["predictions"][0]["top_k"][0]["label"], target

    with ThreadPoolExecutor(8) as pool:
        cats = pool.map(imagenet, range(12))
        digit_answers = pool.map(digit, digit_images(40))
        cats, digit_answers = list(cats), list(digit_answers)
    assert all(model == "imagenet" and label in PHOTOS["chelsea"][1] for model, label in cats), cats
    assert all(
        model == "digits" and label in {str(d) for d in range(10)} for model, label, _ in digit_answers
    )
    correct = sum(label == str(target) for _, label, target in digit_answers)
    assert correct >= 32, digit_answers  # 80%: three epochs of a small CNN
    metrics = httpx.get(f"{url}/metrics").text
    assert 'imgserve_model_batch_size_count{model="imagenet",version="1"}' in metrics
    assert 'imgserve_model_batch_size_count{model="digits",version="1"}' in metrics
    response = httpx.post(f"{url}/predict", content=cat, headers={"Content-Type": "image/png"})
    no_default = "no default model: this server serves 'digits', 'imagenet'; name the model in the request"
    assert (response.status_code, response.json()) == (404, {"detail": no_default})
