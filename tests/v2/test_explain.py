"""Explanations on every front end: /predict?explain=true, TF Serving's ?explain=true, the v2
parameter over REST and gRPC (the real Triton clients), the same maps everywhere; a model that
does not explain answers 400 (INVALID_ARGUMENT) on each (real server processes)."""

from __future__ import annotations

import base64

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.app.photos import PHOTOS
from tests.v2.conftest import DEFAULT, TINY, V2Server

CAT = PHOTOS["chelsea"][0].read_bytes()  # PNG, 451 x 300


def rest_explained(server: V2Server, top_k: int = 5) -> dict:
    response = httpx.post(
        f"{server.http}/predict",
        params={"top_k": top_k, "explain": "true"},
        files=[("file", ("cat.png", CAT))],
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def triton_input(module, data: bytes):
    image = module.InferInput("image", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=object))
    return image


def test_predict_explains_only_when_asked_and_the_answer_is_unchanged(default_v2: V2Server) -> None:
    plain = httpx.post(f"{default_v2.http}/predict", files=[("file", ("cat.png", CAT))], timeout=60).json()
    assert "explanation" not in plain["predictions"][0]  # off: the answer as it always was
    explained = rest_explained(default_v2)
    assert explained["top_k"] == plain["predictions"][0]["top_k"]
    explanation = explained["explanation"]
    assert explanation["method"] == "cam"
    assert [m["index"] for m in explanation["maps"]] == [s["index"] for s in explained["top_k"]]
    for class_map in explanation["maps"]:
        heatmap = np.array(class_map["heatmap"])
        assert heatmap.shape == (7, 7) and heatmap.min() == 0 and heatmap.max() == 1
        assert all(round(value, 4) == value for row in class_map["heatmap"] for value in row)  # 4 decimals
    with Image.open(PHOTOS["chelsea"][0]) as image:
        width, height = image.size
    box = explanation["box"]
    assert box["height"] == pytest.approx(224 * height / 256, abs=0.5)
    assert box["left"] + box["width"] / 2 == pytest.approx(width / 2, abs=1.5)
    card = httpx.get(f"{default_v2.http}/v1/models").json()["models"][0]
    assert card["explanation"]["method"] == "cam" and card["explanation"]["top_k"] == 5


def test_every_protocol_gives_the_same_maps(default_v2: V2Server) -> None:
    rest = rest_explained(default_v2)
    rest_maps = np.array([m["heatmap"] for m in rest["explanation"]["maps"]])
    rest_classes = [m["index"] for m in rest["explanation"]["maps"]]
    rest_box = [rest["explanation"]["box"][key] for key in ("left", "top", "width", "height")]

    tf = httpx.post(
        f"{default_v2.http}/v1/models/{DEFAULT}:predict",
        params={"explain": "true"},
        json={"instances": [{"b64": base64.b64encode(CAT).decode()}]},
        timeout=60,
    )
    assert tf.status_code == 200, tf.text
    tf_prediction = tf.json()["predictions"][0]
    assert tf_prediction["explanation_classes"] == rest_classes == tf_prediction["classes"]
    assert np.array_equal(np.array(tf_prediction["explanation_maps"]), rest_maps)
    assert tf_prediction["explanation_box"] == rest_box

    http = httpclient.InferenceServerClient(default_v2.http_address)
    result = http.infer(DEFAULT, [triton_input(httpclient, CAT)], parameters={"explain": True})
    grpc_client = grpcclient.InferenceServerClient(default_v2.grpc_address)
    grpc_result = grpc_client.infer(DEFAULT, [triton_input(grpcclient, CAT)], parameters={"explain": True})
    for answer in (result, grpc_result):
        maps = answer.as_numpy("explanation_maps")
        assert maps.shape == (1, 5, 7, 7) and maps.dtype == np.float32
        assert answer.as_numpy("explanation_classes").tolist() == [rest_classes]
        assert np.abs(maps[0] - rest_maps).max() <= 5e-5  # REST rounds to 4 decimals
        assert answer.as_numpy("explanation_box")[0] == pytest.approx(rest_box, abs=1e-3)
        probabilities = answer.as_numpy("probs")[0]
        assert rest_classes == np.argsort(-probabilities, kind="stable")[:5].tolist()

    # Only what is asked for: one named explanation output alone, with the labels' top 2.
    outputs = [
        httpclient.InferRequestedOutput("explanation_classes"),
        httpclient.InferRequestedOutput("probs", class_count=2),
    ]
    result = http.infer(DEFAULT, [triton_input(httpclient, CAT)], outputs=outputs)
    assert result.as_numpy("explanation_classes").tolist() == [rest_classes[:2]]
    assert result.as_numpy("explanation_maps") is None


def test_v2_metadata_lists_probs_alone_as_tritons_clients_expect(default_v2: V2Server) -> None:
    # The explanation outputs exist only when asked for; Triton's image client wants one output.
    outputs = httpx.get(f"{default_v2.http}/v2/models/{DEFAULT}").json()["outputs"]
    assert [o["name"] for o in outputs] == ["probs"]


def test_a_model_without_maps_answers_400_on_every_front_end(tiny_v2: V2Server) -> None:
    red = httpx.post(
        f"{tiny_v2.http}/predict?explain=true", files=[("file", ("red.png", _red_png()))], timeout=30
    )
    assert red.status_code == 400 and "does not explain" in red.json()["detail"]
    tf = httpx.post(
        f"{tiny_v2.http}/v1/models/{TINY}:predict?explain=true",
        json={"instances": [{"b64": base64.b64encode(_red_png()).decode()}]},
        timeout=30,
    )
    assert tf.status_code == 400 and "does not explain" in tf.json()["error"]
    http = httpclient.InferenceServerClient(tiny_v2.http_address)
    with pytest.raises(InferenceServerException, match="does not explain") as info:
        http.infer(TINY, [triton_input(httpclient, _red_png())], parameters={"explain": True})
    assert info.value.status() == "400"
    grpc_client = grpcclient.InferenceServerClient(tiny_v2.grpc_address)
    with pytest.raises(InferenceServerException, match="does not explain") as info:
        grpc_client.infer(TINY, [triton_input(grpcclient, _red_png())], parameters={"explain": True})
    assert info.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    # Without explain the same requests are answered.
    assert http.infer(TINY, [triton_input(httpclient, _red_png())]).as_numpy("probs").shape == (1, 4)


def _red_png() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (250, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()
