"""A reduced-precision variant served by a real server: every front end answers /predict's
top-k for it, and every one says what runs it (OpenVINO, int8)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from harness.tiny_model import tiny_card, write_model
from model_export.optimize import OptimizeConfig, optimize_model
from model_export.photos import CropSet
from tests.v2.conftest import V2Server, start_v2_server

NAME = "tiny-rgb-int8"
COLOURS = [(200, 30, 30), (20, 220, 40), (10, 20, 250), (128, 128, 128), (230, 210, 40), (90, 30, 160)]


def colour_set(count: int, seed: int) -> CropSet:
    rng = np.random.default_rng(seed)
    pixels = np.broadcast_to(rng.integers(0, 256, size=(count, 1, 1, 3)), (count, 32, 32, 3))
    return CropSet(np.ascontiguousarray(pixels, dtype=np.uint8), "random colours", ())


@pytest.fixture(scope="module")
def int8_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Server]:
    folder = tmp_path_factory.mktemp("variant")
    fp32 = write_model(folder / "fp32", tiny_card())
    config = OptimizeConfig(fp32, folder, precisions=("int8",), sensitivity=False, measure_speed=False)
    [result] = optimize_model(config, colour_set(64, 1), colour_set(8, 2), colour_set(64, 3))
    assert result.model_path is not None
    grpc_port, server = start_v2_server(
        result.model_path, tmp_path_factory.mktemp("logs"), warmup_batch_sizes=1
    )
    with server as process:
        yield V2Server(process, grpc_port)


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_server_says_what_runs_the_variant(int8_server: V2Server) -> None:
    [model] = httpx.get(f"{int8_server.http}/v1/models").json()["models"]
    assert (model["name"], model["precision"], model["execution_provider"]) == (NAME, "int8", "OpenVINO")
    metadata = httpx.get(f"{int8_server.http}/v2/models/{NAME}").json()
    assert metadata["platform"] == "openvino"
    assert metadata["parameters"] == {"execution_provider": "OpenVINO", "precision": "int8"}
    grpc_metadata = grpcclient.InferenceServerClient(int8_server.grpc_address).get_model_metadata(
        NAME, as_json=True
    )
    assert grpc_metadata["platform"] == "openvino" and "parameters" not in grpc_metadata
    info = f'imgserve_model_info{{name="{NAME}",precision="int8",provider="OpenVINO",version="1.2.3"}}'
    assert int8_server.metrics()[info] == 1.0


@pytest.mark.parametrize("colour", COLOURS)
def test_v2_and_tf_serving_answer_predicts_top_k(int8_server: V2Server, colour: tuple[int, int, int]) -> None:
    data = png(colour)
    response = httpx.post(
        f"{int8_server.http}/predict",
        params={"top_k": 3},
        content=data,
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200, response.text
    expected = [(s["index"], s["label"]) for s in response.json()["predictions"][0]["top_k"]]
    scores = [s["probability"] for s in response.json()["predictions"][0]["top_k"]]

    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [1, 1],
        "data": [base64.b64encode(data).decode()],
    }
    outputs = [{"name": "probs", "parameters": {"classification": 3}}]
    v2 = httpx.post(
        f"{int8_server.http}/v2/models/{NAME}/infer", json={"inputs": [tensor], "outputs": outputs}
    )
    assert v2.status_code == 200, v2.text
    parsed = [element.split(":", 2) for element in v2.json()["outputs"][0]["data"]]
    assert [(int(index), label) for _, index, label in parsed] == expected
    assert [float(p) for p, _, _ in parsed] == pytest.approx(scores, abs=1e-6)

    tf = httpx.post(
        f"{int8_server.http}/v1/models/{NAME}:predict",
        params={"top_k": 3},
        json={"instances": [{"b64": base64.b64encode(data).decode()}]},
    )
    assert tf.status_code == 200, tf.text
    [prediction] = tf.json()["predictions"]
    assert list(zip(prediction["classes"], prediction["labels"], strict=True)) == expected
    assert prediction["scores"] == pytest.approx(scores, abs=1e-6)
