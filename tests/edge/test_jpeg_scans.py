"""What a JPEG's scans cost, over a real server: a progressive JPEG whose scans repeat (a few
bytes each, every one walking the whole image's coefficients) is refused from its markers,
before any decoding, and one within the scan limit counts at its full size times its scans.

Before: two 224 KB files of ~1,800 and ~14,000 repeated scans were decoded, 5-6 CPU-s each,
counted by the budgets as light images of 0.39 and 1 MP (draft mode).
"""

from __future__ import annotations

import functools
import io
import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from harness.server import ServerProcess
from tests.conftest import StartServer
from tests.reliability import corpus

CRAFTED_BYTES = 224_000
CLOCK_TICKS_S = 100  # USER_HZ on Linux


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a JPEG written by Pillow; a scan's segment runs
    to the end of its compressed data."""
    segments, position = [], 2
    while position < len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            break
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            found = re.compile(rb"\xff[^\x00\xd0-\xd7]").search(data, end)
            end = found.start() if found else len(data)
        segments.append((marker, position, end))
        position = end
    return segments


def progressive(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", progressive=True, quality=90)
    return buffer.getvalue()


@functools.cache
def repeated_scans(side: int, size_bytes: int | None = None, scans: int | None = None) -> bytes:
    """A flat side x side progressive JPEG whose first one-component AC scan (a few bytes of
    end-of-band runs over every luma block) is repeated to ``size_bytes`` or to ``scans`` scans
    in all; libjpeg-turbo warns about the progression and decodes every one."""
    data = progressive(Image.new("RGB", (side, side), (120, 130, 140)))
    segments = _segments(data)
    scan = next(
        data[start:end]
        for marker, start, end in segments
        if marker == 0xDA and data[start + 4] == 1 and data[start + 7] > 0 and data[start + 9] >> 4 == 0
    )
    original_scans = sum(1 for marker, _, _ in segments if marker == 0xDA)
    repeats = (size_bytes - len(data)) // len(scan) if size_bytes else (scans or 0) - original_scans
    return data[: segments[-1][2]] + scan * repeats + b"\xff\xd9"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_S


@pytest.fixture(scope="module")
def server(start_module_server: StartServer, tiny_model_path: Path) -> ServerProcess:
    return start_module_server(tiny_model_path, decode_threads=2, warmup_batch_sizes="1")


def _post(base: str, name: str, data: bytes, out: dict[str, tuple[int, str, float]]) -> None:
    start = time.perf_counter()
    response = httpx.post(f"{base}/predict", files={"file": (name, data, "image/jpeg")}, timeout=120)
    out[name] = (response.status_code, response.text, time.perf_counter() - start)


def test_two_crafted_progressive_jpegs_are_refused_from_their_markers(server: ServerProcess) -> None:
    """Two 224 KB progressive JPEGs of repeated scans (5000x5000: ~1,800 scans; 2000x2000:
    ~14,000), sent at once: both 413 naming max_jpeg_scans, the server spending <= 0.5 CPU-s
    on each; other clients' predicts meanwhile all 200 (their max latency is printed)."""
    crafted = {
        "scans5000.jpg": repeated_scans(5000, CRAFTED_BYTES),
        "scans2000.jpg": repeated_scans(2000, CRAFTED_BYTES),
    }
    assert all(len(data) <= CRAFTED_BYTES for data in crafted.values())
    normal = corpus.jpeg()
    assert httpx.post(f"{server.base_url}/predict", files={"file": ("a.jpg", normal)}).status_code == 200
    cpu_before = _cpu_s(server.pid)
    answers: dict[str, tuple[int, str, float]] = {}
    threads = [
        threading.Thread(target=_post, args=(server.base_url, n, d, answers)) for n, d in crafted.items()
    ]
    for thread in threads:
        thread.start()
    latencies = []
    with httpx.Client(timeout=60) as client:
        while any(thread.is_alive() for thread in threads) or len(latencies) < 20:
            start = time.perf_counter()
            response = client.post(f"{server.base_url}/predict", files={"file": ("a.jpg", normal)})
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text
    for thread in threads:
        thread.join()
    cpu_s = _cpu_s(server.pid) - cpu_before
    print(
        f"\ntwo crafted JPEGs: {[(n, a[0], round(a[2], 2)) for n, a in answers.items()]}; server CPU "
        f"{cpu_s:.2f} s with {len(latencies)} normal predicts, their max {1000 * max(latencies):.0f} ms"
    )
    for name, (status, text, _) in answers.items():
        assert status == 413, (name, status, text)
        assert json.loads(text)["detail"] == (
            f"file #1 '{name}': the JPEG has more than 64 scans, the limit per image (max_jpeg_scans); "
            "encoders write 1 (baseline) or about 10 (progressive)"
        )
    assert cpu_s <= 2 * 0.5, f"the server spent {cpu_s:.2f} CPU-s on two crafted JPEGs and 20+ predicts"


def test_a_progressive_jpeg_counts_at_full_size_times_its_scans(server: ServerProcess) -> None:
    """Within the scan limit, a progressive JPEG counts what its decode holds and walks: a 5000
    x 5000 one with 60 scans (~230 MP of work; draft mode counted 0.39 MP) is over the default
    max_request_pixels of 100 MP; a real 12-MP progressive photo (10 scans, 28 MP of work) and
    its baseline twin are served."""
    base = server.base_url
    sixty = repeated_scans(5000, scans=60)
    refused = httpx.post(f"{base}/predict", files={"file": ("sixty.jpg", sixty, "image/jpeg")}, timeout=60)
    assert refused.status_code == 413, refused.text
    assert "max_request_pixels" in refused.json()["detail"], refused.text
    photo = corpus.photo().resize((4000, 3000), Image.Resampling.BICUBIC)
    for name, data in (("progressive.jpg", progressive(photo)), ("baseline.jpg", corpus.jpeg(photo))):
        response = httpx.post(f"{base}/predict", files={"file": (name, data, "image/jpeg")}, timeout=60)
        assert response.status_code == 200, (name, response.text)
