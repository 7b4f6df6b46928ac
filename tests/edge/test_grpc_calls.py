"""Every gRPC call over a real server: one past the cap on calls in progress is refused with
RESOURCE_EXHAUSTED and logs its access-log line (probes still pass); a connection older than
``grpc_connection_age_s`` gets GOAWAY and closes after ``grpc_connection_age_grace_s``, a call
in flight then completes, and the channel's next call reconnects.

Before: grpcio's own ``maximum_concurrent_rpcs`` refused calls before any interceptor ran,
so a refused call left no access-log line (and refused health checks too).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from harness.server import ServerProcess, free_port
from tests.conftest import StartServer
from tests.edge.h2_stall import INFER_PATH, StallingClient
from tests.reliability import corpus

MAX_CALLS = 4
AGE_S = 2.0
GRACE_S = 3.0
SLACK_S = 3.0  # a busy 2-core machine
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(start_module_server: StartServer, tiny_model_path: Path) -> ServerProcess:
    return start_module_server(
        tiny_model_path,
        grpc_port=free_port(),
        log_level="info",
        grpc_max_concurrent_rpcs=MAX_CALLS,
        grpc_connection_age_s=AGE_S,
        grpc_connection_age_grace_s=GRACE_S,
        warmup_batch_sizes="1",
    )


def _port(server: ServerProcess) -> int:
    return int(server.env["IMGSERVE_GRPC_PORT"])


def _access_lines(server: ServerProcess, request_id: str) -> list[dict[str, Any]]:
    return [line for line in server.log_lines() if line.get("request_id") == request_id]


def _server_metadata(channel: grpc.Channel, request_id: str) -> str:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    response = stub.ServerMetadata(
        service_pb2.ServerMetadataRequest(), metadata=(("x-request-id", request_id),), timeout=5
    )
    return str(response.name)


def test_a_call_past_the_cap_is_refused_with_its_access_log_line(server: ServerProcess) -> None:
    """4 ModelInfer calls stalled one byte short fill grpc_max_concurrent_rpcs=4: a 5th call
    gets RESOURCE_EXHAUSTED at once and its access-log line; a health check still answers; once
    the stalled calls end, calls are served again."""
    port = _port(server)
    stalls = StallingClient(port)
    try:
        stalls.open_streams(MAX_CALLS, MiB)
        stalls.pump(0.5)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                _server_metadata(channel, "past-the-cap")
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        stalls.close()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == (
        f"overloaded: {MAX_CALLS} gRPC calls are in progress, the most this server takes at once "
        "(grpc_max_concurrent_rpcs); retry"
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    deadline = time.monotonic() + SLACK_S
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        while True:  # the stalled calls end when their connection closes
            try:
                assert _server_metadata(channel, "after-the-stalls") == "imgserve"
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    (line,) = _access_lines(server, "past-the-cap")
    route = "/inference.GRPCInferenceService/ServerMetadata"
    assert (line["path"], line["route"], line["protocol"], line["status"], line["images"]) == (
        route,
        route,
        "v2_grpc",
        "RESOURCE_EXHAUSTED",
        0,
    )


def test_a_connection_older_than_the_age_gets_goaway_and_closes_after_the_grace(
    server: ServerProcess,
) -> None:
    """A connection with a call stalled in progress (so never idle): GOAWAY at about
    grpc_connection_age_s (2 s), and the connection closed once the grace (3 s) is over, not
    before."""
    client = StallingClient(_port(server))
    start = time.monotonic()
    try:
        client.open_streams(1, MiB)
        while not client.closed and time.monotonic() - start < AGE_S + GRACE_S + 2 * SLACK_S:
            client.pump(0.05)
        closed_s = time.monotonic() - start
    finally:
        client.close()
    assert client.goaway_at is not None, "no GOAWAY"
    goaway_s = client.goaway_at - start
    print(f"\nGOAWAY after {goaway_s:.2f} s, closed after {closed_s:.2f} s")
    assert AGE_S * 0.8 <= goaway_s <= AGE_S * 1.2 + SLACK_S
    assert goaway_s + GRACE_S * 0.8 <= closed_s <= AGE_S * 1.2 + GRACE_S + SLACK_S


def test_a_call_in_flight_at_the_age_completes_and_the_channel_reconnects(server: ServerProcess) -> None:
    """A ModelInfer whose message the client sends only after the connection has passed its
    age (GOAWAY sent) answers OK on that connection within the grace; the channel's next call
    opens a new connection (another client port in the access log) and succeeds."""
    infer = _infer_request()

    def late_message() -> Iterator[bytes]:
        time.sleep(AGE_S * 1.2 + 0.5)
        yield infer

    with grpc.insecure_channel(f"127.0.0.1:{_port(server)}") as channel:
        assert _server_metadata(channel, "aged-1") == "imgserve"
        # Sent as a stream of one message: the server reads it as the unary call it is.
        call = channel.stream_unary(INFER_PATH)
        start = time.monotonic()
        response = service_pb2.ModelInferResponse.FromString(
            call(late_message(), metadata=(("x-request-id", "aged-infer"),), timeout=AGE_S + GRACE_S)
        )
        infer_s = time.monotonic() - start
        assert _server_metadata(channel, "aged-2") == "imgserve"
    print(f"\nthe call in flight answered after {infer_s:.2f} s")
    assert response.model_name == "tiny-rgb"
    lines = [_access_lines(server, request_id) for request_id in ("aged-1", "aged-infer", "aged-2")]
    assert [[line["status"] for line in found] for found in lines] == [["OK"], ["OK"], ["OK"]]
    (first,), (in_flight,), (after,) = lines
    assert in_flight["client"] == first["client"]  # the aged connection answered it
    assert after["client"] != first["client"]  # a new connection


def _infer_request() -> bytes:
    """A ModelInfer of one red image as the raw BYTES tensor (a 4-byte length, then the bytes)."""
    image = corpus.solid((250, 5, 5))
    request = service_pb2.ModelInferRequest(model_name="tiny-rgb")
    request.inputs.add(name="image", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(len(image).to_bytes(4, "little") + image)
    return bytes(request.SerializeToString())
