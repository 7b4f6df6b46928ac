"""Explanations from the inference core: class activation maps of the default model, laid over
the original image, and refused by a model that cannot explain."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.inference.batcher import BatcherConfig
from app.inference.engine import Engine, EngineOptions, create_engine
from app.inference.errors import ExplainUnsupportedError, InvalidRequestError
from app.inference.model import Decoder, NamedImage, ServedModel
from app.inference.postprocess import Classification
from app.inference.preprocess import ImageLimits, crop_in_original, oriented_size
from tests.app.photos import PHOTOS

pytestmark = pytest.mark.anyio

LIMITS = ImageLimits(frozenset({"PNG", "JPEG"}), 50_000_000)
CANVAS_PX = 448
QUADRANTS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}


@pytest.fixture(scope="module")
def default_engine(default_model_path: Path) -> Engine:
    return create_engine(default_model_path, EngineOptions(intra_op_threads=1, instances=1))


class RecordingEngine:
    """The real engine, recording whether each run asked for the maps."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.explain_flags: list[bool] = []
        self.original_run = engine.run

    def run(self, batch: np.ndarray, *, instance: bool = False, explain: bool = False) -> np.ndarray:
        self.explain_flags.append(explain)
        return self.original_run(batch, instance=instance, explain=explain)


async def _served(engine: Engine) -> AsyncIterator[ServedModel]:
    decoder = Decoder(1, LIMITS)
    decoder.start()
    served = ServedModel(engine, BatcherConfig(max_batch_size=8, max_delay_ms=1), decoder)
    served.start()
    yield served
    await served.stop(5)
    decoder.stop()


@pytest.fixture
async def recorder(default_engine: Engine) -> AsyncIterator[tuple[ServedModel, RecordingEngine]]:
    recording = RecordingEngine(default_engine)
    default_engine.run = recording.run  # type: ignore[method-assign]
    try:
        async for served in _served(default_engine):
            yield served, recording
    finally:
        default_engine.run = recording.original_run  # type: ignore[method-assign]


@pytest.fixture
async def tiny(tiny_model_path: Path) -> AsyncIterator[ServedModel]:
    async for served in _served(create_engine(tiny_model_path, EngineOptions(intra_op_threads=1))):
        yield served


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _photo(name: str) -> Image.Image:
    if name == "astronaut":
        from skimage import data

        return Image.fromarray(data.astronaut())
    return Image.open(PHOTOS[name][0]).convert("RGB")


async def test_explain_off_asks_the_engine_for_no_maps(recorder: tuple[ServedModel, RecordingEngine]) -> None:
    served, recording = recorder
    image = NamedImage("chelsea", PHOTOS["chelsea"][0].read_bytes())
    [plain] = await served.classify([image], top_k=5)
    [explained] = await served.classify([image], top_k=5, explain=True)
    assert recording.explain_flags == [False, True]
    assert plain.explanation is None and explained.explanation is not None
    assert plain.probabilities.shape == explained.probabilities.shape == (1000,)
    assert np.array_equal(plain.probabilities, explained.probabilities)
    assert plain.top_k == explained.top_k


async def test_each_top_class_has_its_map_and_the_box_is_the_centre_crop(
    recorder: tuple[ServedModel, RecordingEngine],
) -> None:
    served, _ = recorder
    data = PHOTOS["chelsea"][0].read_bytes()
    width, height = Image.open(io.BytesIO(data)).size  # 451 x 300
    [result] = await served.classify([NamedImage("chelsea", data)], top_k=3, explain=True)
    explanation = result.explanation
    assert explanation is not None and explanation.method == "cam"
    assert [m.index for m in explanation.maps] == [s.index for s in result.top_k]
    assert [m.label for m in explanation.maps] == [s.label for s in result.top_k]
    for class_map in explanation.maps:
        assert class_map.heatmap.shape == (7, 7) and class_map.heatmap.dtype == np.float32
        assert class_map.heatmap.min() == pytest.approx(0.0) and class_map.heatmap.max() == pytest.approx(1.0)
    # Resize the short side 300 -> 256, centre-crop 224: a centred square of 224 * 300 / 256 px.
    box = explanation.box
    side = 224 * height / 256
    assert box.height == pytest.approx(side, abs=0.5) and box.width == pytest.approx(side, abs=1.5)
    assert box.left + box.width / 2 == pytest.approx(width / 2, abs=1.5)
    assert box.top + box.height / 2 == pytest.approx(height / 2, abs=0.5)


async def test_explained_and_plain_requests_share_batches(
    recorder: tuple[ServedModel, RecordingEngine],
) -> None:
    served, recording = recorder
    images = [NamedImage(name, PHOTOS[name][0].read_bytes()) for name in ("chelsea", "coffee")]
    results = await asyncio.gather(
        served.classify(images, top_k=2), served.classify(images, top_k=2, explain=True)
    )
    plain, explained = results
    assert all(r.explanation is None for r in plain) and all(r.explanation for r in explained)
    for a, b in zip(plain, explained, strict=True):
        assert a.probabilities.shape == (1000,) and np.allclose(a.probabilities, b.probabilities, atol=1e-6)
    assert True in recording.explain_flags


async def test_a_model_without_maps_refuses_to_explain(tiny: ServedModel) -> None:
    image = NamedImage("red", _png(Image.new("RGB", (40, 40), (250, 0, 0))))
    [result] = await tiny.classify([image], top_k=1)
    assert result.top_k[0].label == "red" and result.explanation is None
    assert not tiny.explains
    with pytest.raises(ExplainUnsupportedError, match="does not explain") as info:
        await tiny.classify([image], top_k=1, explain=True)
    assert isinstance(info.value, InvalidRequestError)


def test_the_box_is_in_the_orientation_the_image_is_shown() -> None:
    # Stored 400 wide and 200 high with EXIF orientation 6 (turn a quarter): shown 200 x 400.
    image = Image.new("RGB", (400, 200), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert oriented_size(buffer.getvalue(), LIMITS, "turned") == (200, 400)
    from model_card import Preprocessing

    spec = Preprocessing(resize_size=256, crop_size=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    left, top, width, height = crop_in_original(200, 400, spec)
    assert (width, height) == pytest.approx((175, 175), abs=0.5)
    assert (left, top + height / 2) == pytest.approx((12.5, 200), abs=0.5)


def _peak_in_original(result: Classification) -> tuple[float, float]:
    explanation = result.explanation
    assert explanation is not None
    heatmap = explanation.maps[0].heatmap
    row, col = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
    box = explanation.box
    return (
        box.left + (col + 0.5) / heatmap.shape[1] * box.width,
        box.top + (row + 0.5) / heatmap.shape[0] * box.height,
    )


@pytest.mark.parametrize("photo", ["chelsea", "coffee", "astronaut", "grace_hopper"])
async def test_the_map_peaks_in_the_quadrant_that_holds_the_photo(
    recorder: tuple[ServedModel, RecordingEngine], photo: str
) -> None:
    served, _ = recorder
    half = CANVAS_PX // 2
    tile = _photo(photo).resize((half, half), Image.Resampling.BILINEAR)
    images = []
    for name, (qx, qy) in QUADRANTS.items():
        canvas = Image.new("RGB", (CANVAS_PX, CANVAS_PX), (128, 128, 128))
        canvas.paste(tile, (qx * half, qy * half))
        images.append(NamedImage(f"{photo} {name}", _png(canvas)))
    results = await served.classify(images, top_k=1, explain=True)
    for (name, (qx, qy)), result in zip(QUADRANTS.items(), results, strict=True):
        x, y = _peak_in_original(result)
        assert (int(x // half), int(y // half)) == (qx, qy), (
            f"{photo} in the {name} quadrant: the map of {result.top_k[0].label!r} "
            f"peaks at ({x:.0f}, {y:.0f})"
        )
