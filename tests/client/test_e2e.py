"""The client and the command line against a real server whose queue holds 4 images.

The server runs the default model (EfficientNet-Lite0) with ``IMGSERVE_MAX_QUEUE_IMAGES=4``, so
any concurrency above 4 gets 503s with ``Retry-After``; the photos are crops, resizes and
re-encodes of the packaged test photos, made at run time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from imgserve_client import AsyncClient, Client, Prediction, Result
from PIL import Image

from harness.server import ServerProcess, free_port

from .conftest import API_KEY
from .photos import corrupt_jpeg, flat_png, make_photo_folder

CLI = Path(sys.executable).with_name("imgserve-client")
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def count_503s(server: ServerProcess) -> int:
    text = httpx.get(f"{server.base_url}/metrics", headers=AUTH, timeout=10).text
    match = re.search(
        r'(?m)^imgserve_http_requests_total\{[^}]*route="/predict"[^}]*status="503"[^}]*\} (\S+)$', text
    )
    return int(float(match.group(1))) if match else 0


def one_by_one(server: ServerProcess, paths: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """Each photo's top 5 from ``POST /predict``, one photo per request, one request at a time."""
    answers = {}
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=30) as http:
        for path in paths:
            response = http.post("/predict", files=[("file", (path.name, path.read_bytes()))])
            assert response.status_code == 200, response.text
            answers[str(path)] = response.json()["predictions"][0]["top_k"]
    return answers


def top_k_json(prediction: Prediction) -> list[dict[str, Any]]:
    return [dataclasses.asdict(score) for score in prediction.top_k]


def run_cli(*args: str | Path, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    assert CLI.exists(), f"{CLI} is missing: install the client (scripts/bootstrap.sh does)"
    return subprocess.run(
        [str(CLI), *map(str, args)], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_200_photos_at_32_requests_in_flight_on_a_queue_of_4_all_classified_as_one_by_one(
    busy_server: ServerProcess, photos_200: list[Path]
) -> None:
    shed_before, start = count_503s(busy_server), time.monotonic()
    with Client(busy_server.base_url, api_key=API_KEY) as client:
        results = list(client.predict_many(photos_200, concurrency=32))
        retried, waited_s = client.stats.retries["503"], client.stats.waited_s
    print(
        f"\n200 photos, 32 requests in flight, a queue of 4: {time.monotonic() - start:.1f} s, "
        f"{retried} x 503 retried ({waited_s:.1f} s waited in all)"
    )
    assert sorted(r.image for r in results) == sorted(photos_200)
    assert [r.error for r in results if not r.ok] == []
    # Back-pressure was met and honoured: every 503 the server sent was retried, none given up on.
    shed = count_503s(busy_server) - shed_before
    assert shed > 0
    assert retried == shed
    assert set(client.stats.retries) == {"503"}
    expected = one_by_one(busy_server, photos_200)
    assert {str(r.image): top_k_json(r.prediction) for r in results if r.prediction} == expected


def test_the_async_client_gives_the_same_answers_and_a_pil_image_the_same_as_its_file(
    busy_server: ServerProcess, photos_200: list[Path]
) -> None:
    photos = photos_200[:40]

    async def classify() -> tuple[list[Result], Prediction, int]:
        async with AsyncClient(busy_server.base_url, api_key=API_KEY) as client:
            results = [r async for r in client.predict_many(photos, concurrency=16)]
            with Image.open(photos[0]) as picture:
                from_pil = await client.predict(picture)
            return results, from_pil, client.stats.retries["503"]

    results, from_pil, retried = asyncio.run(classify())
    expected = one_by_one(busy_server, photos)
    assert {str(r.image): top_k_json(r.prediction) for r in results if r.prediction} == expected
    assert top_k_json(from_pil) == expected[str(photos[0])]
    assert from_pil.filename == f"{photos[0].stem}.png"
    assert retried > 0  # 16 requests in flight on a queue of 4


@pytest.fixture(scope="module")
def camera_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve good photos, a JPEG cut in half, a text file and a 50-megapixel PNG (158 KB)."""
    folder = tmp_path_factory.mktemp("dump")
    good = make_photo_folder(folder, 12, seed=1)
    a_jpeg = next(p for p in good if p.suffix == ".jpg")
    (folder / "corrupt.jpg").write_bytes(corrupt_jpeg(a_jpeg.read_bytes()))
    (folder / "notes.txt").write_text("shopping: milk, eggs, film for the camera\n")
    (folder / "huge.png").write_bytes(flat_png(10_000, 5_000))
    return folder


def test_the_cli_classifies_the_good_photos_and_reports_each_bad_file_with_the_servers_reason(
    busy_server: ServerProcess, camera_dump: Path, tmp_path: Path
) -> None:
    output = tmp_path / "labels.jsonl"
    run = run_cli("classify", camera_dump, "--url", busy_server.base_url, "--api-key", API_KEY, "-o", output)
    assert run.returncode == 3, run.stderr  # some images rejected, the rest classified
    assert run.stdout == ""
    records = {r["path"]: r for r in read_jsonl(output)}
    good = sorted(p for p in camera_dump.iterdir() if p.name[:4].isdigit())
    assert sorted(records) == sorted(str(p) for p in camera_dump.iterdir())
    corrupt = records.pop(str(camera_dump / "corrupt.jpg"))
    assert corrupt["status"] == 422 and set(corrupt) == {"path", "status", "error"}
    assert re.fullmatch(
        r"file #1 'corrupt\.jpg': cannot decode JPEG image: "
        r"image file is truncated \(\d+ bytes not processed\)",
        corrupt["error"],
    )
    rejected = {
        "notes.txt": (
            422,
            "file #1 'notes.txt': not a decodable image (allowed formats: BMP, GIF, JPEG, PNG, WEBP)",
        ),
        "huge.png": (
            413,
            "file #1 'huge.png': image is 10000x5000 = 50000000 pixels, over the limit of 25000000 pixels "
            "per image (max_image_pixels)",
        ),
    }
    for name, (status, detail) in rejected.items():
        path = str(camera_dump / name)
        assert records.pop(path) == {"path": path, "status": status, "error": detail}
    # the good photos: exactly what /predict says for each, one by one
    expected = one_by_one(busy_server, good)
    assert {path: r["top_k"] for path, r in records.items()} == expected
    assert all(
        r["label"] == r["top_k"][0]["label"] and r["model"] == "efficientnet_lite0-imagenet1k"
        for r in records.values()
    )
    # the summary on stderr names every bad file and the server's reason
    assert "classified 12 of 15 images" in run.stderr
    assert "3 rejected, 0 not classified (server busy), 0 failed" in run.stderr
    for name, (status, detail) in rejected.items():
        assert f"  {camera_dump / name}: {status} {detail}\n" in run.stderr
    assert f"  {camera_dump / 'corrupt.jpg'}: 422 {corrupt['error']}" in run.stderr

    again = run_cli(
        "classify", camera_dump, "--url", busy_server.base_url, "--api-key", API_KEY, "-o", output
    )
    assert (again.returncode, again.stderr) == (
        0,
        f"nothing to classify: all 15 files are already in {output}\n",
    )
    assert len(read_jsonl(output)) == 15


def test_the_cli_says_when_the_server_stayed_busy_and_a_rerun_resumes(
    busy_server: ServerProcess, photos_200: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in photos_200[:80]:
        shutil.copy(path, folder)
    output = tmp_path / "labels.csv"
    common = ["--url", busy_server.base_url, "--api-key", API_KEY, "-o", output, "-c", "64"]
    first = run_cli("classify", folder, *common, "--max-retries", "0")
    assert first.returncode == 4, first.stderr  # the server stayed busy: no retries allowed here
    busy_lines = [line for line in first.stderr.splitlines() if " 503 overloaded: " in line]
    assert busy_lines and all("(max_queue_images); retry after" in line for line in busy_lines)
    first_rows = output.read_text().splitlines()
    assert first_rows[0] == "path,label,index,probability,top_k,model,model_version,status,error"
    assert len(first_rows) - 1 == 80 - len(busy_lines)  # the busy ones are not written

    second = run_cli("classify", folder, *common)
    assert second.returncode == 0, second.stderr
    assert f"({80 - len(busy_lines)} already in {output})" in second.stderr
    rows = output.read_text().splitlines()
    assert rows[: len(first_rows)] == first_rows and rows.count(rows[0]) == 1
    assert sorted(row.split(",")[0] for row in rows[1:]) == sorted(str(p) for p in folder.iterdir())


def test_the_cli_health_models_and_its_failures(busy_server: ServerProcess, camera_dump: Path) -> None:
    health = run_cli("health", "--url", busy_server.base_url)
    assert (health.returncode, health.stdout) == (0, f"{busy_server.base_url}: alive, ready\n")
    models = run_cli("models", "--url", busy_server.base_url, "--api-key", API_KEY)
    assert models.returncode == 0, models.stderr
    assert models.stdout.startswith("efficientnet_lite0-imagenet1k 1: 1000 classes on CPUExecutionProvider; ")
    assert (
        "up to 4 images and 20971520 bytes per request" in models.stdout
        and "queue of 4 images" in models.stdout
    )

    wrong_key = run_cli("classify", camera_dump, "--url", busy_server.base_url, "--api-key", "nope")
    assert wrong_key.returncode == 5
    assert (
        wrong_key.stderr
        == f"imgserve-client: cannot use the server at {busy_server.base_url}: 401 invalid API key\n"
    )

    nowhere = f"http://127.0.0.1:{free_port()}"
    down = run_cli("classify", camera_dump, "--url", nowhere, "--max-retries", "1", "--max-total-wait", "1")
    assert down.returncode == 5
    assert down.stderr.startswith(
        f"imgserve-client: cannot use the server at {nowhere}: ConnectError on {nowhere}/v1/models"
    )
    assert down.stderr.endswith("(2 attempts)\n")
    assert run_cli("health", "--url", nowhere).returncode == 5

    too_many = run_cli(
        "classify", camera_dump, "--url", busy_server.base_url, "--api-key", API_KEY, "-k", "1001"
    )
    assert (too_many.returncode, too_many.stderr) == (
        2,
        "imgserve-client: error: --top-k 1001: the model efficientnet_lite0-imagenet1k has 1000 classes\n",
    )


def test_the_cli_writes_each_photos_map_over_it_with_explain(
    busy_server: ServerProcess, tmp_path: Path
) -> None:
    """The cat pasted into the bottom-right quadrant of a grey canvas: the overlay is hottest there."""
    import numpy as np
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    canvas = Image.new("RGB", (448, 448), (128, 128, 128))
    canvas.paste(Image.fromarray(data.chelsea()).resize((224, 224)), (224, 224))
    canvas.save(photos / "cat-corner.png")
    Image.fromarray(data.coffee()).save(photos / "coffee.jpg", quality=90)
    maps = tmp_path / "maps"
    run = run_cli(
        "classify",
        photos,
        "--url",
        busy_server.base_url,
        "--api-key",
        API_KEY,
        "--explain",
        maps,
        "-o",
        tmp_path / "o.jsonl",
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in maps.iterdir()) == ["cat-corner.cam.png", "coffee.cam.png"]
    assert f"wrote 2 overlay images to {maps}" in run.stderr
    overlay = np.asarray(Image.open(maps / "cat-corner.cam.png").convert("RGB")).astype(int)
    assert overlay.shape == (448, 448, 3)
    heat = overlay[..., 0] - overlay[..., 2]  # red over blue: the jet scale's hot end
    row, col = np.unravel_index(int(heat.argmax()), heat.shape)
    assert (row >= 224, col >= 224) == (True, True), (row, col)
    assert (overlay[:20, :20] == 128).all()  # outside the crop the model saw: the photo untouched
    records = read_jsonl(tmp_path / "o.jsonl")
    assert len(records) == 2 and all("explanation" not in r for r in records)
