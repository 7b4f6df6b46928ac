"""Hostile inputs against the real server: every one gets the right 2xx/4xx with a clear
message, never a 5xx, and the server's memory stays bounded.

The corpus is generated (tests/reliability/corpus.py). The server runs with the small
LIMITS of conftest.py: 1 MB uploads, 4 images a request, 40 Mpixels, JPEG/PNG/WEBP/GIF.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from harness.server import ServerProcess
from tests.conftest import StartServer

from . import corpus
from .conftest import LABELS, LIMITS
from .helpers import assert_error, raw_request, read_response, response_json

# (id, file bytes, expected status, words the message must contain)
NOT_DECODABLE = ("not a decodable image", "allowed formats: GIF, JPEG, PNG, WEBP")
FILE_CASES: list[tuple[str, Callable[[], bytes], int, tuple[str, ...]]] = [
    ("empty", lambda: b"", 422, ("empty",)),
    ("text", lambda: b"hello, I am not an image\n", 422, NOT_DECODABLE),
    ("html", lambda: b"<!doctype html><html><script>alert(1)</script></html>", 422, NOT_DECODABLE),
    ("svg-xxe", corpus.svg, 422, NOT_DECODABLE),
    ("pdf", corpus.pdf, 422, NOT_DECODABLE),
    ("random-bytes", corpus.random_bytes, 422, NOT_DECODABLE),
    ("gif-js-polyglot", corpus.gif_js_polyglot, 422, ()),
    # Formats Pillow knows but the allowlist refuses: named, and never decoded (EPS would run Ghostscript).
    ("eps-ghostscript", corpus.eps, 415, ("EPS", "not accepted")),
    ("tiff-not-allowed", corpus.tiff, 415, ("TIFF", "not accepted")),
    ("bmp-not-allowed-here", lambda: corpus.solid((1, 2, 3), fmt="BMP"), 415, ("BMP", "not accepted")),
    ("truncated-jpeg", corpus.truncated_jpeg, 422, ("cannot decode JPEG",)),
    ("header-only-jpeg", corpus.header_only_jpeg, 422, ()),
    ("jpeg-magic-then-garbage", corpus.jpeg_magic_then_garbage, 422, ()),
    ("bomb-30000x30000", corpus.bomb_png, 413, ("limit of 40000000 pixels",)),
    ("over-pixel-limit-7000x7000", lambda: corpus.bomb_png(7000, 7000), 413, ("limit of 40000000 pixels",)),
    ("png-ztxt-50mb", corpus.png_text_bomb, 422, ("too large",)),
]

OK_CASES: list[tuple[str, Callable[[], bytes]]] = [
    ("jpeg-photo", corpus.jpeg),
    ("one-by-one", lambda: corpus.solid((255, 0, 0), size=(1, 1))),
    ("wide-10000x1", lambda: corpus.aspect(10_000, 1)),
    ("tall-1x10000", lambda: corpus.aspect(1, 10_000)),
    ("png-16-bit", corpus.sixteen_bit_png),
    ("png-palette-transparency", corpus.palette_png),
    ("jpeg-cmyk", corpus.cmyk_jpeg),
    ("png-rgba", corpus.rgba_png),
    ("webp-grey", corpus.grey_webp),
    ("gif-animated-60-frames", corpus.animated_gif),
    ("png-polyglot-html-zip", corpus.png_polyglot_html),
]


def post_file(
    server: ServerProcess,
    data: bytes,
    name: str = "x",
    ctype: str = "application/octet-stream",
    **params: object,
) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/predict", files={"file": (name, data, ctype)}, params=params, timeout=30
    )


def assert_prediction(response: httpx.Response, top_k: int = 5, filename: str | None = "x") -> None:
    """200 with the whole body in its documented shape: one image, top_k scores, sorted."""
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert set(body) == {"model", "model_version", "predictions"}, body
    assert (body["model"], body["model_version"]) == ("tiny", "0.0.1"), body
    (result,) = body["predictions"]
    assert result["filename"] == filename, body
    scores = result["top_k"]
    assert len(scores) == top_k, body
    probs = [s["probability"] for s in scores]
    assert probs == sorted(probs, reverse=True) and all(0.0 <= p <= 1.0 for p in probs), body
    assert all(LABELS[s["index"]] == s["label"] for s in scores), body


@pytest.mark.parametrize(
    ("data", "status", "needles"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
def test_hostile_file_is_refused_with_a_clear_4xx(
    limited_server: ServerProcess, data: Callable[[], bytes], status: int, needles: tuple[str, ...]
) -> None:
    assert_error(post_file(limited_server, data()), status, *needles)


@pytest.mark.parametrize("data", [c[1] for c in OK_CASES], ids=[c[0] for c in OK_CASES])
def test_odd_but_valid_image_is_classified(limited_server: ServerProcess, data: Callable[[], bytes]) -> None:
    assert_prediction(post_file(limited_server, data(), ctype="image/png"))


def test_red_image_is_classified_red(limited_server: ServerProcess) -> None:
    response = post_file(limited_server, corpus.solid((250, 5, 5)), top_k=1)
    assert_prediction(response, top_k=1)
    assert response.json()["predictions"][0]["top_k"][0]["label"] == "red"


@pytest.mark.parametrize("top_k", ["0", "-1", "abc", "1.5", "", str(10**30), "7"])
def test_bad_top_k_is_422(limited_server: ServerProcess, top_k: str) -> None:
    assert_error(post_file(limited_server, corpus.solid((1, 2, 3)), top_k=top_k), 422, "top_k")


# --- the shape of the request --------------------------------------------------------


def test_raw_body_with_image_content_type_is_classified(limited_server: ServerProcess) -> None:
    response = httpx.post(
        f"{limited_server.base_url}/predict", content=corpus.jpeg(), headers={"content-type": "image/jpeg"}
    )
    assert_prediction(response, filename=None)


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", "application/xml", "text/html"])
def test_raw_body_with_non_image_content_type_is_415(limited_server: ServerProcess, ctype: str) -> None:
    response = httpx.post(
        f"{limited_server.base_url}/predict", content=corpus.png(), headers={"content-type": ctype}
    )
    assert_error(response, 415)


def test_raw_body_with_no_content_type_is_415(limited_server: ServerProcess) -> None:
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 11"
    status, data = raw_request(limited_server.port, head, b"hello world")
    assert status == 415, data
    assert set(response_json(data)) == {"detail"}


def test_raw_body_whose_bytes_lie_about_the_content_type_is_judged_by_its_bytes(
    limited_server: ServerProcess,
) -> None:
    response = httpx.post(
        f"{limited_server.base_url}/predict",
        content=b"%PDF-1.4 not really",
        headers={"content-type": "image/png"},
    )
    assert_error(response, 422, "request body", *NOT_DECODABLE)


def test_multipart_with_misnamed_field_is_422(limited_server: ServerProcess) -> None:
    response = httpx.post(
        f"{limited_server.base_url}/predict", files={"image": ("a.png", corpus.png(), "image/png")}
    )
    assert_error(response, 422, "file")


def test_multipart_with_only_text_fields_is_422(limited_server: ServerProcess) -> None:
    response = httpx.post(
        f"{limited_server.base_url}/predict",
        data={"file": "not a file"},
        files={"other": ("a.txt", b"x", "text/plain")},
    )
    assert_error(response, 422, "file")


def test_multipart_without_boundary_is_a_4xx(limited_server: ServerProcess) -> None:
    response = httpx.post(
        f"{limited_server.base_url}/predict",
        content=b"--x\r\n\r\n--x--\r\n",
        headers={"content-type": "multipart/form-data"},
    )
    assert_error(response, 400, "boundary")


def test_too_many_parts_is_413(limited_server: ServerProcess) -> None:
    n = int(LIMITS["max_images_per_request"]) + 1  # type: ignore[call-overload]
    files = [("file", (f"{i}.png", corpus.solid((i, 0, 0)), "image/png")) for i in range(n)]
    response = httpx.post(f"{limited_server.base_url}/predict", files=files)
    assert_error(
        response, 413, f"more than {LIMITS['max_images_per_request']} images", "max_images_per_request"
    )


def test_thousands_of_form_fields_are_a_4xx_not_a_crash(limited_server: ServerProcess) -> None:
    data = {f"f{i}": "x" for i in range(3000)}
    response = httpx.post(
        f"{limited_server.base_url}/predict",
        data=data,
        files={"file": ("a.png", corpus.solid((1, 1, 1)), "image/png")},
    )
    assert response.status_code in (400, 413, 422), response.text
    assert_error(response, response.status_code)


def test_max_images_per_request_all_classified_in_order(limited_server: ServerProcess) -> None:
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 0, 0)]
    files = [("file", (f"{i}.png", corpus.solid(c), "image/png")) for i, c in enumerate(colours)]
    response = httpx.post(f"{limited_server.base_url}/predict", files=files, params={"top_k": 1})
    assert response.status_code == 200, response.text
    assert [r["top_k"][0]["label"] for r in response.json()["predictions"]] == ["red", "green", "blue", "red"]


def test_one_bad_image_among_good_ones_fails_the_request_with_a_4xx(limited_server: ServerProcess) -> None:
    files = [
        ("file", ("a.png", corpus.solid((9, 9, 9)), "image/png")),
        ("file", ("b.jpg", corpus.truncated_jpeg(), "image/jpeg")),
    ]
    assert_error(httpx.post(f"{limited_server.base_url}/predict", files=files), 422)


# --- oversized and slow bodies (raw sockets) -------------------------------------------


def test_oversized_content_length_is_refused_before_the_body_is_sent(limited_server: ServerProcess) -> None:
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 500000000"
    start = time.monotonic()
    status, data = raw_request(limited_server.port, head, b"", timeout_s=5)
    assert status == 413, data
    assert time.monotonic() - start < 3, "waited for a body it should have refused by its header"
    assert response_json(data) == {"detail": "request body is 500000000 bytes; the limit is 1000000"}
    assert re.search(rb"(?im)^connection:\s*close", data.partition(b"\r\n\r\n")[0]), (
        "a 413 before the body is read must close the connection, or the server reads the body anyway"
    )


def test_oversized_chunked_body_is_413_after_the_limit(start_server: StartServer, tiny_model: Path) -> None:
    """No Content-Length: the server must count what it reads and answer 413 once past the
    limit. Then it lingers (reads and discards, so that a client still sending can read the
    413 instead of a reset) for at most lingering_time_s, and closes: a client that sends on
    is cut off. The client reads between chunks, so the 413 is seen either way."""
    server = start_server(tiny_model, **LIMITS, lingering_time_s=1, lingering_timeout_s=1)
    limit = int(LIMITS["max_upload_bytes"])  # type: ignore[call-overload]
    chunk = b"\x89PNG" + bytes(65_532)
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked"
    sent = 0
    received = b""
    start = time.monotonic()
    cut_off_after_s = None
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n\r\n")
        try:
            while time.monotonic() - start < 10:  # the server must stop us long before this
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    received += sock.recv(65536)
                sock.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            cut_off_after_s = time.monotonic() - start
        sock.setblocking(True)
        with contextlib.suppress(OSError):
            received += read_response(sock, 5)[1]
    status = int(received[9:12]) if received.startswith(b"HTTP/1.1 ") else 0
    assert status == 413, (sent, received[:300])
    assert response_json(received) == {"detail": "request body exceeds the limit of 1000000 bytes"}
    assert re.search(rb"(?im)^connection:\s*close", received.partition(b"\r\n\r\n")[0]), received[:300]
    assert sent > limit
    assert cut_off_after_s is not None and cut_off_after_s < 1 + 2, (
        f"a client sending on after its 413 was cut off after {cut_off_after_s} s; lingering_time_s is 1"
    )


def test_oversized_multipart_body_is_413(limited_server: ServerProcess) -> None:
    big = corpus.png_polyglot_html() + bytes(1_200_000)
    assert_error(post_file(limited_server, big, ctype="image/png"), 413, "1000000")


def test_slow_but_steady_upload_within_the_timeout_succeeds(limited_server: ServerProcess) -> None:
    body = corpus.solid((0, 250, 0), size=(8, 8))
    head = (
        b"POST /predict?top_k=1 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d"
        % len(body)
    )
    with socket.create_connection(("127.0.0.1", limited_server.port), timeout=10) as sock:
        sock.sendall(head + b"\r\n\r\n")
        for i in range(0, len(body), len(body) // 8 + 1):
            sock.sendall(body[i : i + len(body) // 8 + 1])
            time.sleep(0.15)
        status, data = read_response(sock, 10)
    assert status == 200, data
    assert response_json(data)["predictions"][0]["top_k"][0]["label"] == "green"


def test_stalled_upload_is_cut_off_and_does_not_block_others(limited_server: ServerProcess) -> None:
    """Slowloris: 50 clients send half a body and stall. Others are still served at once,
    and each stalled request ends (an answer or a closed connection) within a bounded time."""
    timeout_s = float(LIMITS["request_timeout_s"])  # type: ignore[arg-type]
    body = corpus.jpeg()
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d" % len(body)
    socks = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", limited_server.port), timeout=5)
        sock.sendall(head + b"\r\n\r\n" + body[: len(body) // 2])
        socks.append(sock)
    try:
        start = time.monotonic()
        assert_prediction(post_file(limited_server, corpus.solid((1, 2, 3))))
        assert time.monotonic() - start < 2
        ended: list[float] = []
        for sock in socks:
            status, data = read_response(sock, timeout_s + 10 - (time.monotonic() - start))
            ended.append(time.monotonic() - start)
            if status:
                assert status in (408, 413, 422, 504), data
        assert max(ended) < timeout_s + 10, f"stalled uploads still open after {max(ended):.1f} s"
    finally:
        for sock in socks:
            sock.close()


def _peak_rss_during(server: ServerProcess, work: Callable[[], None]) -> tuple[int, int, int]:
    """(RSS before, peak RSS while ``work`` runs, RSS after), sampled every 5 ms from /proc."""
    start_rss = server.rss()
    peak = [start_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], server.rss())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        work()
    finally:
        stop.set()
        sampler.join()
    return start_rss, peak[0], server.rss()


MB = 1024 * 1024


def test_extreme_aspect_ratio_does_not_blow_up_memory(limited_server: ServerProcess) -> None:
    """A 1 x 200,000 PNG is 0.2 Mpixels and ~700 bytes. Resizing its short side to the card's
    resize_size before cropping would make a 40 x 8,000,000 intermediate (~1 GB, seconds of
    CPU; with resize_size 256 and 1 x 1,000,000 pixels: 256 Mpx x 1000, far past any RAM).
    It must be classified (or refused with a 4xx) without such an allocation."""
    data = corpus.aspect(1, 200_000)
    responses: list[httpx.Response] = []
    start = time.monotonic()
    before, peak, _ = _peak_rss_during(
        limited_server, lambda: responses.append(post_file(limited_server, data))
    )
    seconds = time.monotonic() - start
    (response,) = responses
    assert response.status_code in (200, 413, 422), response.text
    if response.status_code == 200:
        assert_prediction(response)
    else:
        assert_error(response, response.status_code, "aspect")
    assert peak - before < 300 * MB, (
        f"peak RSS grew by {(peak - before) / MB:.0f} MB for a {len(data)}-byte image"
    )
    assert seconds < 2.0, f"{seconds:.1f} s for one 0.2 Mpixel image"


# --- memory stays bounded -------------------------------------------------------------


def _heavy_requests(server: ServerProcess) -> None:
    bomb = corpus.bomb_png()
    for data in (
        bomb,
        corpus.bomb_png(7000, 7000),
        corpus.aspect(10_000, 1),
        corpus.animated_gif(),
        corpus.png_text_bomb(),
        corpus.png_polyglot_html() + bytes(1_200_000),
    ):
        response = post_file(server, data, ctype="image/png")
        assert response.status_code in (200, 413, 422), response.text[:300]
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 900000000"
    assert raw_request(server.port, head, bytes(2_000_000), timeout_s=5)[0] == 413


def test_memory_stays_bounded_under_bombs_and_oversized_bodies(limited_server: ServerProcess) -> None:
    """After two warm-up rounds, 70 bombs and oversized bodies grow RSS by < 50 MB, and
    RSS never peaks 300 MB above the start (a decoded 900 Mpixel bomb would need ~900 MB)."""
    for _ in range(2):
        _heavy_requests(limited_server)

    def rounds() -> None:
        for _ in range(10):  # 70 requests
            _heavy_requests(limited_server)

    start_rss, peak, end_rss = _peak_rss_during(limited_server, rounds)
    print(f"RSS start {start_rss / MB:.1f} MB, end {end_rss / MB:.1f} MB, peak {peak / MB:.1f} MB")
    assert end_rss - start_rss < 50 * MB
    assert peak - start_rss < 300 * MB
