"""Issue 16, the cost half: what one request, and all requests together, may make the server do.

Each test runs real server processes and reproduces one finding of the hostile-client review;
each failed on the code before the change (the figure it bounds is in its docstring):

- decode-cost amplification: 32 flat lossless WebPs of 25 MP (1 KB each, ~0.6 CPU-s each to
  decode) in one request, and requests within the per-request budget that still decode for
  seconds, while normal requests keep p99 <= 10x their idle p99 (both measured here, on a
  machine that may be shared: the idle median is printed too);
- stalled uploads pin at most ``max_buffered_body_bytes``;
- crafted multipart bodies (a one-character boundary and 19 MB of near-boundary sequences,
  ~100x a normal body's parse) cost the event loop <= 100 ms of CPU each while they flood the
  server, and /healthz answers meanwhile;
- top_k leniency and the schema's declared maximum.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from harness.loadgen import percentile
from harness.metrics import read_metrics
from harness.server import ServerProcess
from tests.conftest import StartServer
from tests.edge.probes import event_loop_cpu_s, healthz_latencies
from tests.reliability import corpus
from tests.reliability.helpers import read_response, response_json

MP = 1_000_000
IDLE_REQUESTS = 60
BUSY_REQUESTS = 100


@functools.cache
def flat_webp(side: int) -> bytes:
    """A side x side flat lossless WebP: about 1 KB that decodes to side² RGB pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (12, 200, 40)).save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


@functools.cache
def photo() -> bytes:
    """A normal request's image: a real photo (scikit-image's astronaut) at 2000x2000, a 4-MP
    JPEG: ~20-25 ms a request with the default model, the normal request of the issue."""
    return corpus.jpeg(corpus.photo().resize((2000, 2000), Image.Resampling.BICUBIC))


def normal_latencies(base_url: str, count: int, pause_s: float = 0.0) -> list[float]:
    """Latencies of ``count`` one-photo requests, one after another; every one must be 200."""
    latencies = []
    files = {"file": ("astronaut.jpg", photo(), "image/jpeg")}
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            start = time.perf_counter()
            response = client.post(f"{base_url}/predict", files=files)
            latencies.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text
            time.sleep(pause_s)
    return latencies


# A client in its own process (its own GIL): posts one body over and over for ``duration_s``,
# then prints each answer's status and the first answer's body.
_ATTACKER = """
import sys, time, httpx
url, body_path, content_type, duration_s = sys.argv[1:5]
body = open(body_path, "rb").read()
statuses, first, end = [], None, time.monotonic() + float(duration_s)
with httpx.Client(timeout=120) as client:
    while time.monotonic() < end:
        response = client.post(url, content=body, headers={"content-type": content_type})
        statuses.append(response.status_code)
        first = first if first is not None else response.text
print(" ".join(map(str, statuses)))
print(first)
"""


def report(what: str, idle: list[float], busy: list[float]) -> None:
    """Print the figures a test bounds: idle p50 and p99, and p99 under attack."""
    idle_p50, idle_p99, busy_p99 = (1000 * percentile(v, q) for v, q in ((idle, 50), (idle, 99), (busy, 99)))
    print(
        f"\nidle p50 {idle_p50:.1f} ms, p99 {idle_p99:.1f} ms; {what}: p99 {busy_p99:.1f} ms "
        f"({busy_p99 / idle_p99:.1f}x idle p99, {busy_p99 / idle_p50:.1f}x idle p50)"
    )


def multipart(files: list[tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart request with these files as parts named ``file``."""
    request = httpx.Request("POST", "http://x/", files=[("file", f) for f in files])
    return request.read(), request.headers["content-type"]


@contextlib.contextmanager
def attackers(
    url: str, body: tuple[bytes, str], duration_s: float, tmp: Path, count: int = 1
) -> Iterator[list[list[str]]]:
    """Run ``count`` clients, each its own process, that post ``body`` over and over for
    ``duration_s`` while the block runs; yields, filled once the block is done, each client's
    [statuses, first answer's body]."""
    body_path = tmp / "attack.body"
    body_path.write_bytes(body[0])
    argv = [sys.executable, "-c", _ATTACKER, url, str(body_path), body[1], str(duration_s)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    outcomes: list[list[str]] = []
    try:
        yield outcomes
    finally:
        for proc in procs:
            out, _ = proc.communicate(timeout=duration_s + 120)
            outcomes.append(out.split("\n", 1))


@pytest.fixture(scope="module")
def cost_server(start_module_server: StartServer, default_model_path: Path) -> ServerProcess:
    """The default model (a normal request: ~25 ms), default budgets and limits, and two decode
    threads, as on the 2-core machines of the issue (one ONNX Runtime thread: its spinning
    threads would only add noise on a shared machine)."""
    return start_module_server(default_model_path, decode_threads=2, intra_op_threads=1)


def test_32_webps_at_the_pixel_limit_get_413_naming_the_budget_and_normal_requests_stay_fast(
    cost_server: ServerProcess, tmp_path: Path
) -> None:
    """32 x 25 MP = 800 MP in a 33 KB request: 413 naming max_request_pixels, at once, and normal
    requests sent meanwhile keep p99 <= 10x their idle p99. (Before: 40 MP images were
    allowed and all 32 decoded, ~19 CPU-s, while normal requests waited seconds.)"""
    base = cost_server.base_url
    idle = normal_latencies(base, IDLE_REQUESTS)
    heavy = [(f"flat{i}.webp", flat_webp(5000), "image/webp") for i in range(32)]
    with attackers(f"{base}/predict", multipart(heavy), 4.0, tmp_path) as outcomes:
        time.sleep(0.2)
        busy = normal_latencies(base, BUSY_REQUESTS, pause_s=0.01)
    statuses, first = outcomes[0][0].split(), json.loads(outcomes[0][1])
    report(f"during {len(statuses)} heavy requests", idle, busy)
    assert statuses and set(statuses) == {"413"}, statuses
    assert first == {
        "detail": "the request's 32 images decode to 800000000 pixels, over the budget of 100000000 "
        "pixels per request (max_request_pixels); send fewer or smaller images per request"
    }
    assert percentile(busy, 99) <= 10 * percentile(idle, 99)


def test_requests_within_budget_that_decode_for_seconds_leave_a_thread_to_normal_requests(
    cost_server: ServerProcess, tmp_path: Path
) -> None:
    """Requests of 4 x 25 MP (at the per-request budget: ~2.4 CPU-s of decoding each) are
    served, on the heavy lane of one thread, while normal requests keep p99 <= 10x their idle
    p99. (Before: the 4 heavy images took both decode threads, first come first served, and
    normal requests waited behind them, hundreds of ms.)"""
    base = cost_server.base_url
    idle = normal_latencies(base, IDLE_REQUESTS)
    heavy = [(f"flat{i}.webp", flat_webp(5000), "image/webp") for i in range(4)]
    with attackers(f"{base}/predict", multipart(heavy), 4.0, tmp_path) as outcomes:
        time.sleep(0.3)
        busy = normal_latencies(base, BUSY_REQUESTS, pause_s=0.01)
    statuses = outcomes[0][0].split()
    report(f"beside {len(statuses)} heavy requests", idle, busy)
    assert statuses and set(statuses) == {"200"}, statuses
    assert percentile(busy, 99) <= 10 * percentile(idle, 99)


def test_the_process_budget_refuses_with_503_and_retry_after_naming_it(
    start_server: StartServer, tiny_model_path: Path
) -> None:
    """With 100 MP being decoded (max_decoding_pixels=100 MP), another 25 MP request gets 503 +
    Retry-After naming max_decoding_pixels at once, and is served once the first is done."""
    server = start_server(tiny_model_path, decode_threads=2, max_decoding_pixels=100 * MP)
    base = server.base_url
    heavy = [("file", (f"flat{i}.webp", flat_webp(5000), "image/webp")) for i in range(4)]
    done: list[int] = []
    first = threading.Thread(
        target=lambda: done.append(httpx.post(f"{base}/predict", files=heavy, timeout=60).status_code)
    )
    first.start()
    try:
        deadline = time.monotonic() + 10
        while read_metrics(base).get("imgserve_decoding_pixels", 0) < 100 * MP:
            assert time.monotonic() < deadline, "the heavy request was never admitted"
            time.sleep(0.01)
        start = time.perf_counter()
        refused = httpx.post(f"{base}/predict", files=[heavy[0]], timeout=30)
        refused_s = time.perf_counter() - start
    finally:
        first.join(timeout=60)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"].isdigit() and int(refused.headers["retry-after"]) >= 1
    assert "max_decoding_pixels" in refused.json()["detail"], refused.text
    assert refused_s < 1.0, refused_s
    assert done and set(done) == {200}, done
    assert httpx.post(f"{base}/predict", files=[heavy[0]], timeout=30).status_code == 200


def _stalled_upload(port: int, length: int, send: int) -> socket.socket:
    """A raw-body upload that declares ``length`` bytes, sends ``send`` of them and stalls."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
    )
    sock.sendall(b"\x00" * send)
    return sock


def test_stalled_uploads_cannot_pin_more_than_the_configured_bytes(
    start_server: StartServer, tiny_model_path: Path
) -> None:
    """max_buffered_body_bytes = 8 MiB, uploads of 4 MiB stalled one byte short: two are held,
    every further one (declared or chunked) gets 503 + Retry-After at once, and the bytes held
    never pass 8 MiB. (Before: every stalled upload was read and held until its deadline: 40
    uploads of 19 MB pinned 761 MB.)"""
    mib = 1024 * 1024
    server = start_server(
        tiny_model_path, max_upload_bytes=4 * mib, max_buffered_body_bytes=8 * mib, request_timeout_s=20
    )
    held = [_stalled_upload(server.port, 4 * mib, 4 * mib - 1) for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while read_metrics(server.base_url)["imgserve_buffered_body_bytes"] < 8 * mib:
            assert time.monotonic() < deadline, read_metrics(server.base_url)
            time.sleep(0.05)
        rss_before = server.rss()
        for _ in range(6):
            start = time.perf_counter()
            with _stalled_upload(server.port, 4 * mib, 64 * 1024) as sock:
                status, data = read_response(sock, timeout_s=10)
            assert status == 503, data[:300]
            assert time.perf_counter() - start < 2.0
            assert b"retry-after: 1" in data.lower(), data[:300]
            assert "max_buffered_body_bytes" in response_json(data)["detail"]
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + b"10000\r\n" + b"\x00" * 0x10000 + b"\r\n"
            )
            status, data = read_response(sock, timeout_s=10)
        assert status == 503, data[:300]
        held_bytes = read_metrics(server.base_url)["imgserve_buffered_body_bytes"]
        assert held_bytes == 8 * mib, held_bytes  # the two stalled uploads' declared lengths
        assert server.rss() - rss_before < 8 * mib, (rss_before, server.rss())
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while read_metrics(server.base_url)["imgserve_buffered_body_bytes"] > 0:
        assert time.monotonic() < deadline, "the stalled uploads' bytes were never given back"
        time.sleep(0.05)
    assert normal_latencies(server.base_url, 1)


def crafted_multipart(size: int = 19_000_000) -> tuple[bytes, str]:
    """One part of ``size`` bytes of near-boundary sequences under the shortest boundary, "a":
    every 7 bytes the parser finds "CRLF--a" and must step through what follows in Python."""
    head = b'--a\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
    filler = b"\r\n--a-X" * (size // 7)
    return head + filler + b"\r\n--a--\r\n", "multipart/form-data; boundary=a"


def test_healthz_stays_fast_during_a_crafted_multipart_flood(
    start_server: StartServer, tiny_model_path: Path, tmp_path: Path
) -> None:
    """Three clients post 19 MB crafted multipart bodies (~100x a normal body's parse) over and
    over: each gets its 422, and the event loop spends <= 100 ms of CPU a body, so /healthz
    (which answers every time meanwhile) never waits long behind them. CPU time, not the
    probes' wall time: the machine's other work does not change it (on this shared 2-core
    machine the probes' p99 ranged from 10 ms to 1 s across runs, at 22-26 CPU-ms a body in
    every one). (Before: the parser ran on the event loop, one received chunk at a time:
    4.3 CPU-s a body, /healthz p99 258 ms.)"""
    server = start_server(tiny_model_path)
    base = server.base_url
    loop_cpu_s = event_loop_cpu_s(server)
    with attackers(f"{base}/predict", crafted_multipart(), 6.0, tmp_path, count=3) as outcomes:
        time.sleep(0.5)
        probes = healthz_latencies(base, 4.0)
    loop_cpu_s = event_loop_cpu_s(server) - loop_cpu_s
    statuses = [status for outcome in outcomes for status in outcome[0].split()]
    print(
        f"\n{len(statuses)} crafted bodies: event loop {loop_cpu_s * 1000 / max(1, len(statuses)):.1f} "
        f"CPU-ms a body; /healthz p50 {percentile(probes, 50) * 1000:.1f}, "
        f"p99 {percentile(probes, 99) * 1000:.1f} ms"
    )
    assert statuses and set(statuses) == {"422"}, statuses
    assert loop_cpu_s / len(statuses) <= 0.100, f"{loop_cpu_s:.2f} CPU-s for {len(statuses)} bodies"


@pytest.fixture(scope="module")
def tiny_server(start_module_server: StartServer, tiny_model_path: Path) -> ServerProcess:
    """The tiny colour model: four classes."""
    return start_module_server(tiny_model_path, max_images_per_request=4)


def _predict(base: str, query: str, route: str = "/predict") -> httpx.Response:
    files = {"file": ("red.jpg", photo(), "image/jpeg")}
    return httpx.post(f"{base}{route}?{query}", files=files, timeout=30)


def _tf_predict(base: str, name: str, query: str) -> httpx.Response:
    body = {"instances": [{"b64": base64.b64encode(photo()).decode()}]}
    return httpx.post(f"{base}/v1/models/{name}:predict?{query}", json=body, timeout=30)


def test_top_k_must_be_plain_digits_once_and_at_most_100(cost_server: ServerProcess) -> None:
    """The default model has 1,000 classes: top_k=100 answers 100 scores, 101 and '1_000' are
    refused, and so is a top_k given twice. (Before: '1_000' answered all 1,000 classes, and
    ?top_k=abc&top_k=2 answered 200 with 2.)"""
    base = cost_server.base_url
    answer = _predict(base, "top_k=100")
    assert answer.status_code == 200 and len(answer.json()["predictions"][0]["top_k"]) == 100
    refusals = {
        "top_k=101": "query parameter top_k: Input should be less than or equal to 100 (got '101')",
        "top_k=1_000": "query parameter top_k: write the number in plain decimal digits, without sign, "
        "spaces or '_' (got '1_000')",
        "top_k=abc&top_k=2": "query parameter top_k: given more than once; send it once (got ['abc', '2'])",
        "top_k=2&top_k=2": "query parameter top_k: given more than once; send it once (got ['2', '2'])",
    }
    for query, detail in refusals.items():
        response = _predict(base, query)
        assert (response.status_code, response.json()) == (422, {"detail": detail}), query
    model = httpx.get(f"{base}/v1/models").json()["models"][0]["name"]
    tf = _tf_predict(base, model, "top_k=1&top_k=2")
    assert (tf.status_code, tf.json()) == (
        400,
        {"error": "query parameter top_k: given more than once; send it once (got ['1', '2'])"},
    )
    assert _tf_predict(base, model, "top_k=101").status_code == 400
    encoded = base64.b64encode(photo()).decode()
    image = {"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": [encoded]}
    v2 = httpx.post(
        f"{base}/v2/models/{model}/infer",
        json={
            "inputs": [image],
            "outputs": [{"name": "probs", "parameters": {"classification": 101}}],
        },
        timeout=30,
    )
    assert (v2.status_code, v2.json()) == (
        400,
        {
            "error": "classification must be between 1 and 100 (the most one answer lists; the model has "
            "1000 classes), got 101"
        },
    )


def _top_k_maxima(schema: dict[str, Any]) -> dict[str, int]:
    maxima = {}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "top_k":
                    bounds = parameter["schema"].get("anyOf", [parameter["schema"]])
                    maxima[path] = next(b["maximum"] for b in bounds if b.get("type") == "integer")
    return maxima


def test_the_schema_declares_what_the_server_accepts(
    cost_server: ServerProcess, tiny_server: ServerProcess
) -> None:
    """top_k's maximum is declared (the model's classes, at most 100), every value up to it is
    served and the next is refused; maxItems is max_images_per_request. (Before: no maximum,
    so a schema-valid top_k=2559 got 422.)"""
    routes = ["/predict", "/v1/models/{name}/predict", "/v1/models/{name}/versions/{version}/predict"]
    tf_routes = ["/v1/models/{name}:predict", "/v1/models/{name}/versions/{version}:predict"]
    for server, classes in ((cost_server, 100), (tiny_server, 4)):
        schema = httpx.get(f"{server.base_url}/openapi.json").json()
        assert _top_k_maxima(schema) == dict.fromkeys(routes + tf_routes, classes)
    schema = httpx.get(f"{tiny_server.base_url}/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["maxItems"] == 4
    for k in range(1, 5):
        assert _predict(tiny_server.base_url, f"top_k={k}").status_code == 200
    assert _predict(tiny_server.base_url, "top_k=5").json() == {
        "detail": "top_k must be between 1 and 4 (the number of classes), got 5"
    }
    files = [("file", ("red.jpg", photo(), "image/jpeg"))] * 5
    too_many = httpx.post(f"{tiny_server.base_url}/predict", files=files, timeout=30)
    assert too_many.status_code == 413


def test_every_front_end_gets_the_same_pixel_budget(start_server: StartServer, tiny_model_path: Path) -> None:
    """/predict, /v1/models/{name}/predict, TF Serving's :predict and v2's infer share the
    engine's admission: 3 x 25 MP over a 50-MP budget is 413 naming max_request_pixels on each."""
    server = start_server(tiny_model_path, max_request_pixels=50 * MP)
    base, image = server.base_url, flat_webp(5000)
    detail = (
        "the request's 3 images decode to 75000000 pixels, over the budget of 50000000 pixels per "
        "request (max_request_pixels); send fewer or smaller images per request"
    )
    files = [("file", (f"{i}.webp", image, "image/webp")) for i in range(3)]
    for route in ("/predict", "/v1/models/tiny-rgb/predict"):
        response = httpx.post(f"{base}{route}", files=files, timeout=30)
        assert (response.status_code, response.json()) == (413, {"detail": detail}), route
    encoded = base64.b64encode(image).decode()
    tf = httpx.post(
        f"{base}/v1/models/tiny-rgb:predict", json={"instances": [{"b64": encoded}] * 3}, timeout=30
    )
    assert (tf.status_code, tf.json()) == (413, {"error": detail})
    v2 = httpx.post(
        f"{base}/v2/models/tiny-rgb/infer",
        json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3, 1], "data": [encoded] * 3}]},
        timeout=30,
    )
    assert (v2.status_code, v2.json()) == (413, {"error": detail})
