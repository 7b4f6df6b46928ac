"""TF Serving's JSON request body: rows (``instances``) or columns (``inputs``) of base64 images.

Pure functions, run on the parse thread: the body's JSON values are counted before it is
parsed, and the image count checked before any image is decoded from base64.
"""

from __future__ import annotations

import json
from dataclasses import replace

from app.dataplane import DataPlane, InferenceRequest
from app.http.json_body import decode_base64, load_json
from app.inference.errors import MalformedRequestError
from app.inference.model import NamedImage


def parse_request(body: bytes, head: InferenceRequest, dataplane: DataPlane) -> tuple[InferenceRequest, bool]:
    """The request (``head`` with the body's images) and whether it is columnar."""
    max_images = dataplane.limits.max_images_per_request
    request = load_json(body, 256 + 4 * max_images)  # an instance: "{", "b64" and its value
    if not isinstance(request, dict) or ("instances" in request) == ("inputs" in request):
        raise MalformedRequestError('send a JSON object with either "instances" (rows) or "inputs" (columns)')
    columnar = "inputs" in request
    items = _columns(request["inputs"]) if columnar else request["instances"]
    if not isinstance(items, list) or not items:
        raise MalformedRequestError('"instances" must be a non-empty list, e.g. [{"b64": "<base64 image>"}]')
    dataplane.check_image_count(len(items))
    images = [NamedImage(f"instance #{i}", _image(item, i)) for i, item in enumerate(items)]
    return replace(head, images=images), columnar


def _columns(inputs: object) -> object:
    """Columnar ``inputs``: a list of images, one image, or one named input holding either."""
    if isinstance(inputs, dict) and "b64" not in inputs and len(inputs) == 1:
        inputs = next(iter(inputs.values()))
    return inputs if isinstance(inputs, list) else [inputs]


def _image(item: object, index: int) -> bytes:
    """``{"b64": ...}``, or an instance with one named input holding it."""
    if isinstance(item, dict) and "b64" not in item and len(item) == 1:
        item = next(iter(item.values()))
    if not isinstance(item, dict) or set(item) != {"b64"}:
        raise MalformedRequestError(
            f'instance #{index}: expected {{"b64": "<base64 image>"}}, got {_shown(item)}'
        )
    return decode_base64(item["b64"], f"instance #{index}")


def _shown(value: object) -> str:
    text = json.dumps(value)  # it came from JSON
    return text if len(text) <= 80 else text[:77] + "..."
