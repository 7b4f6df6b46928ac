"""The server's preprocessing is the export stage's eval transform, on real photos.

``exact=True``: bit-identical to torchvision's Resize + CenterCrop on PIL ``convert("RGB")``.
The serving path (crop-box resampling; draft mode for large JPEGs): within one level on real
photos, and on phone-sized JPEGs the same top-1 from the real default model with every
probability within PROBABILITY_TOLERANCE.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.inference.engine import EngineOptions, create_engine
from app.inference.preprocess import ImageLimits, decode_rgb, preprocess
from model_card import Interpolation, Preprocessing
from tests.app.photos import PHOTOS

data_module = pytest.importorskip("model_export.data", reason="the export stage (torch) is not installed")

PROBABILITY_TOLERANCE = 0.08  # max |p_draft - p_full| over all 1000 classes; observed <= 0.055
LIMITS = ImageLimits(
    allowed_formats=frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF"}), max_image_pixels=80_000_000
)


def imagenet_spec(interpolation: Interpolation) -> Preprocessing:
    """Resize 256, centre-crop 224: the ImageNet eval transform, with the given interpolation."""
    return Preprocessing(
        resize_size=256, crop_size=224, interpolation=interpolation, mean=(0.5,) * 3, std=(0.5,) * 3
    )


def torchvision_pixels(path_or_image: Path | Image.Image, spec: Preprocessing) -> np.ndarray:
    image = data_module.load_rgb(path_or_image) if isinstance(path_or_image, Path) else path_or_image
    tensor = data_module.create_eval_transform(spec)(image)  # uint8 CHW
    return tensor.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_exact_path_is_bit_identical_to_the_eval_transform(photo: str, interpolation: Interpolation) -> None:
    path, _ = PHOTOS[photo]
    spec = imagenet_spec(interpolation)
    ours = preprocess(path.read_bytes(), spec, LIMITS, photo, exact=True)
    np.testing.assert_array_equal(ours, torchvision_pixels(path, spec))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_serving_path_is_within_one_level_of_the_eval_transform(
    photo: str, interpolation: Interpolation
) -> None:
    path, _ = PHOTOS[photo]
    spec = imagenet_spec(interpolation)
    ours = preprocess(path.read_bytes(), spec, LIMITS, photo).astype(int)  # no draft: all < 1024 px
    difference = np.abs(ours - torchvision_pixels(path, spec).astype(int))
    assert difference.max() <= 1
    assert np.count_nonzero(difference) < 0.002 * difference.size


@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_serving_path_keeps_top1_and_probabilities_on_large_photos(
    photo: str, default_model_path: Path
) -> None:
    engine = create_engine(default_model_path, EngineOptions())
    spec = engine.card.preprocessing
    path, _ = PHOTOS[photo]
    # A phone-sized JPEG of the photo (short side >= 4x the resize size, so draft mode engages).
    original = Image.open(path).convert("RGB")
    scale = 4 * spec.resize_size / min(original.size)
    large = original.resize(
        (round(original.width * scale), round(original.height * scale)), Image.Resampling.LANCZOS
    )
    buffer = io.BytesIO()
    large.save(buffer, format="JPEG", quality=92)
    data = buffer.getvalue()
    assert min(decode_rgb(data, LIMITS, photo, draft_size=2 * spec.resize_size).size) < min(large.size)

    full = engine.run(preprocess(data, spec, LIMITS, photo, exact=True)[None])[0]
    drafted = engine.run(preprocess(data, spec, LIMITS, photo)[None])[0]
    reference = engine.run(torchvision_pixels(Image.open(io.BytesIO(data)).convert("RGB"), spec)[None])[0]
    np.testing.assert_array_equal(full, reference)
    assert int(drafted.argmax()) == int(full.argmax())
    assert float(np.abs(drafted - full).max()) <= PROBABILITY_TOLERANCE
