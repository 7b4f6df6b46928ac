"""Explanations in the client: the request asks for them, the answer parses, and the command
line's --explain writes each photo with its map laid over the part the model saw."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from imgserve_client import CropBox, Explanation
from imgserve_client.overlay import heat_colour, overlay
from imgserve_client.types import ClassMap, parse_predictions
from PIL import Image

from .fakes import FakeClock, answers, make_client, predict_body

# A 7 x 7 map, hot in its top-left cell only.
HOT_TOP_LEFT = [[1.0 if (r, c) == (0, 0) else 0.0 for c in range(7)] for r in range(7)]


def explained_body(box: dict[str, float]) -> dict[str, Any]:
    body = predict_body(["cat.png"])
    body["predictions"][0]["explanation"] = {
        "method": "cam",
        "box": box,
        "maps": [
            {"index": 3, "label": "label-0", "heatmap": HOT_TOP_LEFT},
            {"index": 1, "label": "other", "heatmap": [[0.5] * 7] * 7},
        ],
    }
    return body


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_explain_asks_the_server_and_parses_the_maps(kind: str) -> None:
    clock = FakeClock()
    box = {"left": 10.0, "top": 0.0, "width": 70.0, "height": 70.0}
    handler, seen = answers(
        httpx.Response(200, json=explained_body(box)), httpx.Response(200, json=predict_body(["a"]))
    )
    client = make_client(kind, handler, clock)
    explained = client.predict(b"png bytes", top_k=2, explain=True)
    plain = client.predict(b"png bytes", top_k=2)
    assert seen[0].url.params["explain"] == "true" and "explain" not in seen[1].url.params
    assert plain.explanation is None
    explanation = explained.explanation
    assert explanation is not None and explanation.method == "cam"
    assert explanation.box == CropBox(10.0, 0.0, 70.0, 70.0)
    assert [(m.index, m.label) for m in explanation.maps] == [(3, "label-0"), (1, "other")]
    assert explanation.maps[0].heatmap[0][0] == 1.0 and len(explanation.maps[0].heatmap) == 7


def test_a_malformed_explanation_is_a_protocol_error() -> None:
    body = explained_body({"left": 0, "top": 0})  # no width, no height
    with pytest.raises(Exception, match="unexpected /predict response"):
        parse_predictions(body)


def test_the_jet_scale_runs_from_faint_blue_to_strong_red() -> None:
    cold, hot = heat_colour(0.0), heat_colour(1.0)
    assert cold[2] > 100 and cold[0] == 0 and hot[0] > 100 and hot[2] == 0
    assert cold[3] < hot[3]


def test_the_overlay_is_hot_where_the_map_is_and_leaves_the_rest_of_the_photo_alone() -> None:
    photo = Image.new("RGB", (100, 70), (128, 128, 128))
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    explanation = Explanation(
        "cam", CropBox(15.0, 0.0, 70.0, 70.0), (ClassMap(3, "cat", tuple(map(tuple, HOT_TOP_LEFT))),)
    )
    image = overlay(buffer.getvalue(), explanation)
    assert image.size == (100, 70) and image.mode == "RGB"
    red, _, blue = image.getpixel((16, 1))  # the hot cell: the box's top-left corner
    assert red > 180 and blue < 100
    far = image.getpixel((80, 65))  # a cold cell: tinted blue
    assert far[2] > far[0]
    assert image.getpixel((5, 35)) == (128, 128, 128)  # outside the crop: the photo as it was


def test_cli_explain_writes_one_overlay_per_photo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgserve_client import cli

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (100, 70), (90, 90, 90)).save(photos / name)
    box = {"left": 15.0, "top": 0.0, "width": 70.0, "height": 70.0}
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        if request.url.path == "/v1/models":
            from .fakes import models_body

            body = models_body()
            body["models"][0]["explanation"] = {"method": "cam", "top_k": 5, "height": 7, "width": 7}
            return httpx.Response(200, json=body)
        parts = request.content.count(b"filename=")
        answer = explained_body(box)
        answer["predictions"] = answer["predictions"] * parts
        return httpx.Response(200, json=answer)

    real_client = cli.Client
    monkeypatch.setattr(
        cli, "Client", lambda *a, **k: real_client(*a, transport=httpx.MockTransport(handle), **k)
    )
    out = tmp_path / "maps"
    output = tmp_path / "o.jsonl"
    code = cli.run(["classify", str(photos), "--explain", str(out), "--no-progress", "-o", str(output)])
    assert code == cli.EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == ["a.cam.png", "b.cam.png"]
    assert all(r.url.params.get("explain") == "true" for r in seen if r.url.path == "/predict")
    written = Image.open(out / "a.cam.png")
    assert written.size == (100, 70) and written.getpixel((16, 1))[0] > 180
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["label"] for r in records] == ["label-0", "label-0"]
