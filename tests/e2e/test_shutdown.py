"""SIGTERM: readiness turns 503 and the listener closes at once, open connections are served
through the shutdown delay, accepted requests all finish, the process exits in time.

These use the tiny model with a long fixed max_delay_ms so that requests are provably still queued
in the batcher when the signal arrives.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from harness.metrics import read_metrics
from harness.server import ServerProcess
from tests.conftest import StartServer


def png(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def post_image(url: str) -> int:
    with httpx.Client(timeout=30) as client:
        return client.post(f"{url}/predict", content=png(), headers={"Content-Type": "image/png"}).status_code


def wait_for_queue(server: ServerProcess, images: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if read_metrics(server.base_url)["imgserve_queue_images"] >= images:
            return
        time.sleep(0.02)
    raise TimeoutError(f"fewer than {images} images queued after {timeout_s} s")


def test_sigterm_finishes_queued_requests_then_exits(
    start_server: StartServer, tiny_model_path: Path
) -> None:
    server = start_server(
        tiny_model_path,
        max_delay_ms=1500,
        batch_policy="fixed",
        max_batch_size=64,
        warmup_batch_sizes="1",
        log_level="info",
    )
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        pending = [pool.submit(post_image, server.base_url) for _ in range(12)]
        wait_for_queue(server, 12)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        statuses = [future.result(timeout=30) for future in pending]
    assert statuses == [200] * 12
    assert server.proc.wait(timeout=30) == 0
    assert time.monotonic() - signalled < 30
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base_url}/healthz", timeout=2)
    messages = [line.get("message") for line in server.log_lines()]
    assert "draining: not ready, not listening, closing connections after each response" in messages
    assert "models stopped" in messages


def test_during_shutdown_delay_open_connections_are_served_with_connection_close(
    start_server: StartServer, tiny_model_path: Path
) -> None:
    """New connections are refused at once (a load balancer retries them elsewhere, safely);
    connections already open get their answers, each with Connection: close."""
    server = start_server(tiny_model_path, shutdown_delay_s=2, warmup_batch_sizes="1")
    with (
        httpx.Client(base_url=server.base_url, timeout=10) as prober,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        assert prober.get("/readyz").status_code == 200  # opens a keep-alive connection each
        assert client.get("/healthz").status_code == 200
        server.signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.base_url}/healthz", timeout=2)
        ready = prober.get("/readyz")
        assert (ready.status_code, ready.json()) == (
            503,
            {"detail": "not ready: draining, the server is shutting down"},
        )
        assert ready.headers["connection"] == "close" and ready.headers["retry-after"] == "1"
        served = client.post("/predict", content=png(), headers={"Content-Type": "image/png"})
        assert served.status_code == 200 and served.headers["connection"] == "close"
        assert served.json()["predictions"][0]["top_k"][0]["label"] == "red"
    assert server.proc.wait(timeout=30) == 0


def test_sigterm_under_load_loses_no_accepted_request(
    start_server: StartServer, tiny_model_path: Path
) -> None:
    """Eight clients send back to back on keep-alive connections; a load balancer polls
    /readyz every 100 ms and stops routing when it stops answering 200. After SIGTERM a new
    connection is refused (never accepted, so nothing is lost: a balancer sends it elsewhere);
    every request that reached the server gets its 200 and the right answer, including those
    on connections that were open when the signal came."""
    server = start_server(tiny_model_path, shutdown_delay_s=1.5, max_delay_ms=20, warmup_batch_sizes="1")
    outcomes: list[tuple[str, str, str]] = []  # (status or what happened, Connection, body)
    routing = threading.Event()
    routing.set()

    def load_balancer() -> None:
        with httpx.Client(base_url=server.base_url, timeout=5) as probe:
            try:
                while probe.get("/readyz").status_code == 200:
                    time.sleep(0.1)
            except httpx.ConnectError:
                pass  # not listening any more: not ready either
        routing.clear()

    def client_loop() -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            while routing.is_set():
                try:
                    response = client.post("/predict", content=png(), headers={"Content-Type": "image/png"})
                    connection = response.headers.get("connection", "")
                    outcomes.append((str(response.status_code), connection, response.text))
                except httpx.ConnectError:
                    outcomes.append(("refused", "", ""))  # never accepted: nothing lost
                    time.sleep(0.05)
                except httpx.HTTPError as exc:
                    outcomes.append((f"lost: {type(exc).__name__}: {exc}", "", ""))

    balancer = threading.Thread(target=load_balancer)
    threads = [threading.Thread(target=client_loop) for _ in range(8)]
    balancer.start()
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert time.monotonic() - signalled < 30
    for thread in [balancer, *threads]:
        thread.join(30)
    statuses = [status for status, _, _ in outcomes if status != "refused"]
    assert set(statuses) == {"200"}, [s for s in statuses if s != "200"]
    assert len(statuses) > 20
    answers = [json.loads(body) for status, _, body in outcomes if status == "200"]
    assert {answer["predictions"][0]["top_k"][0]["label"] for answer in answers} == {"red"}
    assert any(connection == "close" for _, connection, _ in outcomes), "no request was served while draining"
