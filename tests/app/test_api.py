"""Every endpoint and every error, in process: status and whole body."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.inference.engine import Engine, EngineOptions, create_engine
from app.main import create_app
from harness.tiny_model import COLOUR_LABELS as LABELS
from harness.tiny_model import expected_probabilities

ALLOWED_RAW = (
    "image/bmp, image/x-ms-bmp, image/gif, image/jpeg, image/jpg, image/pjpeg, image/png, image/webp, "
    "application/octet-stream"
)
RED, GREEN, BLUE = (200, 30, 30), (20, 220, 40), (10, 20, 250)


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def scores(colour: tuple[int, int, int], k: int = 4) -> list[dict[str, Any]]:
    """The expected top-k for a flat image of ``colour``."""
    probabilities = expected_probabilities(np.array(colour, dtype=np.float64) / 255)
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        {
            "index": int(i),
            "label": LABELS[i],
            "probability": pytest.approx(float(probabilities[i]), rel=1e-4, abs=1e-6),
        }
        for i in order
    ]


@pytest.fixture
def make_client(tiny_model_path: Path) -> Callable[..., Any]:
    @contextmanager
    def make(
        load_engine: Callable[[Path, EngineOptions], Engine] = create_engine, **overrides: Any
    ) -> Iterator[TestClient]:
        overrides.setdefault("grpc_port", 0)  # in-process apps need no gRPC port
        settings = Settings(
            model_path=overrides.pop("model_path", tiny_model_path), decode_threads=2, **overrides
        )
        with TestClient(
            create_app(settings, load_engine=load_engine), raise_server_exceptions=False
        ) as client:
            yield client

    return make


@pytest.fixture
def client(make_client: Callable[..., Any]) -> Iterator[TestClient]:
    with make_client() as client:
        yield client


# -- /predict: success ----------------------------------------------------------------------


def test_predict_multipart_several_images_in_request_order(client: TestClient) -> None:
    files = [
        ("file", ("red.png", png(RED), "image/png")),
        ("file", ("blue.jpg", png(BLUE, fmt="JPEG"), "image/jpeg")),
        ("file", ("green.webp", png(GREEN, fmt="WEBP"), "image/webp")),
    ]
    response = client.post("/predict", files=files)
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "model": "tiny-rgb",
        "model_version": "1.2.3",
        "predictions": [
            {"filename": "red.png", "top_k": scores(RED)},
            {"filename": "blue.jpg", "top_k": body["predictions"][1]["top_k"]},
            {"filename": "green.webp", "top_k": body["predictions"][2]["top_k"]},
        ],
    }
    assert [p["top_k"][0]["label"] for p in body["predictions"]] == ["red", "blue", "green"]
    for prediction in body["predictions"]:
        probabilities = [s["probability"] for s in prediction["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)


def test_predict_raw_body_with_top_k(client: TestClient) -> None:
    response = client.post("/predict?top_k=2", content=png(GREEN), headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    assert response.json() == {
        "model": "tiny-rgb",
        "model_version": "1.2.3",
        "predictions": [{"filename": None, "top_k": scores(GREEN, k=2)}],
    }


def test_predict_octet_stream_body_is_sniffed(client: TestClient) -> None:
    response = client.post(
        "/predict?top_k=1", content=png(RED, fmt="BMP"), headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 200
    assert response.json()["predictions"] == [{"filename": None, "top_k": scores(RED, k=1)}]


def test_default_top_k_is_capped_at_the_number_of_classes(client: TestClient) -> None:
    response = client.post("/predict", content=png(RED), headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    assert len(response.json()["predictions"][0]["top_k"]) == len(LABELS)


def test_chunked_upload_without_content_length(client: TestClient) -> None:
    data = png(BLUE)
    response = client.post(
        "/predict?top_k=1", content=iter([data[:100], data[100:]]), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200
    assert response.json()["predictions"][0]["top_k"] == scores(BLUE, k=1)


# -- /predict: errors -------------------------------------------------------------------------


def error(response: Any, status: int, detail: str) -> None:
    assert (response.status_code, response.json()) == (status, {"detail": detail})


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("top_k=0", "query parameter top_k: Input should be greater than or equal to 1 (got '0')"),
        ("top_k=5", "top_k must be between 1 and 4 (the number of classes), got 5"),
        (
            "top_k=abc",
            "query parameter top_k: Input should be a valid integer, "
            "unable to parse string as an integer (got 'abc')",
        ),
    ],
)
def test_bad_top_k_is_422(client: TestClient, query: str, detail: str) -> None:
    error(
        client.post(f"/predict?{query}", content=png(RED), headers={"Content-Type": "image/png"}), 422, detail
    )


def test_unsupported_content_type_is_415(client: TestClient) -> None:
    response = client.post("/predict", content=b"hello", headers={"Content-Type": "text/plain"})
    error(
        response,
        415,
        "Content-Type 'text/plain' is not accepted; send multipart/form-data with parts named 'file', "
        f"or a raw body with one of: {ALLOWED_RAW}",
    )


def test_unsupported_image_format_is_415_naming_the_part(client: TestClient) -> None:
    files = [
        ("file", ("ok.png", png(RED), "image/png")),
        ("file", ("scan.tif", png(RED, fmt="TIFF"), "image/tiff")),
    ]
    error(
        client.post("/predict", files=files),
        415,
        "file #2 'scan.tif': image format TIFF is not accepted; allowed: BMP, GIF, JPEG, PNG, WEBP",
    )


def test_undecodable_image_is_422_and_the_request_is_all_or_nothing(client: TestClient) -> None:
    files = [("file", ("ok.png", png(RED), "image/png")), ("file", ("notes.txt", b"just text", "image/png"))]
    error(
        client.post("/predict", files=files),
        422,
        "file #2 'notes.txt': not a decodable image (allowed formats: BMP, GIF, JPEG, PNG, WEBP)",
    )
    assert 'imgserve_images_total{protocol="rest"} 0.0' in client.get("/metrics").text


def test_truncated_image_is_422(client: TestClient) -> None:
    data = png(RED, size=(300, 300))
    response = client.post("/predict", content=data[: len(data) // 2], headers={"Content-Type": "image/png"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("request body: cannot decode PNG image")


def test_empty_part_and_empty_body_are_422(client: TestClient) -> None:
    error(
        client.post("/predict", files=[("file", ("a.png", b"", "image/png"))]),
        422,
        "file #1 'a.png': is empty",
    )
    error(
        client.post("/predict", content=b"", headers={"Content-Type": "image/png"}),
        422,
        "request body: is empty",
    )


def test_a_form_field_other_than_file_is_422(client: TestClient) -> None:
    response = client.post("/predict", files=[("image", ("a.png", png(RED), "image/png"))])
    error(response, 422, "multipart part 1 is named 'image'; send each image as a part named 'file'")


def test_multipart_without_parts_or_closing_boundary_is_422(client: TestClient) -> None:
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    error(
        client.post("/predict", content=b"--xyz--\r\n", headers=headers),
        422,
        "no images: send one or more multipart parts named 'file'",
    )
    truncated = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + png(RED)
    error(
        client.post("/predict", content=truncated, headers=headers),
        422,
        "malformed multipart body: it ends before the closing boundary",
    )


def test_multipart_without_boundary_is_400(client: TestClient) -> None:
    response = client.post("/predict", content=b"x", headers={"Content-Type": "multipart/form-data"})
    error(response, 400, "multipart/form-data without a boundary parameter")


def test_too_many_bytes_is_413_from_content_length_or_while_reading(make_client: Callable[..., Any]) -> None:
    with make_client(max_upload_bytes=1000) as client:
        big = png(RED, size=(400, 400)) + b"\0" * 2000
        declared = client.post("/predict", content=big, headers={"Content-Type": "image/png"})
        error(declared, 413, f"request body is {len(big)} bytes; the limit is 1000")
        chunked = client.post(
            "/predict",
            content=iter([big[:600], big[600:1200], big[1200:]]),
            headers={"Content-Type": "image/png"},
        )
        error(chunked, 413, "request body exceeds the limit of 1000 bytes")
        # The rest of the body is never read: the connection closes after the response. (The
        # test client hands the app the whole chunked body at once; tests/e2e checks sockets.)
        assert declared.headers["connection"] == "close"


def test_errors_before_the_body_is_read_close_the_connection_and_success_keeps_it(client: TestClient) -> None:
    refused = client.post("/predict", content=png(RED), headers={"Content-Type": "text/plain"})
    assert refused.status_code == 415 and refused.headers["connection"] == "close"
    bad_parameter = client.post("/predict?top_k=0", content=png(RED), headers={"Content-Type": "image/png"})
    assert bad_parameter.status_code == 422 and bad_parameter.headers["connection"] == "close"
    served = client.post("/predict", content=png(RED), headers={"Content-Type": "image/png"})
    assert served.status_code == 200 and "connection" not in served.headers
    undecodable = client.post("/predict", content=b"not an image", headers={"Content-Type": "image/png"})
    assert undecodable.status_code == 422 and "connection" not in undecodable.headers
    assert "connection" not in client.get("/healthz").headers


def test_too_many_images_is_413(make_client: Callable[..., Any]) -> None:
    with make_client(max_images_per_request=2) as client:
        files = [("file", (f"{i}.png", png(RED), "image/png")) for i in range(3)]
        error(
            client.post("/predict", files=files),
            413,
            "more than 2 images in one request (max_images_per_request)",
        )


def test_too_many_pixels_is_413(make_client: Callable[..., Any]) -> None:
    with make_client(max_image_pixels=1000) as client:
        response = client.post(
            "/predict", files=[("file", ("big.png", png(RED, size=(40, 30)), "image/png"))]
        )
        error(
            response,
            413,
            "file #1 'big.png': image is 40x30 = 1200 pixels, over the limit of 1000 pixels per image "
            "(max_image_pixels)",
        )


def test_format_allowlist_is_configurable(make_client: Callable[..., Any]) -> None:
    with make_client(allowed_formats="png") as client:
        response = client.post("/predict", files=[("file", ("a.jpg", png(RED, fmt="JPEG"), "image/jpeg"))])
        error(response, 415, "file #1 'a.jpg': image format JPEG is not accepted; allowed: PNG")
        response = client.post("/predict", content=png(RED), headers={"Content-Type": "image/jpeg"})
        error(
            response,
            415,
            "Content-Type 'image/jpeg' is not accepted; send multipart/form-data with parts "
            "named 'file', or a raw body with one of: image/png, application/octet-stream",
        )


def test_a_full_queue_is_503_with_retry_after(client: TestClient) -> None:
    model = client.app.state.imgserve.registry.default()  # type: ignore[attr-defined]
    reservation = model.batcher.reserve(256)
    try:
        response = client.post("/predict", content=png(RED), headers={"Content-Type": "image/png"})
    finally:
        reservation.release()
    error(
        response,
        503,
        "overloaded: 256 images are queued and this request brings 1, over the queue limit of 256 "
        "(max_queue_images); retry after 1 s",
    )
    assert response.headers["retry-after"] == "1"


def test_a_full_queue_refuses_before_reading_the_image(client: TestClient) -> None:
    """Under overload nothing is spent on a request: not even its header is read, so a bad
    image gets the 503 too, and its own error once it comes back to room in the queue."""
    model = client.app.state.imgserve.registry.default()  # type: ignore[attr-defined]
    reservation = model.batcher.reserve(256)
    try:
        response = client.post("/predict", content=b"not an image", headers={"Content-Type": "image/png"})
    finally:
        reservation.release()
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    response = client.post("/predict", content=b"not an image", headers={"Content-Type": "image/png"})
    error(response, 422, "request body: not a decodable image (allowed formats: BMP, GIF, JPEG, PNG, WEBP)")
    assert model.queued_images == 0


def test_past_the_deadline_is_504_and_the_work_is_dropped(make_client: Callable[..., Any]) -> None:
    with make_client(request_timeout_s=0.2, max_delay_ms=10_000, batch_policy="fixed") as client:
        response = client.post("/predict", content=png(RED), headers={"Content-Type": "image/png"})
        error(response, 504, "the request did not finish within its deadline of 0.2 s")
        assert client.app.state.imgserve.registry.default().queued_images == 0  # type: ignore[attr-defined]


class PoisonedEngine(Engine):
    """Fails any batch holding a mostly blue image: a model error, not a client error."""

    def run(self, batch: np.ndarray, *, instance: bool = False) -> np.ndarray:
        if (batch[..., 2].mean(axis=(1, 2)) > 200).any():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().run(batch, instance=instance)


def load_poisoned(path: Path, options: EngineOptions) -> Engine:
    engine = create_engine(path, options)
    return PoisonedEngine(
        engine.session, engine.card, engine.source, engine.instance_session, engine.instances
    )


def test_a_failing_batch_fails_its_request_only_and_the_server_survives(
    make_client: Callable[..., Any],
) -> None:
    with make_client(load_engine=load_poisoned, max_batch_size=1, warmup_batch_sizes="1") as client:
        bad = client.post("/predict", content=png(BLUE), headers={"Content-Type": "image/png"})
        error(bad, 500, "inference failed on a batch of 1 images")
        good = client.post("/predict?top_k=1", content=png(RED), headers={"Content-Type": "image/png"})
        assert good.status_code == 200 and good.json()["predictions"][0]["top_k"] == scores(RED, k=1)


# -- batching, in process ---------------------------------------------------------------------


@pytest.mark.parametrize(("instances", "batches"), [(1, 1), (2, 2)])
def test_concurrent_requests_are_batched(
    make_client: Callable[..., Any], instances: int, batches: int
) -> None:
    # fixed: the adaptive policy may run a batch as soon as no other image is decoding; with
    # two instances the full queue is shared between them at once, 4 + 4
    with make_client(
        max_batch_size=8,
        max_delay_ms=2000,
        batch_policy="fixed",
        model_instances=instances,
    ) as client:
        statuses: list[int] = []

        def send() -> None:
            statuses.append(
                client.post("/predict", content=png(GREEN), headers={"Content-Type": "image/png"}).status_code
            )

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert statuses == [200] * 8
        metrics = client.get("/metrics").text
        assert f"imgserve_batch_size_count {batches:.1f}" in metrics
        assert "imgserve_batch_size_sum 8.0" in metrics
        assert 'imgserve_images_total{protocol="rest"} 8.0' in metrics


# -- the other endpoints ----------------------------------------------------------------------


def test_healthz_and_readyz(client: TestClient) -> None:
    assert (client.get("/healthz").status_code, client.get("/healthz").json()) == (200, {"status": "ok"})
    assert (client.get("/readyz").status_code, client.get("/readyz").json()) == (200, {"status": "ready"})


def test_draining_makes_readyz_503_and_closes_connections(client: TestClient) -> None:
    client.app.state.imgserve.lifecycle.start_draining()  # type: ignore[attr-defined]
    response = client.get("/readyz")
    error(response, 503, "not ready: draining, the server is shutting down")
    assert response.headers["retry-after"] == "1"
    assert response.headers["connection"] == "close"
    # Requests are still served while draining (the load balancer may still send some).
    predicted = client.post("/predict", content=png(RED), headers={"Content-Type": "image/png"})
    assert predicted.status_code == 200 and predicted.headers["connection"] == "close"


def test_models_lists_the_card_provider_and_batching(client: TestClient, tiny_model_path: Path) -> None:
    card = (tiny_model_path.parent / "model.json").read_text()
    import json

    card_json = json.loads(card)
    expected = {
        "name": "tiny-rgb",
        "version": "1.2.3",
        "architecture": "channel-mean-linear",
        "weights": "fixed weights (tests)",
        "num_classes": 4,
        "labels": LABELS,
        "input": {"name": "pixels", "layout": "NHWC", "dtype": "uint8", "shape": [None, 32, 32, 3]},
        "output": {"name": "probabilities", "layout": "NC", "dtype": "float32", "shape": [None, 4]},
        "preprocessing": card_json["preprocessing"],
        "precision": "fp32",
        "dataset": {},
        "metrics": {},
        "created_at": "",
        "sha256": card_json["sha256"],
        "explanation": None,
        "execution_provider": "CPUExecutionProvider",
        "providers": ["CPUExecutionProvider"],
        "batching": {
            "max_batch_size": 4,  # the CPU's cap
            "max_delay_ms": 5.0,
            "max_queue_images": 256,
            "request_timeout_s": 30.0,
            "warmup_batch_sizes": [1, 2, 4],
        },
        "limits": {
            "max_upload_bytes": 20971520,
            "max_images_per_request": 32,
            "max_image_pixels": 25000000,
            "max_request_pixels": 100000000,
            "allowed_formats": ["JPEG", "PNG", "WEBP", "BMP", "GIF"],
        },
    }
    response = client.get("/v1/models")
    assert (response.status_code, response.json()) == (
        200,
        {
            "models": [expected],
            "versions": [{"name": "tiny-rgb", "version": "1.2.3", "state": "READY", "reason": ""}],
            "default_model": "tiny-rgb",
        },
    )
    # One model's card also carries TensorFlow Serving's model status (its model status API).
    status = [{"version": "1.2.3", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    assert client.get("/v1/models/tiny-rgb").json() == {**expected, "model_version_status": status}
    error(client.get("/v1/models/resnet"), 404, "no model named 'resnet'; this server serves 'tiny-rgb'")


def test_metrics_exposes_requests_latency_queue_batches_and_images(client: TestClient) -> None:
    client.post("/predict", files=[("file", ("a.png", png(RED), "image/png"))] * 2)
    client.post("/predict", content=b"x", headers={"Content-Type": "text/plain"})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in (
        'imgserve_http_requests_total{method="POST",protocol="rest",route="/predict",status="200"} 1.0',
        'imgserve_http_requests_total{method="POST",protocol="rest",route="/predict",status="415"} 1.0',
        'imgserve_http_request_duration_seconds_count{method="POST",route="/predict"} 2.0',
        'imgserve_images_total{protocol="rest"} 2.0',
        'imgserve_images_total{protocol="v2_http"} 0.0',
        "imgserve_batch_size_sum 2.0",
        "imgserve_inference_duration_seconds_count",
        "imgserve_preprocess_duration_seconds_count 2.0",
        "imgserve_queue_images 0.0",
        "imgserve_ready 1.0",
        'imgserve_model_info{name="tiny-rgb",precision="fp32",'
        'provider="CPUExecutionProvider",version="1.2.3"} 1.0',
        "process_cpu_seconds_total",
    ):
        assert line in text, line


def test_request_id_is_honoured_or_created(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "req-42"}).headers["x-request-id"] == "req-42"
    created = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert len(created) == 32 and created != "bad id\twith spaces"


def test_unknown_route_uses_the_error_shape(client: TestClient) -> None:
    error(client.get("/nope"), 404, "Not Found")
    error(client.get("/predict"), 405, "Method Not Allowed")
