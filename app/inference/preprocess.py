"""Image bytes -> the uint8 HWC array the graph takes, exactly as the export stage's eval transform.

The contract (docs/ARCHITECTURE.md): decode -> RGB (PIL ``convert("RGB")``) -> resize the short
side to ``resize_size`` with the card's interpolation (long side ``int(size * long / short)``,
as torchvision's ``Resize(int)``) -> centre crop (torchvision's ``CenterCrop`` offsets) -> uint8
HWC. Deliberate additions: EXIF orientation is applied, 16-bit greyscale is scaled to 8 bits
(``convert`` would clip it). The serving path is also faster: JPEGs at least 4x the resize size
(short side) are decoded in draft mode (DCT-domain downscaling), and only the crop's box is
resampled; that changes pixels slightly but not predictions, while ``exact=True`` is
bit-identical to torchvision (both proven in tests/app/test_preprocess_parity.py).

Pure functions, safe to call from many threads: Pillow releases the GIL while decoding and
resizing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.inference.errors import ImageTooLargeError, UndecodableImageError, UnsupportedFormatError
from app.inference.jpeg import JpegLayoutError, TooManyScansError, decode_work, read_jpeg_layout
from model_card import Preprocessing

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}
DRAFT_FACTOR = 2
PILLOW_DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
MAX_EXACT_INTERMEDIATE_PIXELS = 64_000_000
# Scans one JPEG may have: libjpeg and Pillow write 10 for a progressive colour image (6 for
# greyscale), a baseline JPEG has 1; each scan walks the whole image's coefficients again.
DEFAULT_MAX_JPEG_SCANS = 64


@dataclass(frozen=True)
class ImageLimits:
    """What an uploaded image may be."""

    allowed_formats: frozenset[str]
    max_image_pixels: int
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS


def configure_pillow(max_image_pixels: int) -> None:
    """Pillow's own decompression-bomb check as a second line, raising instead of warning.

    Our check (width x height from the header, before decoding) is the limit; Pillow's also
    covers sizes that appear while loading (GIF frames). It stays at least at Pillow's default
    so that our check, with its clearer message, runs first. Process-wide on purpose.
    """
    Image.MAX_IMAGE_PIXELS = max(max_image_pixels, PILLOW_DEFAULT_MAX_PIXELS)
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def describe_formats(formats: frozenset[str]) -> str:
    return ", ".join(sorted(formats))


def open_image(data: bytes, limits: ImageLimits, name: str) -> Image.Image:
    """Identify the image (headers only) and enforce the format allowlist and pixel limit."""
    try:
        image = Image.open(io.BytesIO(data), formats=sorted(limits.allowed_formats))
    except UnidentifiedImageError:
        raise _not_allowed_or_undecodable(data, limits, name) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"{name}: image exceeds the limit of {limits.max_image_pixels} pixels"
        ) from exc
    except Exception as exc:  # Pillow raises many types on corrupt headers
        raise UndecodableImageError(f"{name}: cannot read image header: {exc}") from exc
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise ImageTooLargeError(
            f"{name}: image is {width}x{height} = {width * height} pixels, "
            f"over the limit of {limits.max_image_pixels} pixels per image (max_image_pixels)"
        )
    return image


@dataclass(frozen=True)
class ImageCost:
    """What decoding one image will cost, known from its header alone."""

    width: int
    height: int
    # Pixels the decoder produces (width x height, less JPEG draft-mode scaling); a JPEG whose
    # decoder buffers every coefficient (progressive, several scans) counts at full size plus
    # the work of its scans (app.inference.jpeg.decode_work).
    pixels: int


def draft_scale(width: int, height: int, draft_size: int) -> int:
    """The factor (1, 2, 4 or 8) libjpeg's draft mode divides each side by, as Pillow picks it."""
    ratio = min(width, height) // draft_size
    return next(factor for factor in (8, 4, 2, 1) if ratio >= factor)


def probe(data: bytes, spec: Preprocessing, limits: ImageLimits, name: str, exact: bool = False) -> ImageCost:
    """The cost of decoding ``data`` from its header (format allowlist and pixel limit checked),
    without decoding it: what admission counts before any decode work is queued.

    Animated GIF and WebP count one frame (the canvas): only the first is ever decoded. A JPEG
    with more than ``limits.max_jpeg_scans`` scans is refused (``ImageTooLargeError``).
    """
    image = open_image(data, limits, name)
    width, height = image.size
    scale = 1
    draft_size = None if exact else DRAFT_FACTOR * spec.resize_size
    if draft_size is not None and image.format == "JPEG" and min(width, height) >= 2 * draft_size:
        scale = draft_scale(width, height, draft_size)
    pixels = -(-width // scale) * -(-height // scale)
    if image.format == "JPEG":
        pixels = _jpeg_work(data, pixels, limits, name)
    return ImageCost(width, height, max(pixels, 1))


def _jpeg_work(data: bytes, output_pixels: int, limits: ImageLimits, name: str) -> int:
    """The pixels a JPEG's decode counts as, from its scans; refuses too many scans."""
    try:
        layout = read_jpeg_layout(data, limits.max_jpeg_scans)
    except TooManyScansError as exc:
        raise ImageTooLargeError(
            f"{name}: the JPEG has more than {exc.scans} scans, the limit per image (max_jpeg_scans); "
            f"encoders write 1 (baseline) or about 10 (progressive)"
        ) from None
    except JpegLayoutError as exc:
        raise UndecodableImageError(f"{name}: cannot read JPEG markers: {exc}") from exc
    return decode_work(layout, output_pixels)


def _not_allowed_or_undecodable(data: bytes, limits: ImageLimits, name: str) -> Exception:
    """Name the format if Pillow knows it (415), else say the bytes are not an image (422).

    Identification reads headers only; nothing outside the allowlist is ever decoded.
    """
    try:
        found = Image.open(io.BytesIO(data)).format
    except Exception:
        found = None
    allowed = describe_formats(limits.allowed_formats)
    if found is not None:
        return UnsupportedFormatError(f"{name}: image format {found} is not accepted; allowed: {allowed}")
    return UndecodableImageError(f"{name}: not a decodable image (allowed formats: {allowed})")


def decode_rgb(data: bytes, limits: ImageLimits, name: str, draft_size: int | None = None) -> Image.Image:
    """Decode to an RGB image with EXIF orientation applied (the first frame of animations).

    ``draft_size``: for JPEG, let libjpeg downscale by 2, 4 or 8 while decoding as long as
    the short side stays >= ``draft_size``; None decodes at full size.
    """
    image = open_image(data, limits, name)
    try:
        if draft_size is not None and image.format == "JPEG" and min(image.size) >= 2 * draft_size:
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"{name}: image exceeds the limit of {limits.max_image_pixels} pixels"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UndecodableImageError(f"{name}: cannot decode {image.format} image: {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """PIL ``convert("RGB")`` (as torchvision's loader), except that 16-bit greyscale keeps its range."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow opens 16-bit greyscale as I;16 (or I); convert("RGB") would clip it at 255.
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray(((wide + 128) // 257).astype(np.uint8))
    return image.convert("RGB")


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: short side to ``resize_size``, long side truncated."""
    if width <= height:
        return resize_size, int(resize_size * height / width)
    return int(resize_size * width / height), resize_size


def crop_box(width: int, height: int, spec: Preprocessing) -> tuple[tuple[int, int], tuple[int, int]]:
    """Size after ``Resize`` and the (left, top) of ``CenterCrop`` in it, as torchvision computes them."""
    new_width, new_height = resized_size(width, height, spec.resize_size)
    crop = spec.crop_size
    # torchvision: int(round((h - crop) / 2.0)); round() of a float is already an int
    return (new_width, new_height), (round((new_width - crop) / 2.0), round((new_height - crop) / 2.0))


# EXIF orientations that turn the image a quarter (ImageOps.exif_transpose swaps its sides).
_QUARTER_TURN_ORIENTATIONS = {5, 6, 7, 8}


def oriented_size(data: bytes, limits: ImageLimits, name: str) -> tuple[int, int]:
    """Width and height of the image as it is shown (its EXIF orientation applied), from its
    headers only: the frame of reference of :func:`crop_in_original`."""
    image = open_image(data, limits, name)
    width, height = image.size
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # a corrupt EXIF block: decoding ignores it too
        orientation = None
    return (height, width) if orientation in _QUARTER_TURN_ORIENTATIONS else (width, height)


def crop_in_original(width: int, height: int, spec: Preprocessing) -> tuple[float, float, float, float]:
    """The model's input crop as (left, top, width, height) in the pixels of a ``width`` x
    ``height`` original: the resize and centre crop of :func:`crop_box`, undone."""
    (new_width, new_height), (left, top) = crop_box(width, height, spec)
    scale_x, scale_y = width / new_width, height / new_height
    crop = spec.crop_size
    return left * scale_x, top * scale_y, crop * scale_x, crop * scale_y


def resize_and_crop(image: Image.Image, spec: Preprocessing, exact: bool = True) -> np.ndarray:
    """Resize the short side, centre crop, return uint8 HWC [crop, crop, 3].

    ``exact``: resize the whole image, then crop (torchvision, bit for bit). Otherwise resample
    only the crop's box of the source: the same filter over the same source pixels, so at most
    one level off on a few pixels, and 3x faster on a 640x427 photo. Images whose whole resized
    intermediate would be huge (a 1 x 200,000 strip becomes 256 x 51,200,000) always take the
    box path: its cost and memory are those of the crop.
    """
    (new_width, new_height), (left, top) = crop_box(image.width, image.height, spec)
    crop = spec.crop_size
    if (new_width, new_height) == image.size:
        return np.asarray(image)[top : top + crop, left : left + crop]
    resample = _RESAMPLE[spec.interpolation]
    if exact and new_width * new_height <= MAX_EXACT_INTERMEDIATE_PIXELS:
        resized = image.resize((new_width, new_height), resample)
        return np.asarray(resized)[top : top + crop, left : left + crop]
    scale_x, scale_y = image.width / new_width, image.height / new_height
    box = (left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y)
    return np.asarray(image.resize((crop, crop), resample, box=box))


def preprocess(
    data: bytes, spec: Preprocessing, limits: ImageLimits, name: str, exact: bool = False
) -> np.ndarray:
    """Bytes of one image -> uint8 array [crop, crop, 3] following the card.

    The serving path (``exact=False``) decodes large JPEGs in draft mode and resamples only the
    crop's box; ``exact=True`` is the export stage's eval transform bit for bit.
    """
    # Draft to no less than twice the resize size: libjpeg's DCT scaling does the cheap bulk
    # of the reduction (a 12-megapixel photo decodes ~10x faster) and the antialiased resize
    # still does the last 2x or more, which keeps predictions within the stated tolerance.
    draft_size = None if exact else DRAFT_FACTOR * spec.resize_size
    image = decode_rgb(data, limits, name, draft_size=draft_size)
    return resize_and_crop(image, spec, exact=exact)
