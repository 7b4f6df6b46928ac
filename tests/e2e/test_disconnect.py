"""A client that disconnects while its images wait in the queue leaves no work behind."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

from PIL import Image

from harness.metrics import read_metrics
from tests.conftest import StartServer


def test_a_disconnected_client_has_its_queued_images_dropped(
    start_server: StartServer, tiny_model_path: Path
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 10)).save(buffer, format="PNG")
    body = buffer.getvalue()
    server = start_server(
        tiny_model_path, max_delay_ms=8000, batch_policy="fixed", warmup_batch_sizes="1", log_level="info"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        head = (
            f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"X-Request-ID: gone-client\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 5
        while read_metrics(server.base_url)["imgserve_queue_images"] < 1:
            assert time.monotonic() < deadline, "the image never reached the queue"
            time.sleep(0.02)
    # The client is gone long before max_delay_ms would have run its batch.
    deadline = time.monotonic() + 3
    while read_metrics(server.base_url)["imgserve_queue_images"] != 0:
        assert time.monotonic() < deadline, "the gone client's image is still queued"
        time.sleep(0.02)
    assert read_metrics(server.base_url)["imgserve_batch_size_count"] == 0  # nothing ran for it
    logged = [line for line in server.log_lines() if line.get("request_id") == "gone-client"]
    assert [(line["status"], line["images"]) for line in logged] == [(499, 1)]


def test_a_body_refused_part_way_is_not_read_further(
    start_server: StartServer, tiny_model_path: Path
) -> None:
    """413 on a chunked body past max_upload_bytes: the response says Connection: close, and a
    client that stops sending once it reads it has sent little. (The server then lingers:
    it half-closes and discards what still comes, for at most lingering_time_s, so the 413
    is not lost to a reset; tests/edge and test_hostile_inputs.py check that bound.)"""
    server = start_server(tiny_model_path, max_upload_bytes=100_000, warmup_batch_sizes="1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (65536, b"\0" * 65536)
        sent, received = 0, b""
        try:
            while sent < 50_000_000 and b"\r\n\r\n" not in received:
                sock.sendall(chunk)
                sent += 65536
                sock.setblocking(False)
                try:
                    received += sock.recv(65536)
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
            sock.settimeout(5)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except (BrokenPipeError, ConnectionResetError):
            pass
    head = received.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 413"), received[:200]  # never lost to a reset
    assert b"connection: close" in head
    # The 413 came once the limit passed: loopback's socket buffers absorb a few MB more before
    # the client reads it and stops.
    assert sent < 16_000_000, f"the 413 came late: {sent} bytes sent"
