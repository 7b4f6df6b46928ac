"""Clients that never read their responses, over a real server: the send timeout closes them
and gives their places under the connection cap back.

Before: 100 such connections at max_connections=100 held the cap for good (every new request
but the probes got 503 for as long as they stayed), while the probes stayed green.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from harness.metrics import read_metrics
from tests.conftest import StartServer

SEND_TIMEOUT_S = 2.0
SLACK_S = 15.0  # a busy 2-core machine (load 12-14 here: 4-7 s)


def _non_reader(port: int) -> socket.socket:
    """A connection with a 4 KB receive buffer that pipelines 6 requests for a 1.9 MB file (the
    API docs' source map) and never reads: the kernel takes ~3 MB of a connection's responses
    on loopback, then the server's write buffer fills and stays full."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /docs-assets/swagger-ui-bundle.js.map HTTP/1.1\r\nHost: x\r\n\r\n" * 6)
    return sock


def test_clients_that_never_read_are_closed_after_the_send_timeout(
    start_server: StartServer, tiny_model_path: Path
) -> None:
    """100 non-reading connections at max_connections=100: new requests get the cap's 503
    (the probes 200) only until send_timeout_s (2 s here) + 15 s, then 200 again, and the
    connections gauge drops back; each close counts as a send_timeout refusal."""
    server = start_server(
        tiny_model_path, max_connections=100, send_timeout_s=SEND_TIMEOUT_S, warmup_batch_sizes="1"
    )
    base = server.base_url
    socks = [_non_reader(server.port) for _ in range(100)]
    try:
        start = time.monotonic()
        statuses = []
        while time.monotonic() - start < SEND_TIMEOUT_S + SLACK_S:
            with httpx.Client(timeout=SLACK_S) as client:
                status = client.get(f"{base}/v1/models").status_code
                assert client.get(f"{base}/healthz").status_code == 200
            statuses.append(status)
            if status == 200:
                break
            time.sleep(0.2)
        served_after_s = time.monotonic() - start
        print(f"\n/v1/models while 100 clients did not read: {statuses}, last after {served_after_s:.1f} s")
        assert statuses[0] == 503, statuses  # the 100 held the cap
        assert statuses[-1] == 200, f"still refused after {served_after_s:.1f} s: {statuses}"
        closed = 0.0
        while closed < 100 and time.monotonic() - start < SEND_TIMEOUT_S + SLACK_S:
            closed = read_metrics(base)['imgserve_http_edge_refusals_total{reason="send_timeout"}']
            time.sleep(0.2)
    finally:
        for sock in socks:
            sock.close()
    assert closed == 100, f"{closed} connections closed by the send timeout"
