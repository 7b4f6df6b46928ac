"""Every front end gives /predict's answer for the same photo, to the last digit (the real
default model, a real server process, the real Triton clients from PyPI).

Each photo is sent alone in every protocol, so every answer comes from a batch of one: the
same engine on the same pixels, hence exactly the same float32 numbers.
"""

from __future__ import annotations

import base64
import json
import struct

import httpx
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.app.photos import PHOTOS
from tests.v2.conftest import DEFAULT, V2Server

PHOTO_NAMES = ("grace_hopper", "chelsea", "china")  # JPEG 512x600, PNG 451x300, JPEG 640x427
TopK = list[tuple[int, str, float]]


def photo(name: str) -> bytes:
    return PHOTOS[name][0].read_bytes()


def predict_top_k(server: V2Server, data: bytes, k: int = 5) -> TopK:
    response = httpx.post(
        f"{server.http}/predict", params={"top_k": k}, content=data, headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 200, response.text
    return [(s["index"], s["label"], s["probability"]) for s in response.json()["predictions"][0]["top_k"]]


def parse_classes(elements: list[str] | np.ndarray) -> TopK:
    """'<p>:<index>:<label>' strings (labels may hold ':') as (index, label, p)."""
    parsed = []
    for element in elements:
        text = element.decode() if isinstance(element, bytes) else element
        p, index, label = text.split(":", 2)
        parsed.append((int(index), label, float(p)))
    return parsed


def top_k_of(probabilities: np.ndarray, labels: list[str], k: int = 5) -> TopK:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(int(i), labels[i], float(probabilities[i])) for i in order]


@pytest.fixture(scope="module")
def labels(default_v2: V2Server) -> list[str]:
    return httpx.get(f"{default_v2.http}/v1/models/{DEFAULT}").json()["labels"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_every_protocol_gives_predicts_top_k_to_the_last_digit(
    default_v2: V2Server, labels: list[str], name: str
) -> None:
    data = photo(name)
    expected = predict_top_k(default_v2, data)
    assert {label for _, label, _ in expected} & PHOTOS[name][1]  # the model sees the photo
    infer_url = f"{default_v2.http}/v2/models/{DEFAULT}/infer"
    classify5 = [{"name": "probs", "parameters": {"classification": 5}}]

    # v2 JSON, the image as a base64 string
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [1, 1],
        "data": [base64.b64encode(data).decode()],
    }
    response = httpx.post(infer_url, json={"id": name, "inputs": [tensor], "outputs": classify5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outputs"][0]["shape"] == [1, 5] and body["outputs"][0]["datatype"] == "BYTES"
    assert (body["model_name"], body["model_version"], body["id"]) == (DEFAULT, "1", name)
    assert parse_classes(body["outputs"][0]["data"]) == expected

    # v2 binary tensor extension, sent by hand, no Content-Type
    binary_tensor = {"name": "image", "datatype": "BYTES", "shape": [1, 1]}
    binary_tensor["parameters"] = {"binary_data_size": len(data) + 4}
    header = json.dumps({"inputs": [binary_tensor], "outputs": classify5})
    response = httpx.post(
        infer_url,
        content=header.encode() + struct.pack("<I", len(data)) + data,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    assert parse_classes(response.json()["outputs"][0]["data"]) == expected

    # v2 raw body: the image alone; the answer is the whole FP32 vector
    response = httpx.post(infer_url, content=data, headers={"Inference-Header-Content-Length": "0"})
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert (output["name"], output["datatype"], output["shape"]) == ("probs", "FP32", [1, 1000])
    assert top_k_of(np.array(output["data"], dtype=np.float32), labels) == expected

    # tritonclient over HTTP (binary tensors both ways) and over gRPC (raw contents)
    http_client = httpclient.InferenceServerClient(default_v2.http_address)
    http_input = httpclient.InferInput("image", [1, 1], "BYTES")
    http_input.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    result = http_client.infer(
        DEFAULT, [http_input], outputs=[httpclient.InferRequestedOutput("probs", class_count=5)]
    )
    assert parse_classes(result.as_numpy("probs")[0]) == expected
    grpc_client = grpcclient.InferenceServerClient(default_v2.grpc_address)
    grpc_input = grpcclient.InferInput("image", [1, 1], "BYTES")
    grpc_input.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    result = grpc_client.infer(
        DEFAULT, [grpc_input], outputs=[grpcclient.InferRequestedOutput("probs", class_count=5)]
    )
    assert parse_classes(result.as_numpy("probs")[0]) == expected

    # TF Serving's REST API, as its docs script it with requests
    response = requests.post(
        f"{default_v2.http}/v1/models/{DEFAULT}:predict",
        json={"instances": [{"b64": base64.b64encode(data).decode()}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert (
        list(zip(prediction["classes"], prediction["labels"], prediction["scores"], strict=True)) == expected
    )


def test_binary_and_json_fp32_outputs_are_the_same_numbers(default_v2: V2Server) -> None:
    data = photo("grace_hopper")
    client = httpclient.InferenceServerClient(default_v2.http_address)
    image = httpclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    as_binary = client.infer(
        DEFAULT, [image], outputs=[httpclient.InferRequestedOutput("probs", binary_data=True)]
    )
    as_json = client.infer(
        DEFAULT, [image], outputs=[httpclient.InferRequestedOutput("probs", binary_data=False)]
    )
    binary_probs, json_probs = as_binary.as_numpy("probs"), as_json.as_numpy("probs")
    assert binary_probs.dtype == np.float32 and binary_probs.shape == (1, 1000)
    assert np.array_equal(binary_probs, json_probs.astype(np.float32))
    grpc_client = grpcclient.InferenceServerClient(default_v2.grpc_address)
    grpc_image = grpcclient.InferInput("image", [1, 1], "BYTES")
    grpc_image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    assert np.array_equal(grpc_client.infer(DEFAULT, [grpc_image]).as_numpy("probs"), binary_probs)
    assert abs(float(binary_probs.sum()) - 1.0) < 1e-4


def test_three_images_of_different_sizes_in_one_request_answer_3_by_k_in_order(default_v2: V2Server) -> None:
    images = [photo(name) for name in PHOTO_NAMES]
    expected = [predict_top_k(default_v2, data, k=3) for data in images]
    client = httpclient.InferenceServerClient(default_v2.http_address)
    tensor = httpclient.InferInput("image", [3, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[d] for d in images], dtype=np.object_))
    result = client.infer(
        DEFAULT, [tensor], outputs=[httpclient.InferRequestedOutput("probs", class_count=3)]
    )
    rows = result.as_numpy("probs")
    assert rows.shape == (3, 3)
    for row, want in zip(rows, expected, strict=True):
        got = parse_classes(row)
        assert [(i, label) for i, label, _ in got] == [(i, label) for i, label, _ in want]
        # One batch of 3 here, three batches of 1 for /predict: ONNX Runtime's CPU kernels may
        # sum in another order for another batch size, so the last float32 digit may differ.
        assert np.allclose([p for *_, p in got], [p for *_, p in want], rtol=0, atol=1e-6)


def test_tritonclient_sees_health_and_metadata(default_v2: V2Server) -> None:
    http_client = httpclient.InferenceServerClient(default_v2.http_address)
    assert (
        http_client.is_server_live() and http_client.is_server_ready() and http_client.is_model_ready(DEFAULT)
    )
    assert not http_client.is_model_ready("resnet50")
    assert http_client.get_server_metadata() == {
        "name": "imgserve",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "classification", "model_configuration", "statistics"],
    }
    metadata = {
        "name": DEFAULT,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": [{"name": "probs", "datatype": "FP32", "shape": [-1, 1000]}],
        "parameters": {"execution_provider": "CPUExecutionProvider", "precision": "fp32"},
    }
    assert http_client.get_model_metadata(DEFAULT) == metadata
    assert http_client.get_model_metadata(DEFAULT, model_version="1") == metadata
    assert http_client.get_model_config(DEFAULT) == {
        "name": DEFAULT,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": 32,
        "input": [{"name": "image", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}],
        "output": [
            {"name": "probs", "data_type": "TYPE_FP32", "dims": [1000], "label_filename": "labels.txt"}
        ],
        "dynamic_batching": {"preferred_batch_size": [4], "max_queue_delay_microseconds": 5000},
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }
    grpc_client = grpcclient.InferenceServerClient(default_v2.grpc_address)
    assert (
        grpc_client.is_server_live() and grpc_client.is_server_ready() and grpc_client.is_model_ready(DEFAULT)
    )
    assert grpc_client.get_server_metadata(as_json=True) == {
        "name": "imgserve",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "classification", "model_configuration", "statistics"],
    }
    # protobuf's JSON writes int64 as strings
    assert grpc_client.get_model_metadata(DEFAULT, as_json=True) == {
        **{key: value for key, value in metadata.items() if key != "parameters"},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": ["-1", "1"]}],
        "outputs": [{**output, "shape": [str(d) for d in output["shape"]]} for output in metadata["outputs"]],
    }


def test_tf_serving_columnar_form_probabilities_and_model_status(default_v2: V2Server) -> None:
    data = [photo("chelsea"), photo("china")]
    expected = [predict_top_k(default_v2, d, k=2) for d in data]
    encoded = [{"b64": base64.b64encode(d).decode()} for d in data]
    response = requests.post(
        f"{default_v2.http}/v1/models/{DEFAULT}/versions/1:predict",
        params={"top_k": 2, "probabilities": "true"},
        json={"signature_name": "serving_default", "inputs": {"image_bytes": encoded}},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert sorted(outputs) == ["classes", "labels", "probabilities", "scores"]
    for i, want in enumerate(expected):
        assert [(c, label) for c, label, _ in want] == list(
            zip(outputs["classes"][i], outputs["labels"][i], strict=True)
        )
        assert np.allclose(outputs["scores"][i], [p for *_, p in want], rtol=0, atol=1e-6)
        assert len(outputs["probabilities"][i]) == 1000
        assert outputs["probabilities"][i][want[0][0]] == outputs["scores"][i][0]
    status = [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    assert (
        requests.get(f"{default_v2.http}/v1/models/{DEFAULT}", timeout=10).json()["model_version_status"]
        == status
    )
    by_version = requests.get(f"{default_v2.http}/v1/models/{DEFAULT}/versions/1", timeout=10)
    assert (by_version.status_code, by_version.json()["model_version_status"]) == (200, status)
