"""Every v2 and TF Serving error against a real server (tiny model, small limits): REST answers
its status and the whole ``{"error"}`` body, gRPC its status code and message."""

from __future__ import annotations

import base64
import gzip
import json
import struct
import zlib
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.reliability import corpus
from tests.v2.conftest import TINY, V2Server

FORMATS = "BMP, GIF, JPEG, PNG, WEBP"
INFER = f"/v2/models/{TINY}/infer"


def v2_json(*images: bytes, outputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(images), 1],
        "data": [base64.b64encode(i).decode() for i in images],
    }
    return {"inputs": [tensor], **({"outputs": outputs} if outputs else {})}


def error(response: httpx.Response, status: int, message: str) -> None:
    assert (response.status_code, response.json()) == (status, {"error": message}), response.text


def test_a_good_request_first(tiny_v2: V2Server) -> None:
    red = corpus.solid((250, 10, 10))
    response = httpx.post(
        f"{tiny_v2.http}{INFER}",
        json=v2_json(red, outputs=[{"name": "probs", "parameters": {"classification": 1}}]),
    )
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"][0].endswith(":0:red")


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/resnet/infer", 404, "no model named 'resnet'; this server serves 'tiny-rgb'"),
        (
            f"/v2/models/{TINY}/versions/9/infer",
            404,
            "model 'tiny-rgb' has no version '9'; served versions: ['1.2.3']",
        ),
    ],
)
def test_unknown_model_or_version_is_404(tiny_v2: V2Server, path: str, status: int, message: str) -> None:
    error(httpx.post(f"{tiny_v2.http}{path}", json=v2_json(corpus.solid((1, 2, 3)))), status, message)
    error(httpx.get(f"{tiny_v2.http}{path.removesuffix('/infer')}"), status, message)
    error(httpx.get(f"{tiny_v2.http}{path.replace('/infer', '/ready')}"), status, message)


def test_bad_requests_are_400(tiny_v2: V2Server) -> None:
    url = f"{tiny_v2.http}{INFER}"
    png = corpus.solid((1, 2, 3))
    error(
        httpx.post(url, content=b"{oops"),
        400,
        "the inference request is not valid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
    )
    wrong_type = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    error(
        httpx.post(url, json=wrong_type),
        400,
        "input 'image' has datatype 'FP32'; send 'BYTES', one encoded image per element",
    )
    wrong_shape = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 2], "data": ["AA==", "AA=="]}]
    }
    error(
        httpx.post(url, json=wrong_shape),
        400,
        "input 'image': shape [1, 2] is not accepted; the second dimension must be 1",
    )
    error(
        httpx.post(url, json=v2_json(b"just text")),
        400,
        f"image[0]: not a decodable image (allowed formats: {FORMATS})",
    )
    error(
        httpx.post(url, json=v2_json(png, corpus.tiff())),
        400,
        f"image[1]: image format TIFF is not accepted; allowed: {FORMATS}",
    )
    error(
        httpx.post(url, json=v2_json(png, outputs=[{"name": "probs", "parameters": {"classification": 5}}])),
        400,
        "classification must be between 1 and 4 (the number of classes), got 5",
    )
    error(
        httpx.post(url, json=v2_json(png, outputs=[{"name": "labels"}])),
        400,
        "unknown output 'labels'; the outputs are 'probs' and, for a model that explains, "
        "'explanation_maps', 'explanation_classes', 'explanation_box'",
    )
    error(
        httpx.post(url, content=png, headers={"Inference-Header-Content-Length": "x"}),
        400,
        "header parameter Inference-Header-Content-Length: Input should be a valid integer, unable to "
        "parse string as an integer (got 'x')",
    )


def test_limits_are_413(tiny_v2: V2Server) -> None:
    url = f"{tiny_v2.http}{INFER}"
    png = corpus.solid((1, 2, 3))
    error(
        httpx.post(url, json=v2_json(*[png] * 5)),
        413,
        "more than 4 images in one request (max_images_per_request)",
    )
    error(
        httpx.post(url, content=b"x" * 200_001, headers={"Inference-Header-Content-Length": "0"}),
        413,
        "request body is 200001 bytes; the limit is 200000",
    )
    bomb = corpus.bomb_png()
    error(
        httpx.post(url, content=bomb, headers={"Inference-Header-Content-Length": "0"}),
        413,
        "image[0]: image exceeds the limit of 1000000 pixels",
    )


def test_gzip_and_deflate_bodies_are_read_and_a_gzip_bomb_is_413(tiny_v2: V2Server) -> None:
    url = f"{tiny_v2.http}{INFER}"
    body = json.dumps(
        v2_json(corpus.solid((250, 10, 10)), outputs=[{"name": "probs", "parameters": {"classification": 1}}])
    ).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        response = httpx.post(url, content=packed, headers={"Content-Encoding": encoding})
        assert response.status_code == 200, (encoding, response.text)
        assert response.json()["outputs"][0]["data"][0].endswith(":0:red")
    bomb = gzip.compress(b"{" + b" " * 50_000_000)  # 49 KB that inflate to 50 MB
    assert len(bomb) < 100_000
    error(
        httpx.post(url, content=bomb, headers={"Content-Encoding": "gzip"}),
        413,
        "the gzip request body decompresses to more than the limit of 200000 bytes",
    )
    error(
        httpx.post(url, content=b"not gzip", headers={"Content-Encoding": "gzip"}),
        400,
        "the body is not valid gzip data: Error -3 while decompressing data: incorrect header check",
    )
    error(
        httpx.post(url, content=body, headers={"Content-Encoding": "br"}),
        415,
        "Content-Encoding 'br' is not accepted; send gzip, deflate or an uncompressed body",
    )
    assert httpx.get(f"{tiny_v2.http}/v2/health/ready").json() == {"ready": True}


def test_tf_serving_errors(tiny_v2: V2Server) -> None:
    url = f"{tiny_v2.http}/v1/models/{TINY}:predict"
    png = base64.b64encode(corpus.solid((1, 2, 3))).decode()
    error(
        httpx.post(url, json={"instances": []}),
        400,
        '"instances" must be a non-empty list, e.g. [{"b64": "<base64 image>"}]',
    )
    error(
        httpx.post(url, json={"rows": []}),
        400,
        'send a JSON object with either "instances" (rows) or "inputs" (columns)',
    )
    error(
        httpx.post(url, json={"instances": [[1, 2, 3]]}),
        400,
        'instance #0: expected {"b64": "<base64 image>"}, got [1, 2, 3]',
    )
    error(
        httpx.post(url, json={"instances": [{"b64": "%%%"}]}),
        400,
        "instance #0: not valid base64 (Only base64 data is allowed)",
    )
    error(
        httpx.post(url, json={"instances": [{"b64": png}] * 5}),
        413,
        "more than 4 images in one request (max_images_per_request)",
    )
    error(
        httpx.post(url, params={"top_k": 9}, json={"instances": [{"b64": png}]}),
        400,
        "top_k must be between 1 and 4 (the number of classes), got 9",
    )
    error(
        httpx.post(f"{tiny_v2.http}/v1/models/resnet:predict", json={"instances": [{"b64": png}]}),
        404,
        "no model named 'resnet'; this server serves 'tiny-rgb'",
    )
    ok = httpx.post(url, params={"top_k": 2}, json={"instances": [{"b64": png}]})
    assert ok.status_code == 200
    assert ok.json()["predictions"][0]["labels"][0] == "grey"


def grpc_infer(
    address: str, request: service_pb2.ModelInferRequest
) -> grpc.RpcError | service_pb2.ModelInferResponse:
    with grpc.insecure_channel(address) as channel:
        try:
            return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
        except grpc.RpcError as exc:
            return exc


def typed_request(
    model: str, *images: bytes, datatype: str = "BYTES", shape: list[int] | None = None
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="image", datatype=datatype, shape=shape or [len(images), 1])
    tensor.contents.bytes_contents.extend(images)
    return request


def test_grpc_takes_typed_bytes_contents_and_answers_raw(tiny_v2: V2Server) -> None:
    response = grpc_infer(tiny_v2.grpc_address, typed_request(TINY, corpus.solid((10, 250, 10))))
    assert isinstance(response, service_pb2.ModelInferResponse)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("probs", "FP32", [1, 4])]
    probs = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    assert int(probs.argmax()) == 1  # green


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            typed_request("resnet", b"x"),
            grpc.StatusCode.NOT_FOUND,
            "no model named 'resnet'; this server serves 'tiny-rgb'",
        ),
        (
            typed_request(TINY, b"x", datatype="UINT8"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'image' has datatype 'UINT8'; send 'BYTES', one encoded image per element",
        ),
        (
            typed_request(TINY, b"x", shape=[2, 1]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'image': shape declares 2 element(s), contents.bytes_contents holds 1",
        ),
        (
            typed_request(TINY, b"just text"),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"image[0]: not a decodable image (allowed formats: {FORMATS})",
        ),
        (
            typed_request(TINY, *[b"x"] * 5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "more than 4 images in one request (max_images_per_request)",
        ),
        (
            typed_request(TINY, corpus.bomb_png()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "image[0]: image exceeds the limit of 1000000 pixels",
        ),
    ],
    ids=["unknown-model", "datatype", "shape", "undecodable", "too-many", "pixels"],
)
def test_grpc_errors_have_their_codes(
    tiny_v2: V2Server, request_: Any, code: grpc.StatusCode, message: str
) -> None:
    response = grpc_infer(tiny_v2.grpc_address, request_)
    assert isinstance(response, grpc.RpcError)
    assert (response.code(), response.details()) == (code, message)


def test_grpc_raw_contents_must_match_the_shape(tiny_v2: V2Server) -> None:
    request = service_pb2.ModelInferRequest(model_name=TINY)
    request.inputs.add(name="image", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(struct.pack("<I", 100) + b"short")
    response = grpc_infer(tiny_v2.grpc_address, request)
    assert isinstance(response, grpc.RpcError)
    assert (response.code(), response.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': element 0 declares 100 bytes but only 5 follow",
    )


def test_tritonclient_grpc_raises_with_the_servers_message(tiny_v2: V2Server) -> None:
    client = grpcclient.InferenceServerClient(tiny_v2.grpc_address)
    image = grpcclient.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[b"nope"]], dtype=np.object_))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(TINY, [image])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert caught.value.message() == f"image[0]: not a decodable image (allowed formats: {FORMATS})"
    with pytest.raises(InferenceServerException) as caught:
        client.is_model_ready(TINY, "7")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert caught.value.message() == "model 'tiny-rgb' has no version '7'; served versions: ['1.2.3']"


def test_grpc_messages_past_the_body_limit_are_refused_by_grpc(tiny_v2: V2Server) -> None:
    """max_receive_message_length is the HTTP body limit (200,000 here) plus 64 KiB of framing."""
    request = typed_request(TINY, b"x" * 300_000)
    response = grpc_infer(tiny_v2.grpc_address, request)
    assert isinstance(response, grpc.RpcError)
    assert (response.code(), response.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SERVER: Received message larger than max (300040 vs. 265536)",
    )
    fits = grpc_infer(tiny_v2.grpc_address, typed_request(TINY, b"x" * 250_000))
    assert (
        isinstance(fits, grpc.RpcError) and fits.code() == grpc.StatusCode.INVALID_ARGUMENT
    )  # read, then refused as not an image
