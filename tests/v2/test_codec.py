"""The v2 codec on its own: the three request encodings, the limits, and both answer encodings."""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import replace

import numpy as np
import pytest

from app.inference.postprocess import Classification, classify
from app.v2 import codec

JPEG_A, JPEG_B = b"\xff\xd8fake-a", b"\xff\xd8fake-bb"
LABELS = ["cat", "dog", "fox", "owl"]


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def binary_request(*elements: bytes, outputs: list[dict[str, object]] | None = None) -> tuple[bytes, int]:
    data = length_prefixed(*elements)
    header: dict[str, object] = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(elements), 1],
                "parameters": {"binary_data_size": len(data)},
            }
        ]
    }
    if outputs is not None:
        header["outputs"] = outputs
    text = json.dumps(header).encode()
    return text + data, len(text)


def json_request(data: list[object], shape: list[int], **extra: object) -> bytes:
    tensor = {"name": "image", "datatype": "BYTES", "shape": shape, "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_three_encodings_give_the_same_images() -> None:
    body, header_length = binary_request(JPEG_A, JPEG_B)
    from_binary = codec.parse_rest_request(body, header_length, max_images=8)
    from_json = codec.parse_rest_request(json_request([[b64(JPEG_A)], [b64(JPEG_B)]], [2, 1]), None, 8)
    flat_json = codec.parse_rest_request(json_request([b64(JPEG_A), b64(JPEG_B)], [2]), None, 8)
    raw = codec.parse_rest_request(JPEG_A, 0, max_images=8)
    assert from_binary.images == from_json.images == flat_json.images == [JPEG_A, JPEG_B]
    assert raw.images == [JPEG_A]
    # No outputs named: every output (probs), JSON unless binary_data_output says otherwise.
    assert from_json.outputs == raw.outputs == [codec.RequestedOutput("probs", None, False)]


def test_outputs_classification_binary_and_id_are_read() -> None:
    body, header_length = binary_request(
        JPEG_A, outputs=[{"name": "probs", "parameters": {"classification": 3, "binary_data": True}}]
    )
    parsed = codec.parse_rest_request(body, header_length, 8)
    assert parsed.outputs == [codec.RequestedOutput("probs", 3, True)]
    assert parsed.top_k == 3
    request = json_request([b64(JPEG_A)], [1, 1], id="req-7", parameters={"binary_data_output": True})
    parsed = codec.parse_rest_request(request, None, 8)
    assert (parsed.id, parsed.outputs) == ("req-7", [codec.RequestedOutput("probs", None, True)])


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"{not json", None, "the inference request is not valid JSON"),
        (b"[]", None, "the inference request must be a JSON object"),
        (b'{"inputs": []}', None, "'inputs' must be a list of one input tensor, 'image' (BYTES [N, 1])"),
        (
            json.dumps(
                {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}]}
            ).encode(),
            None,
            "unexpected input 'input'; send one input: 'image' (BYTES, encoded images) or 'pixels' "
            "(UINT8 [N, H, W, 3], decoded images)",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1], "data": [1]}]}
            ).encode(),
            None,
            "input 'image' has datatype 'UINT8'; send 'BYTES', one encoded image per element",
        ),
        (json_request(["AA=="], [1, 3]), None, "the second dimension must be 1"),
        (json_request(["AA=="], [0]), None, "input 'image': shape [0] holds no image"),
        (json_request(["AA==", "AA=="], [1]), None, "shape declares 1 element(s), 'data' holds 2"),
        (json_request(["not base64!"], [1]), None, "input 'image' element 0: not valid base64"),
        (json_request([7], [1]), None, "input 'image' element 0: expected a base64 string, got int"),
        (b'{"inputs": [{"name": "image"}]}', 999, "Inference-Header-Content-Length is 999 but"),
        (b"", 0, "the request body is empty; send one encoded image"),
    ],
)
def test_malformed_requests_are_refused_with_a_message(
    body: bytes, header_length: int | None, message: str
) -> None:
    with pytest.raises(codec.CodecError) as caught:
        codec.parse_rest_request(body, header_length, 8)
    assert message in caught.value.message


def test_binary_data_must_match_the_declared_sizes_and_counts() -> None:
    body, header_length = binary_request(JPEG_A)
    with pytest.raises(codec.CodecError, match="binary_data_size is 12 but 13 bytes follow the JSON"):
        codec.parse_rest_request(body + b"x", header_length, 8)
    with pytest.raises(codec.CodecError, match="element 0 declares 100 bytes but only 2 follow"):
        codec.decode_bytes_elements(struct.pack("<I", 100) + b"ab", 1)
    with pytest.raises(codec.CodecError, match="truncated 4-byte length"):
        codec.decode_bytes_elements(length_prefixed(b"a") + b"\x01\x00", 2)
    with pytest.raises(codec.CodecError, match="3 bytes after the 1 element"):
        codec.decode_bytes_elements(length_prefixed(b"a") + b"xyz", 1)
    with pytest.raises(codec.CodecError, match="shape declares 3 element"):
        codec.decode_bytes_elements(length_prefixed(b"a", b"b"), 3)
    json_only = json_request([b64(JPEG_A)], [1])
    with pytest.raises(
        codec.CodecError, match="5 bytes of binary data follow the JSON, but no input names them"
    ):
        codec.parse_rest_request(json_only + b"extra", len(json_only), 8)


def test_too_many_images_is_its_own_error() -> None:
    with pytest.raises(codec.TooManyImagesError, match=r"more than 2 images in one request"):
        codec.parse_rest_request(json_request([b64(JPEG_A)] * 3, [3, 1]), None, max_images=2)


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([("scores", {})], "unknown output 'scores'; the outputs are 'probs' and"),
        ([("probs", {}), ("probs", {})], "output 'probs' is requested twice"),
        ([("explanation_maps", {"classification": 2})], "takes no classification parameter"),
        ([("probs", {"classification": 0})], "classification must be a whole number of classes >= 1, got 0"),
        ([("probs", {"classification": True})], "classification must be a whole number"),
        ([("probs", {"binary_data": "yes"})], "binary_data must be true or false, got 'yes'"),
    ],
)
def test_bad_outputs_are_refused(outputs: list[tuple[str, dict[str, object]]], message: str) -> None:
    with pytest.raises(codec.CodecError) as caught:
        codec.parse_outputs(outputs, binary_default=False)
    assert message in caught.value.message


def results() -> list[Classification]:
    rows = np.array([[0.1, 0.6, 0.2, 0.1], [0.7, 0.05, 0.05, 0.2]], dtype=np.float32)
    return [classify(row, LABELS, 2) for row in rows]


def test_classification_answers_bytes_p_index_label_in_order() -> None:
    tensors = codec.build_outputs(results(), [codec.RequestedOutput("probs", 2, False)])
    body, header_length = codec.encode_rest_response("m", "1", "r1", tensors)
    assert header_length is None
    p = [float(np.float32(x)) for x in (0.6, 0.2, 0.7, 0.2)]
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "id": "r1",
        "outputs": [
            {
                "name": "probs",
                "datatype": "BYTES",
                "shape": [2, 2],
                "data": [f"{p[0]!r}:1:dog", f"{p[1]!r}:2:fox", f"{p[2]!r}:0:cat", f"{p[3]!r}:3:owl"],
            }
        ],
    }


def test_binary_and_json_outputs_decode_to_the_same_numbers() -> None:
    as_json = codec.build_outputs(results(), [codec.RequestedOutput("probs", None, False)])
    as_binary = codec.build_outputs(results(), [codec.RequestedOutput("probs", None, True)])
    json_body, none = codec.encode_rest_response("m", "1", None, as_json)
    binary_body, header_length = codec.encode_rest_response("m", "1", None, as_binary)
    assert none is None and header_length is not None
    header = json.loads(binary_body[:header_length])
    assert header["outputs"] == [
        {"name": "probs", "datatype": "FP32", "shape": [2, 4], "parameters": {"binary_data_size": 32}}
    ]
    from_binary = np.frombuffer(binary_body[header_length:], dtype="<f4").reshape(2, 4)
    from_json = np.array(json.loads(json_body)["outputs"][0]["data"], dtype=np.float32).reshape(2, 4)
    assert np.array_equal(from_binary, from_json)
    assert np.array_equal(from_binary, np.stack([r.probabilities for r in results()]))
    classes = codec.build_outputs(results(), [codec.RequestedOutput("probs", 1, True)])
    raw = codec.encode_rest_response("m", "1", None, classes)[0]
    elements = codec.decode_bytes_elements(raw[raw.index(b"}]}") + 3 :], 2)
    assert [e.split(b":", 1)[1] for e in elements] == [b"1:dog", b"0:cat"]


def test_explanation_outputs_pad_an_image_with_fewer_maps() -> None:
    from app.inference.postprocess import ClassMap, CropBox, Explanation

    first, second = results()
    hot = np.eye(7, dtype=np.float32)
    box = CropBox(1.0, 2.0, 30.0, 30.0)
    explained = [
        replace(first, explanation=Explanation("cam", box, [ClassMap(1, "b", hot), ClassMap(2, "c", hot.T)])),
        replace(second, explanation=Explanation("cam", box, [ClassMap(0, "a", hot)])),
    ]
    outputs = codec.parse_outputs([], binary_default=False, explain=True)
    assert [o.name for o in outputs] == ["probs", *codec.EXPLANATION_OUTPUTS]
    _, maps, classes, boxes = codec.build_outputs(explained, outputs)
    assert (maps.datatype, maps.shape) == ("FP32", [2, 2, 7, 7])
    assert (classes.datatype, classes.shape) == ("INT64", [2, 2])
    assert np.array_equal(maps.values[0, 1], hot.T) and not maps.values[1, 1].any()
    assert classes.values.tolist() == [[1, 2], [0, -1]]
    assert np.frombuffer(classes.raw(), "<i8").tolist() == [1, 2, 0, -1]
    assert boxes.json_data() == [1.0, 2.0, 30.0, 30.0] * 2
    with pytest.raises(codec.CodecError, match="'explain' must be true or false"):
        codec.explain_parameter({"explain": "yes"})
