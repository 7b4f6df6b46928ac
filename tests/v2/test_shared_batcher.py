"""/predict, v2 HTTP and gRPC requests share one batcher: one batch mixes them, and one full
queue refuses them all (503 + Retry-After, UNAVAILABLE + retry-after). API keys and the drain
apply to the v2 front ends as to /predict."""

from __future__ import annotations

import base64
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.reliability import corpus
from tests.v2.conftest import TINY, V2Server, start_v2_server

DELAY_MS = 3000  # the fixed policy holds every batch this long unless it fills


@pytest.fixture(scope="module")
def held_v2(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Server]:
    """Batches run only when the oldest image has waited 3 s (16 images would fill one, but the
    queue holds 8)."""
    grpc_port, server = start_v2_server(
        tiny_model_path,
        tmp_path_factory.mktemp("logs"),
        batch_policy="fixed",
        max_delay_ms=DELAY_MS,
        max_batch_size=16,  # more than the queue holds: a full queue still waits out the delay
        max_queue_images=8,
        max_images_per_request=8,
        decode_threads=1,
        model_instances=1,  # one batch of every image, not a share per instance
        warmup_batch_sizes=1,
    )
    with server as process:
        yield V2Server(process, grpc_port)


def run_together(*calls: Callable[[], Any]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:  # reported by the caller's assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def predict(server: V2Server, data: bytes) -> str:
    response = httpx.post(
        f"{server.http}/predict", content=data, headers={"content-type": "image/png"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return str(response.json()["predictions"][0]["top_k"][0]["label"])


def v2_http(server: V2Server, data: bytes) -> str:
    client = httpclient.InferenceServerClient(server.http_address, network_timeout=30)
    image = httpclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    result = client.infer(TINY, [image], outputs=[httpclient.InferRequestedOutput("probs", class_count=1)])
    return str(result.as_numpy("probs")[0][0].decode().split(":", 2)[2])


def v2_grpc(server: V2Server, data: bytes, headers: dict[str, str] | None = None) -> str:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    image = grpcclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    result = client.infer(
        TINY, [image], outputs=[grpcclient.InferRequestedOutput("probs", class_count=1)], headers=headers
    )
    return str(result.as_numpy("probs")[0][0].decode().split(":", 2)[2])


def test_predict_v2_http_and_grpc_images_run_in_one_batch(held_v2: V2Server) -> None:
    red, green, blue = corpus.solid((250, 5, 5)), corpus.solid((5, 250, 5)), corpus.solid((5, 5, 250))
    before = held_v2.metrics()
    started = time.monotonic()
    labels = run_together(
        lambda: predict(held_v2, red),
        lambda: predict(held_v2, green),
        lambda: v2_http(held_v2, blue),
        lambda: v2_grpc(held_v2, red),
    )
    elapsed = time.monotonic() - started
    assert labels == ["red", "green", "blue", "red"]
    after = held_v2.metrics()

    def delta(key: str) -> float:
        return after[key] - before[key]

    # One model run of 4 images: had v2 or gRPC a batcher of their own, /predict's two images
    # would have run in a batch of 2 and the others in batches of 1 (3 runs, none of 4).
    assert (delta("imgserve_batch_size_count"), delta("imgserve_batch_size_sum")) == (1, 4)
    assert delta('imgserve_batch_size_bucket{le="2.0"}') == 0
    assert [delta(f'imgserve_images_total{{protocol="{p}"}}') for p in ("rest", "v2_http", "v2_grpc")] == [
        2,
        1,
        1,
    ]
    assert elapsed >= DELAY_MS / 1000 * 0.9  # the batch did wait for its delay: nothing ran early


def test_a_full_queue_refuses_every_protocol_with_retry_after(held_v2: V2Server) -> None:
    png = corpus.solid((9, 9, 9))
    eight = [("file", (f"{i}.png", png, "image/png")) for i in range(8)]
    holder = threading.Thread(target=lambda: httpx.post(f"{held_v2.http}/predict", files=eight, timeout=30))
    holder.start()
    try:
        deadline = time.monotonic() + 5
        while held_v2.metrics()["imgserve_queue_images"] < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held_v2.metrics()["imgserve_queue_images"] == 8

        def message(retry_after: str) -> str:
            return (
                "overloaded: 8 images are queued and this request brings 1, over the queue limit of 8 "
                f"(max_queue_images); retry after {retry_after} s"
            )

        body = {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png).decode()]}
            ]
        }
        response = httpx.post(f"{held_v2.http}/v2/models/{TINY}/infer", json=body)
        retry_after = response.headers["retry-after"]
        assert (response.status_code, response.json()) == (503, {"error": message(retry_after)})
        assert int(retry_after) >= 1
        tf = httpx.post(
            f"{held_v2.http}/v1/models/{TINY}:predict",
            json={"instances": [{"b64": body["inputs"][0]["data"][0]}]},
        )
        assert (tf.status_code, tf.json()) == (503, {"error": message(tf.headers["retry-after"])})
        with grpc.insecure_channel(held_v2.grpc_address) as channel:
            request = service_pb2.ModelInferRequest(model_name=TINY)
            request.inputs.add(name="image", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(
                png
            )
            with pytest.raises(grpc.RpcError) as caught:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        trailers = dict(caught.value.trailing_metadata())
        assert (caught.value.code(), caught.value.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            message(trailers["retry-after"]),
        )
        assert int(trailers["retry-after"]) >= 1 and trailers["x-request-id"]
    finally:
        holder.join(30)


KEY = "k-v2-8c1f0e"


@pytest.fixture(scope="module")
def keyed_v2(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Server]:
    grpc_port, server = start_v2_server(
        tiny_model_path, tmp_path_factory.mktemp("logs"), api_keys=KEY, decode_threads=1, warmup_batch_sizes=1
    )
    with server as process:
        yield V2Server(process, grpc_port)


def test_api_keys_guard_v2_http_grpc_and_tf_serving_but_not_the_probes(keyed_v2: V2Server) -> None:
    base = keyed_v2.http
    missing = "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
    for method, path in (
        ("GET", "/v2"),
        ("GET", f"/v2/models/{TINY}"),
        ("POST", f"/v2/models/{TINY}/infer"),
        ("POST", f"/v1/models/{TINY}:predict"),
    ):
        response = httpx.request(method, f"{base}{path}", content=b"{}")
        assert (response.status_code, response.json()) == (401, {"error": missing}), path
        assert response.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{base}/v2", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "invalid API key"})
    assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2", headers={"X-API-Key": KEY}).status_code == 200
    with pytest.raises(Exception, match="UNAUTHENTICATED"):
        v2_grpc(keyed_v2, corpus.solid((250, 5, 5)))
    assert v2_grpc(keyed_v2, corpus.solid((250, 5, 5)), headers={"authorization": f"Bearer {KEY}"}) == "red"
    client = grpcclient.InferenceServerClient(keyed_v2.grpc_address)
    assert client.is_server_live() and client.is_server_ready()  # probes need no key
    with pytest.raises(Exception, match="invalid API key"):
        client.get_server_metadata(headers={"x-api-key": "nope"})


def test_sigterm_lets_a_grpc_call_in_flight_finish_and_stops_grpc_with_http(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    grpc_port, server = start_v2_server(
        tiny_model_path,
        tmp_path_factory.mktemp("logs"),
        batch_policy="fixed",
        max_delay_ms=1500,
        decode_threads=1,
        warmup_batch_sizes=1,
    )
    with server as process:
        v2 = V2Server(process, grpc_port)
        results = run_together(
            lambda: v2_grpc(v2, corpus.solid((250, 5, 5))),
            lambda: (time.sleep(0.5), process.signal(signal.SIGTERM)),
        )
        assert results[0] == "red"  # admitted before SIGTERM, answered after it
        assert process.proc is not None and process.proc.wait(20) == 0
        lines = [line.get("message") for line in process.log_lines()]
        assert (
            lines.index("draining: not ready, not listening, closing connections after each response")
            < lines.index("gRPC stopped")
            < lines.index("models stopped")
        )
        with pytest.raises(Exception, match="UNAVAILABLE"):
            v2_grpc(v2, corpus.solid((250, 5, 5)))


def test_the_request_deadline_is_504_and_deadline_exceeded(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same IMGSERVE_REQUEST_TIMEOUT_S as /predict: a batch held past it fails every protocol."""
    grpc_port, server = start_v2_server(
        tiny_model_path,
        tmp_path_factory.mktemp("logs"),
        batch_policy="fixed",
        max_delay_ms=3000,
        request_timeout_s=0.5,
        decode_threads=1,
        warmup_batch_sizes=1,
    )
    png = corpus.solid((250, 5, 5))
    message = "the request did not finish within its deadline of 0.5 s"
    with server as process:
        v2 = V2Server(process, grpc_port)
        body = {
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png).decode()]}
            ]
        }
        response = httpx.post(f"{v2.http}/v2/models/{TINY}/infer", json=body, timeout=10)
        assert (response.status_code, response.json()) == (504, {"error": message})
        tf = httpx.post(
            f"{v2.http}/v1/models/{TINY}:predict",
            json={"instances": [{"b64": body["inputs"][0]["data"][0]}]},
            timeout=10,
        )
        assert (tf.status_code, tf.json()) == (504, {"error": message})
        with grpc.insecure_channel(v2.grpc_address) as channel:
            request = service_pb2.ModelInferRequest(model_name=TINY)
            request.inputs.add(name="image", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(
                png
            )
            with pytest.raises(grpc.RpcError) as caught:
                service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.DEADLINE_EXCEEDED, message)
