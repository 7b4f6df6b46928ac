"""Decoding and preprocessing: formats, modes, orientation, limits, and the card's geometry."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.inference.errors import ImageTooLargeError, UndecodableImageError, UnsupportedFormatError
from app.inference.preprocess import (
    ImageLimits,
    configure_pillow,
    decode_rgb,
    preprocess,
    resize_and_crop,
    resized_size,
)
from model_card import Preprocessing

LIMITS = ImageLimits(
    allowed_formats=frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF"}), max_image_pixels=4_000_000
)
SPEC = Preprocessing(resize_size=8, crop_size=6, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    """An RGB image with distinct pixels, so geometry errors show."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize(
    ("size", "expected"),
    [((640, 480), (341, 256)), ((480, 640), (256, 341)), ((256, 256), (256, 256)), ((1000, 3), (85333, 256))],
)
def test_resized_size_truncates_the_long_side_like_torchvision(size, expected) -> None:
    assert resized_size(*size, 256) == expected


def test_resize_and_crop_returns_the_centre_crop_as_uint8_hwc() -> None:
    spec = Preprocessing(
        resize_size=10, crop_size=4, interpolation="nearest", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    image = gradient(10, 10)
    out = resize_and_crop(image, spec)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(image)[3:7, 3:7])


def test_every_allowed_format_decodes_to_the_same_geometry() -> None:
    image = gradient(20, 16)
    for fmt in ("PNG", "BMP", "GIF", "JPEG", "WEBP"):
        out = preprocess(encode(image, fmt), SPEC, LIMITS, f"a {fmt}")
        assert out.shape == (6, 6, 3), fmt
    lossless = [preprocess(encode(image, fmt), SPEC, LIMITS, fmt) for fmt in ("PNG", "BMP")]
    np.testing.assert_array_equal(lossless[0], lossless[1])


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("L", 100, (100, 100, 100)),
        ("LA", (100, 0), (100, 100, 100)),  # alpha dropped, as PIL convert("RGB")
        ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
        ("1", 1, (255, 255, 255)),
    ],
)
def test_modes_convert_to_rgb_like_pil_convert(mode, colour, expected) -> None:
    data = encode(Image.new(mode, (12, 12), colour), "PNG")
    out = preprocess(data, SPEC, LIMITS, "img")
    assert out.shape == (6, 6, 3)
    assert tuple(out[0, 0]) == expected


def test_palette_with_transparency_uses_the_palette_colour() -> None:
    image = Image.new("P", (12, 12), 1)
    image.putpalette([0, 0, 0, 200, 50, 25] + [0] * 762)
    out = preprocess(encode(image, "PNG", transparency=1), SPEC, LIMITS, "img")
    assert tuple(out[3, 3]) == (200, 50, 25)


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    out = preprocess(data, SPEC, LIMITS, "img")
    red, green, blue = (int(v) for v in out[3, 3])
    assert red > 240 and green < 15 and blue < 15


def test_16_bit_greyscale_keeps_its_range() -> None:
    pixels = np.full((12, 12), 32896, dtype=np.uint16)  # 128 * 257: mid grey in 16 bits
    data = encode(Image.fromarray(pixels), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = preprocess(data, SPEC, LIMITS, "img")
    assert tuple(out[0, 0]) == (128, 128, 128)


def test_the_first_frame_of_an_animated_gif_is_used() -> None:
    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = preprocess(buffer.getvalue(), SPEC, LIMITS, "anim")
    red, _, blue = (int(v) for v in out[2, 2])
    assert red > 200 and blue < 50


def test_exif_orientation_is_applied() -> None:
    image = gradient(30, 20)  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_rgb(data, LIMITS, "img")
    assert decoded.size == (20, 30)


def test_a_format_outside_the_allowlist_is_415_naming_it() -> None:
    data = encode(gradient(8, 8), "TIFF")
    with pytest.raises(UnsupportedFormatError) as excinfo:
        preprocess(data, SPEC, LIMITS, "file #2 'a.tif'")
    assert excinfo.value.message == (
        "file #2 'a.tif': image format TIFF is not accepted; allowed: BMP, GIF, JPEG, PNG, WEBP"
    )


def test_a_narrower_allowlist_refuses_the_rest() -> None:
    only_png = ImageLimits(allowed_formats=frozenset({"PNG"}), max_image_pixels=1_000_000)
    with pytest.raises(UnsupportedFormatError, match="image format JPEG is not accepted; allowed: PNG"):
        preprocess(encode(gradient(8, 8), "JPEG"), SPEC, only_png, "img")


@pytest.mark.parametrize("data", [b"not an image at all", b"", b"\x89PNG\r\n\x1a\n garbage"])
def test_bytes_that_are_no_image_are_422(data: bytes) -> None:
    with pytest.raises(UndecodableImageError) as excinfo:
        preprocess(data, SPEC, LIMITS, "request body")
    assert excinfo.value.message.startswith("request body: ")


def test_a_truncated_image_is_422() -> None:
    data = encode(gradient(64, 64), "PNG")
    with pytest.raises(UndecodableImageError, match=r"^img: cannot decode PNG image"):
        preprocess(data[: len(data) // 2], SPEC, LIMITS, "img")


def test_too_many_pixels_is_413_before_decoding() -> None:
    small_limit = ImageLimits(allowed_formats=LIMITS.allowed_formats, max_image_pixels=100)
    with pytest.raises(ImageTooLargeError) as excinfo:
        preprocess(encode(gradient(11, 10), "PNG"), SPEC, small_limit, "img")
    assert excinfo.value.message == (
        "img: image is 11x10 = 110 pixels, over the limit of 100 pixels per image (max_image_pixels)"
    )


def test_a_decompression_bomb_is_413_from_the_header_alone() -> None:
    # A 30000 x 30000 PNG header with almost no data: rejected without decoding a pixel.
    bomb = encode(Image.new("1", (30000, 30000)), "PNG")
    assert len(bomb) < 200_000
    configure_pillow(LIMITS.max_image_pixels)
    with pytest.raises(ImageTooLargeError, match="img: image exceeds the limit of 4000000 pixels"):
        preprocess(bomb, SPEC, LIMITS, "img")


def test_draft_mode_decodes_large_jpegs_smaller_but_not_below_the_resize_size() -> None:
    data = encode(gradient(1600, 1000), "JPEG", quality=90)
    spec = Preprocessing(resize_size=100, crop_size=90, mean=(0.5,) * 3, std=(0.5,) * 3)
    drafted = decode_rgb(data, LIMITS, "img", draft_size=spec.resize_size)
    assert drafted.size == (200, 125)  # scale 1/8: the short side stays >= 100
    assert decode_rgb(data, LIMITS, "img").size == (1600, 1000)
    with_draft = preprocess(data, spec, LIMITS, "img").astype(int)
    without = preprocess(data, spec, LIMITS, "img", exact=True).astype(int)
    assert with_draft.shape == without.shape == (90, 90, 3)
    assert np.abs(with_draft - without).mean() < 3


def test_draft_mode_leaves_images_under_twice_the_resize_size_alone() -> None:
    data = encode(gradient(190, 150), "JPEG", quality=90)
    assert decode_rgb(data, LIMITS, "img", draft_size=100).size == (190, 150)


def test_the_box_path_resamples_only_the_crop_and_stays_within_one_level() -> None:
    image = gradient(300, 200)
    spec = Preprocessing(resize_size=64, crop_size=56, mean=(0.5,) * 3, std=(0.5,) * 3)
    exact = resize_and_crop(image, spec, exact=True).astype(int)
    boxed = resize_and_crop(image, spec, exact=False).astype(int)
    assert exact.shape == boxed.shape == (56, 56, 3)
    assert np.abs(exact - boxed).max() <= 1


def test_an_extreme_aspect_ratio_is_classified_without_a_huge_intermediate() -> None:
    # 1 x 200,000: resizing the short side to 256 first would make 256 x 51,200,000 pixels.
    strip = Image.fromarray(np.full((200_000, 1, 3), 90, dtype=np.uint8))
    spec = Preprocessing(resize_size=256, crop_size=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    for exact in (True, False):
        out = preprocess(encode(strip, "PNG"), spec, LIMITS, "strip", exact=exact)
        assert out.shape == (224, 224, 3) and int(out.min()) == int(out.max()) == 90
