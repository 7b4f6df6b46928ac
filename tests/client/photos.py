"""Folders of real photos for the client's tests and benchmark, made at run time (never committed).

Every photo is a crop, resize and re-encode of a photo that ships in an installed package
(``tests.app.photos``: scikit-image, scikit-learn, matplotlib), so no two files are the same
bytes and the server decodes real JPEG, PNG and WebP. And the bad files a camera dump holds.
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

from PIL import Image

from tests.app.photos import PHOTOS

FORMATS = (("JPEG", "jpg"), ("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"))


def load_sources() -> list[tuple[str, Image.Image]]:
    return [(name, Image.open(path).convert("RGB")) for name, (path, _) in PHOTOS.items()]


def make_photo_folder(folder: Path, count: int, seed: int = 0, max_side: int = 640) -> list[Path]:
    """``count`` photos in ``folder``: each a random crop (60-100% of each side) of a source
    photo, resized so its long side is 160..``max_side`` px, saved as JPEG (quality 70-95),
    PNG or WebP."""
    rng = random.Random(seed)
    sources = load_sources()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name, image = sources[i % len(sources)]
        width, height = image.size
        crop_w, crop_h = int(width * rng.uniform(0.6, 1.0)), int(height * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
        crop = image.crop((left, top, left + crop_w, top + crop_h))
        scale = rng.randint(160, max_side) / max(crop.size)
        crop = crop.resize(
            (max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.Resampling.BICUBIC
        )
        fmt, ext = FORMATS[rng.randrange(len(FORMATS))]
        path = folder / f"{i:04d}-{name}.{ext}"
        params: dict[str, int] = {"quality": rng.randint(70, 95)} if fmt in ("JPEG", "WEBP") else {}
        if fmt == "WEBP":
            params["method"] = 0  # the fastest encoder: the test makes hundreds
        crop.save(path, format=fmt, **params)
        paths.append(path)
    return paths


def corrupt_jpeg(good_jpeg: bytes) -> bytes:
    """A JPEG cut off half way through its image data (a copy interrupted)."""
    return good_jpeg[: len(good_jpeg) // 2]


def flat_png(width: int, height: int, colour: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    """A real RGB PNG of one colour: ``width`` x ``height`` pixels in a few hundred KB.

    Written row by row with PNG's "Up" filter (every row after the first is all zeros), so
    making a 50-megapixel file costs a fraction of a second and no 150 MB buffer.
    """
    first = b"\x00" + bytes(colour) * width
    rest = b"\x02" + b"\x00" * (3 * width)
    compressor = zlib.compressobj(6)
    idat = compressor.compress(first) + b"".join(compressor.compress(rest) for _ in range(height - 1))
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
