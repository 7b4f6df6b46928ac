"""The gRPC port's bounds over a real server: stalled messages, calls without a key, idle
connections and a connection flood, each from a raw HTTP/2 client (tests/edge/h2_stall.py).

Before: 32 streams on one connection announcing 20 MiB and stalling one byte short held
+644 MB with no answer; without a key, 16 such streams +325 MB; handshaken idle connections
were never closed; 290 idle gRPC connections at a 300-file limit took the descriptors HTTP
needs, and /healthz failed.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.server import ServerProcess, free_port, settings_env
from tests.conftest import StartServer
from tests.edge.h2_stall import StallingClient
from tests.reliability import corpus

KEY = "k-grpc-5d1e0a"
MiB = 1024 * 1024
IDLE_S = 2.0
SLACK_S = 3.0  # a busy 2-core machine


@pytest.fixture(scope="module")
def server(start_module_server: StartServer, tiny_model_path: Path) -> ServerProcess:
    return start_module_server(
        tiny_model_path,
        grpc_port=free_port(),
        api_keys=KEY,
        grpc_connection_idle_s=IDLE_S,
        warmup_batch_sizes="1",
    )


def _grpc_port(server: ServerProcess) -> int:
    return int(server.env["IMGSERVE_GRPC_PORT"])


def _infer(port: int) -> str:
    """One tritonclient ModelInfer of a red image; the label it gets."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    image = grpcclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[corpus.solid((250, 5, 5))]], dtype=np.object_))
    result = client.infer(
        "tiny-rgb",
        [image],
        outputs=[grpcclient.InferRequestedOutput("probs", class_count=1)],
        headers={"authorization": f"Bearer {KEY}"},
        client_timeout=10,
    )
    return str(result.as_numpy("probs")[0][0].decode().split(":", 2)[2])


def test_32_stalled_messages_on_one_connection_hold_little_and_others_are_served(
    server: ServerProcess,
) -> None:
    """32 streams with the key, each announcing 20 MiB and sending all but a byte, for 8 s:
    server RSS grows <= 200 MB, and another client's ModelInfer is served meanwhile."""
    port = _grpc_port(server)
    assert _infer(port) == "red"
    before = server.rss()
    attacker = StallingClient(port, {"authorization": f"Bearer {KEY}"})
    try:
        attacker.open_streams(32, 20 * MiB)
        sent = attacker.pump(4.0)
        start = time.perf_counter()
        label = _infer(port)
        infer_s = time.perf_counter() - start
        sent += attacker.pump(4.0)
        growth = server.rss() - before
    finally:
        attacker.close()
    print(
        f"\n32 stalled streams: {sent / MiB:.0f} MiB sent, RSS +{growth / MiB:.0f} MiB; "
        f"infer meanwhile {infer_s:.2f} s"
    )
    assert label == "red"
    assert growth <= 200 * 1e6, f"RSS grew {growth / MiB:.0f} MiB"


def test_calls_without_a_key_are_refused_before_their_messages_are_read(server: ServerProcess) -> None:
    """16 streams without a key, each announcing 20 MiB: every one gets UNAUTHENTICATED (16)
    at once, while less than 2 MiB of their messages was taken in."""
    port = _grpc_port(server)
    before = server.rss()
    attacker = StallingClient(port)
    try:
        attacker.open_streams(16, 20 * MiB)
        sent = attacker.pump(3.0)
        growth = server.rss() - before
    finally:
        attacker.close()
    print(
        f"\n16 streams without a key: {sent / MiB:.1f} MiB sent, RSS +{growth / MiB:.0f} MiB, "
        f"{attacker.ended}"
    )
    assert sorted(attacker.ended.values()) == ["16"] * 16, attacker.ended
    assert sent < 2 * MiB, sent


def test_idle_connections_are_closed_after_the_idle_time(server: ServerProcess) -> None:
    """A handshaken connection that makes no call is closed within grpc_connection_idle_s
    (2 s here) + 3 s."""
    client = StallingClient(_grpc_port(server))
    start = time.monotonic()
    try:
        while not client.closed and time.monotonic() - start < IDLE_S + SLACK_S:
            client.pump(0.1)
    finally:
        client.close()
    assert client.closed, f"still open after {IDLE_S + SLACK_S} s"
    print(f"\nidle connection closed after {time.monotonic() - start:.1f} s")


def test_grpc_connections_are_capped_and_leave_http_its_descriptors(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """At a 300-file limit, with max_connections=100 and grpc_max_connections=50: 290 idle,
    handshaken gRPC connections cannot take the descriptors HTTP needs: /healthz answers 200
    while they are open, and the server keeps at most 50 of them. (A new gRPC connection,
    health checks included, is refused while the cap is full: probes belong on HTTP.)"""
    grpc_port = free_port()
    settings = {"grpc_port": grpc_port, "max_connections": 100, "grpc_max_connections": 50}
    server = ServerProcess(
        settings_env(tiny_model_path, {"warmup_batch_sizes": "1", **settings}),
        tmp_path / "server.log",
        argv_prefix=("prlimit", "--nofile=300:300"),
        inherit_settings=False,
    )
    with server:
        clients = []
        try:
            for _ in range(290):
                client = StallingClient(grpc_port)
                client.pump(0.0)
                clients.append(client)
            for client in clients:
                client.pump(0.01)
            open_count = sum(not client.closed for client in clients)
            healthz = httpx.get(f"{server.base_url}/healthz", timeout=5).status_code
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                try:
                    status = str(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)
                except grpc.RpcError as exc:
                    status = str(exc.code())
        finally:
            for client in clients:
                client.close()
    print(f"\n290 gRPC connections: {open_count} still open; /healthz {healthz}, gRPC health {status}")
    assert healthz == 200
    assert open_count <= 50, open_count
