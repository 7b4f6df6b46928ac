"""The Open Inference Protocol's tensors for an image classifier: requests in, answers out.

Pure data and functions, no HTTP and no gRPC: the REST front end (``app/v2/rest.py``) and the
gRPC one (``app/v2/grpc_service.py``) both parse and answer through this module, so the two
cannot drift apart.

How a model looks through the protocol (``model_metadata``):

- one input, ``image``: BYTES of shape ``[N, 1]`` (or ``[N]``), each element one encoded image
  (any format ``/predict`` takes; the server decodes and preprocesses it from the card);
- one output, ``probs``: FP32 ``[N, classes]``, the probabilities ``/predict`` ranks; with the
  classification extension (``parameters.classification = k``) it is BYTES ``[N, k]`` instead,
  each element ``"<probability>:<index>:<label>"``, most probable first;
- with the request parameter ``explain: true`` (for a model whose card says it explains), three
  more: ``explanation_maps`` FP32 ``[N, K, h, w]`` (the class activation maps of the K classes
  listed, most probable first), ``explanation_classes`` INT64 ``[N, K]`` (their class indices;
  -1 pads an image with fewer maps), ``explanation_box`` FP32 ``[N, 4]`` (the crop the maps
  cover: left, top, width, height in the image's pixels). Naming any of them in ``outputs``
  asks for it alone.

Three request encodings reach the same :class:`InferRequest`: JSON with base64 strings in
``data``; the binary tensor extension (a JSON header of ``Inference-Header-Content-Length``
bytes, then each element as a 4-byte little-endian length and its bytes); and a raw body with
``Inference-Header-Content-Length: 0``, the whole body one image.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.dataplane import InferenceRequest
from app.http.json_body import decode_base64, load_json
from app.inference.errors import BodyTooLargeError, MalformedRequestError
from app.inference.model import NamedImage
from app.inference.postprocess import Classification, ClassScore
from app.v2 import pixels as pixel_tensor

INPUT_NAME = "image"
OUTPUT_NAME = "probs"
BYTES = "BYTES"
FP32 = "FP32"
INT64 = "INT64"
EXPLANATION_MAPS = "explanation_maps"
EXPLANATION_CLASSES = "explanation_classes"
EXPLANATION_BOX = "explanation_box"
EXPLANATION_OUTPUTS = (EXPLANATION_MAPS, EXPLANATION_CLASSES, EXPLANATION_BOX)
EXPLAIN_PARAMETER = "explain"
_RAW_DTYPES = {FP32: "<f4", INT64: "<i8"}
PLATFORM = "onnxruntime_onnx"
# Reported by GET /v2 and ServerMetadata: what a client may rely on beyond the required API.
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics")

_LENGTH = struct.Struct("<I")


# The request does not follow the protocol or this model's tensors (400, INVALID_ARGUMENT).
CodecError = MalformedRequestError


class TooManyImagesError(BodyTooLargeError):
    """More images than ``max_images_per_request`` (413, INVALID_ARGUMENT)."""


def max_json_values(max_images: int) -> int:
    """The most JSON values a request of ``max_images`` images holds: each image's element (and
    its row's brackets, shape [N, 1]), and room for the rest of the header."""
    return 256 + 4 * max_images


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for: ``classification`` is k, ``binary`` the binary extension."""

    name: str = OUTPUT_NAME
    classification: int | None = None
    binary: bool = False


@dataclass(frozen=True)
class InferRequest:
    """Encoded ``images``, or (the ``pixels`` input) images already decoded: uint8 [N, H, W, 3]."""

    images: list[bytes]
    outputs: list[RequestedOutput]
    id: str | None = None
    pixels: np.ndarray | None = None

    @property
    def image_count(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.images)

    @property
    def top_k(self) -> int | None:
        """The classification count asked for, if any (there is one output to ask it of)."""
        return next((o.classification for o in self.outputs if o.classification is not None), None)

    @property
    def explain(self) -> bool:
        """Whether an explanation output is asked for."""
        return wants_explanation(self.outputs)

    def inference(self, head: InferenceRequest) -> InferenceRequest:
        """The dataplane's request: ``head`` (model, version, protocol) with these images (named
        ``image[i]``), or pixels, and the classification count and explanation asked for."""
        images = [NamedImage(f"{INPUT_NAME}[{i}]", data) for i, data in enumerate(self.images)]
        return replace(
            head,
            images=images,
            top_k=self.top_k,
            explain=self.explain,
            top_k_parameter="classification",
            pixels=self.pixels,
        )


@dataclass(frozen=True)
class OutputTensor:
    """One output of an answer: FP32 rows, or BYTES elements (flattened, row-major)."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes]
    binary: bool = False

    def raw(self) -> bytes:
        """The tensor as the binary extension and ``raw_output_contents`` carry it."""
        if isinstance(self.values, np.ndarray):
            return self.values.astype(_RAW_DTYPES[self.datatype], copy=False).tobytes()
        return encode_bytes_elements(self.values)

    def json_data(self) -> list[Any]:
        """The tensor as JSON ``data``: numbers, or the BYTES elements as text."""
        if isinstance(self.values, np.ndarray):
            return self.values.reshape(-1).tolist()  # type: ignore[no-any-return,unused-ignore]
        return [value.decode() for value in self.values]


# -- BYTES elements ------------------------------------------------------------------------------


def encode_bytes_elements(elements: Sequence[bytes]) -> bytes:
    """Each element as a 4-byte little-endian length followed by its bytes."""
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def decode_bytes_elements(data: bytes | memoryview, expected: int) -> list[bytes]:
    """The ``expected`` length-prefixed elements of ``data``; ``CodecError`` unless it holds
    exactly that many, each complete."""
    view = memoryview(data)
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        if len(elements) == expected:
            raise CodecError(
                f"input {INPUT_NAME!r}: {len(view) - offset} bytes after the {expected} element(s) "
                f"its shape declares"
            )
        if offset + _LENGTH.size > len(view):
            raise CodecError(f"input {INPUT_NAME!r}: element {len(elements)} has a truncated 4-byte length")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            raise CodecError(
                f"input {INPUT_NAME!r}: element {len(elements)} declares {length} bytes but only "
                f"{len(view) - offset} follow"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if len(elements) != expected:
        raise CodecError(
            f"input {INPUT_NAME!r}: shape declares {expected} element(s), the data holds {len(elements)}"
        )
    return elements


# -- requests ------------------------------------------------------------------------------------


def whole_numbers(shape: Sequence[object]) -> list[int] | None:
    """The shape's dimensions as ints, or None unless each is a whole number (JSON's ``1.0`` is
    one, as JSON Schema's ``integer`` says; ``true`` is not)."""
    dims = []
    for d in shape:
        if isinstance(d, float) and d.is_integer():
            d = int(d)
        if not isinstance(d, int) or isinstance(d, bool):
            return None
        dims.append(d)
    return dims


def batch_size(shape: Sequence[object], max_images: int) -> int:
    """N of an input shape ``[N]`` or ``[N, 1]``, 1 <= N <= ``max_images``."""
    dims = whole_numbers(shape)
    if dims is None or len(dims) not in (1, 2):
        raise CodecError(
            f"input {INPUT_NAME!r}: shape {list(shape)} is not accepted; send [N, 1] or [N], one encoded "
            f"image per element"
        )
    if len(dims) == 2 and dims[1] != 1:
        raise CodecError(
            f"input {INPUT_NAME!r}: shape {dims} is not accepted; the second dimension must be 1"
        )
    count = dims[0]
    if count < 1:
        raise CodecError(f"input {INPUT_NAME!r}: shape {dims} holds no image")
    if count > max_images:
        raise TooManyImagesError(f"more than {max_images} images in one request (max_images_per_request)")
    return count


def check_input(name: str, datatype: str) -> None:
    if name != INPUT_NAME:
        raise CodecError(
            f"unexpected input {name!r}; send one input: {INPUT_NAME!r} (BYTES, encoded images) or "
            f"{pixel_tensor.PIXELS_INPUT!r} (UINT8 [N, H, W, 3], decoded images)"
        )
    if datatype != BYTES:
        raise CodecError(
            f"input {INPUT_NAME!r} has datatype {datatype!r}; send {BYTES!r}, one encoded image per element"
        )


def parse_outputs(
    requested: Sequence[tuple[str, Mapping[str, object]]], binary_default: bool, explain: bool = False
) -> list[RequestedOutput]:
    """The outputs asked for as (name, parameters) pairs; none asked: every output. ``explain``
    (the request's parameter) adds the explanation outputs unless some are named."""
    outputs: list[RequestedOutput] = [] if requested else [RequestedOutput(binary=binary_default)]
    for name, parameters in requested:
        if name != OUTPUT_NAME and name not in EXPLANATION_OUTPUTS:
            explained = ", ".join(repr(n) for n in EXPLANATION_OUTPUTS)
            raise CodecError(
                f"unknown output {name!r}; the outputs are {OUTPUT_NAME!r} and, for a model that "
                f"explains, {explained}"
            )
        if any(o.name == name for o in outputs):
            raise CodecError(f"output {name!r} is requested twice")
        binary = parameters.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise CodecError(f"output {name!r}: binary_data must be true or false, got {binary!r}")
        classification = _classification(name, parameters)
        if classification is not None and name != OUTPUT_NAME:
            raise CodecError(f"output {name!r} takes no classification parameter; {OUTPUT_NAME!r} does")
        outputs.append(RequestedOutput(name, classification, binary))
    if explain and not wants_explanation(outputs):
        outputs += [RequestedOutput(name, None, binary_default) for name in EXPLANATION_OUTPUTS]
    return outputs


def wants_explanation(outputs: Sequence[RequestedOutput]) -> bool:
    return any(o.name in EXPLANATION_OUTPUTS for o in outputs)


def explain_parameter(parameters: Mapping[str, object]) -> bool:
    """The request parameter ``explain`` (absent: false)."""
    value = parameters.get(EXPLAIN_PARAMETER, False)
    if not isinstance(value, bool):
        raise CodecError(f"parameter {EXPLAIN_PARAMETER!r} must be true or false, got {value!r}")
    return value


def _classification(name: str, parameters: Mapping[str, object]) -> int | None:
    k = parameters.get("classification")
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CodecError(f"output {name!r}: classification must be a whole number of classes >= 1, got {k!r}")
    return k


def parse_rest_request(body: bytes, header_length: int | None, max_images: int) -> InferRequest:
    """A v2 HTTP request body, with the binary extension's header length when one was sent."""
    if header_length == 0:  # a raw body: the whole body is the one input's one element
        if not body:
            raise CodecError("the request body is empty; send one encoded image")
        return InferRequest(images=[body], outputs=parse_outputs([], binary_default=False))
    if header_length is not None and header_length > len(body):
        raise CodecError(
            f"Inference-Header-Content-Length is {header_length} but the body has only {len(body)} bytes"
        )
    split = len(body) if header_length is None else header_length
    header, binary = _json_object(body[:split], max_images), memoryview(body)[split:]
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise CodecError(f"'inputs' must be a list of one input tensor, {INPUT_NAME!r} (BYTES [N, 1])")
    parameters = _object(header.get("parameters", {}), "'parameters'")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise CodecError(f"binary_data_output must be true or false, got {binary_default!r}")
    explain = explain_parameter(parameters)
    outputs = parse_outputs(_rest_outputs(header.get("outputs", [])), binary_default, explain)
    request_id = _request_id(header.get("id"))
    if inputs[0].get("name") == pixel_tensor.PIXELS_INPUT:
        pixels = _rest_pixels(inputs[0], binary, max_images)
        return InferRequest(images=[], outputs=outputs, id=request_id, pixels=pixels)
    return InferRequest(images=_rest_input(inputs[0], binary, max_images), outputs=outputs, id=request_id)


def _json_object(data: bytes, max_images: int) -> dict[str, Any]:
    value = load_json(data, max_json_values(max_images), "the inference request")
    return _object(value, "the inference request")


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CodecError(f"{what} must be a JSON object")
    return value


def _request_id(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise CodecError(f"'id' must be a string, got {type(value).__name__}")


def _rest_input(tensor: dict[str, Any], binary: memoryview, max_images: int) -> list[bytes]:
    name, datatype = tensor.get("name"), tensor.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise CodecError("each input needs a 'name' and a 'datatype' string")
    check_input(name, datatype)
    shape = tensor.get("shape")
    if not isinstance(shape, list):
        raise CodecError(f"input {INPUT_NAME!r} needs a 'shape' list, e.g. [1, 1]")
    count = batch_size(shape, max_images)
    size = _object(tensor.get("parameters", {}), f"input {INPUT_NAME!r}: 'parameters'").get(
        "binary_data_size"
    )
    if size is None:
        if len(binary):
            raise CodecError(f"{len(binary)} bytes of binary data follow the JSON, but no input names them")
        return _base64_elements(tensor.get("data"), count)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise CodecError(f"input {INPUT_NAME!r}: binary_data_size must be a byte count, got {size!r}")
    if size != len(binary):
        raise CodecError(
            f"input {INPUT_NAME!r}: binary_data_size is {size} but {len(binary)} bytes follow the JSON"
        )
    return decode_bytes_elements(binary, count)


def _rest_pixels(tensor: dict[str, Any], binary: memoryview, max_images: int) -> np.ndarray:
    """The ``pixels`` input: its numbers in ``data``, or its bytes after the JSON."""
    try:
        shape = pixels_input_shape(tensor.get("datatype"), tensor.get("shape"), max_images)
        size = _object(tensor.get("parameters", {}), "the input's 'parameters'").get("binary_data_size")
        if size is None:
            if len(binary):
                raise CodecError(
                    f"{len(binary)} bytes of binary data follow the JSON, but no input names them"
                )
            return pixel_tensor.pixels_from_values(tensor.get("data"), shape)
        if size != len(binary):
            raise CodecError(
                f"input 'pixels': binary_data_size is {size!r} but {len(binary)} bytes follow the JSON"
            )
        return pixel_tensor.pixels_from_bytes(binary, shape)
    except pixel_tensor.PixelsError as exc:
        raise CodecError(exc.message) from None


def pixels_input_shape(datatype: object, shape: object, max_images: int) -> list[int]:
    """The ``pixels`` input's shape, checked with its datatype and the image count."""
    try:
        pixel_tensor.check_pixels_datatype(str(datatype))
        listed = list(shape) if isinstance(shape, list | tuple) else []
        whole = whole_numbers(listed)
        dims = pixel_tensor.pixels_shape(whole if whole is not None else listed)
    except pixel_tensor.PixelsError as exc:
        raise CodecError(exc.message) from None
    if dims[0] > max_images:
        raise TooManyImagesError(f"more than {max_images} images in one request (max_images_per_request)")
    return dims


def _base64_elements(data: object, count: int) -> list[bytes]:
    if not isinstance(data, list):
        raise CodecError(f"input {INPUT_NAME!r} needs 'data': a list of base64 strings, one per image")
    flat = [item for row in data for item in (row if isinstance(row, list) else [row])]
    if len(flat) != count:
        raise CodecError(f"input {INPUT_NAME!r}: shape declares {count} element(s), 'data' holds {len(flat)}")
    return [decode_base64(item, f"input {INPUT_NAME!r} element {i}") for i, item in enumerate(flat)]


def _rest_outputs(outputs: object) -> list[tuple[str, Mapping[str, object]]]:
    if not isinstance(outputs, list):
        raise CodecError("'outputs' must be a list of requested outputs")
    pairs: list[tuple[str, Mapping[str, object]]] = []
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise CodecError("each requested output needs a 'name' string")
        pairs.append((output["name"], _object(output.get("parameters", {}), "an output's 'parameters'")))
    return pairs


# -- answers -------------------------------------------------------------------------------------


def classification_element(score: ClassScore) -> bytes:
    """``"<probability>:<index>:<label>"``, the probability as the shortest text that reads back
    as the same number (what ``/predict`` prints)."""
    return f"{score.probability!r}:{score.index}:{score.label}".encode()


def build_outputs(
    results: Sequence[Classification], outputs: Sequence[RequestedOutput]
) -> list[OutputTensor]:
    """The requested output tensors for the images' results, in request order."""
    tensors = []
    for output in outputs:
        if output.name in EXPLANATION_OUTPUTS:
            tensors.append(_explanation_tensor(output, results))
        elif output.classification is None:
            probabilities = np.stack([r.probabilities for r in results]).astype(np.float32, copy=False)
            tensors.append(
                OutputTensor(output.name, FP32, list(probabilities.shape), probabilities, output.binary)
            )
        else:
            k = output.classification
            elements = [classification_element(score) for r in results for score in r.top_k[:k]]
            tensors.append(OutputTensor(output.name, BYTES, [len(results), k], elements, output.binary))
    return tensors


def _explanation_tensor(output: RequestedOutput, results: Sequence[Classification]) -> OutputTensor:
    """One explanation output: every image's maps (padded to the most any image has), their
    classes (-1 pads) or the crop boxes."""
    explanations = [r.explanation for r in results]
    if any(e is None for e in explanations):
        raise ValueError("an explanation output for results without explanations")
    found = [e for e in explanations if e is not None]
    if output.name == EXPLANATION_BOX:
        boxes = np.array([[e.box.left, e.box.top, e.box.width, e.box.height] for e in found], np.float32)
        return OutputTensor(output.name, FP32, [len(found), 4], boxes, output.binary)
    count = max(len(e.maps) for e in found)
    if output.name == EXPLANATION_CLASSES:
        classes = np.full((len(found), count), -1, dtype=np.int64)
        for row, explanation in zip(classes, found, strict=True):
            row[: len(explanation.maps)] = [m.index for m in explanation.maps]
        return OutputTensor(output.name, INT64, [len(found), count], classes, output.binary)
    shape = next((m.heatmap.shape for e in found for m in e.maps), (0, 0))
    maps = np.zeros((len(found), count, *shape), dtype=np.float32)
    for image, explanation in zip(maps, found, strict=True):
        for slot, class_map in zip(image, explanation.maps, strict=False):
            slot[...] = class_map.heatmap
    return OutputTensor(output.name, FP32, list(maps.shape), maps, output.binary)


def encode_rest_response(
    model_name: str, model_version: str, request_id: str | None, tensors: Sequence[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    described: list[dict[str, Any]] = []
    binary_parts: list[bytes] = []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.binary:
            raw = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary_parts.append(raw)
        else:
            entry["data"] = tensor.json_data()
        described.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = described
    header = json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode()
    if not binary_parts:
        return header, None
    return header + b"".join(binary_parts), len(header)


# -- metadata ------------------------------------------------------------------------------------


def tensor_metadata(num_classes: int) -> dict[str, list[dict[str, Any]]]:
    """The model's inputs and outputs as model metadata lists them (-1: the batch dimension).

    The explanation outputs are not listed: they exist only when a request asks for them, and
    Triton's own clients (its image client) expect a classifier to list one output."""
    return {
        "inputs": [{"name": INPUT_NAME, "datatype": BYTES, "shape": [-1, 1]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": FP32, "shape": [-1, num_classes]}],
    }
