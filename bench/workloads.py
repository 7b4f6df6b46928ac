"""The benchmark's images and request bodies, made from real photos that ship in installed packages.

Nothing is downloaded. The sources are scikit-learn's ``load_sample_images`` (china.jpg,
flower.jpg, 640x427), scikit-image's ``data`` (chelsea, coffee, astronaut) and matplotlib's
``sample_data/grace_hopper.jpg``. Each workload cycles through several distinct photos so that
no cache (the server's or the CPU's) sees the same bytes twice in a row.

- ``jpeg_500x375``: each photo resized (short side to 375, bicubic) and centre-cropped to
  500x375, saved as JPEG quality 90 (a typical web image, the ImageNet validation size).
- ``jpeg_12mp``: a photo *upscaled* (bicubic) to 4000x3000, JPEG quality 90. Upscaled, so its
  detail is softer than a real 12-MP phone photo and the file is smaller (~1-2 MB instead of
  3-5 MB); decode cost is set by the pixel count, which is the real one.
- ``png_512``: each photo at 512x512 as PNG (lossless: decode cost is zlib, not DCT).
- ``multi8_500x375``: one multipart request carrying 8 of the 500x375 JPEGs.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from harness.loadgen import save_workload

BOUNDARY_PREFIX = "benchboundary"


def load_source_photos() -> list[tuple[str, Image.Image]]:
    """The real photos we build workloads from, as RGB PIL images."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos: list[tuple[str, Image.Image]] = []
    sample = load_sample_images()
    for filename, array in zip(sample.filenames, sample.images, strict=True):
        photos.append((Path(filename).stem, Image.fromarray(array)))
    for name in ("chelsea", "coffee", "astronaut"):
        photos.append((name, Image.fromarray(getattr(skimage.data, name)())))
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photos.append(("grace_hopper", Image.open(f).convert("RGB")))
    return photos


def resize_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale so the image covers width x height, then centre-crop to exactly that."""
    scale = max(width / image.width, height / image.height)
    scaled = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    left = (scaled.width - width) // 2
    top = (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=90)
    else:
        image.save(buffer, fmt)
    return buffer.getvalue()


@dataclass(frozen=True)
class ImageSet:
    """Encoded images of one kind, and the MIME type they are sent with."""

    name: str
    content_type: str
    images: list[bytes]
    pixel_size: tuple[int, int]
    note: str


def build_image_sets(out_dir: Path, *, smoke: bool = False) -> dict[str, ImageSet]:
    """Encode every image set, write the files under ``out_dir`` (for inspection), return them."""
    photos = load_source_photos()
    if smoke:
        photos = photos[:2]
    builders: list[tuple[str, str, str, tuple[int, int], int, str]] = [
        ("jpeg_500x375", "JPEG", "image/jpeg", (500, 375), len(photos), "resized+cropped real photo"),
        (
            "jpeg_12mp",
            "JPEG",
            "image/jpeg",
            (4000, 3000),
            1 if smoke else 3,
            "real photo UPSCALED to 4000x3000",
        ),
        ("png_512", "PNG", "image/png", (512, 512), len(photos), "resized+cropped real photo, lossless"),
    ]
    sets: dict[str, ImageSet] = {}
    for name, fmt, mime, (width, height), count, note in builders:
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        encoded = []
        for photo_name, photo in photos[:count]:
            data = encode(resize_crop(photo, width, height), fmt)
            (folder / f"{photo_name}.{fmt.lower().replace('jpeg', 'jpg')}").write_bytes(data)
            encoded.append(data)
        sets[name] = ImageSet(name, mime, encoded, (width, height), note)
    return sets


def multipart_body(parts: list[tuple[bytes, str]], field_name: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one part per image; returns (body, content_type)."""
    boundary = f"{BOUNDARY_PREFIX}{uuid.uuid4().hex}"
    chunks = []
    for index, (data, mime) in enumerate(parts):
        ext = mime.split("/")[1]
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
            f'filename="img{index}.{ext}"\r\nContent-Type: {mime}\r\n\r\n'.encode()
        )
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


@dataclass(frozen=True)
class Workload:
    """What one load-generator point sends: a cycle of pre-built request bodies."""

    name: str
    images_per_request: int
    bodies: list[tuple[bytes, str]] = field(repr=False)  # (body, content_type)
    description: str = ""

    @property
    def mean_body_bytes(self) -> float:
        return float(np.mean([len(body) for body, _ in self.bodies]))

    def to_json(self, path: Path) -> None:
        """Write the bodies to ``path`` (a folder) so the load generator process can read them."""
        save_workload(path, self.name, self.images_per_request, self.bodies)


def _single(image_set: ImageSet, multipart: bool) -> Workload:
    if multipart:
        bodies = [multipart_body([(data, image_set.content_type)]) for data in image_set.images]
    else:
        bodies = [(data, image_set.content_type) for data in image_set.images]
    kind = "multipart" if multipart else "raw body"
    return Workload(image_set.name, 1, bodies, f"1 image/request ({kind}), {image_set.note}")


def _multi(image_set: ImageSet, images_per_request: int) -> Workload:
    images = image_set.images
    bodies = []
    for start in range(len(images)):
        chosen = [images[(start + i) % len(images)] for i in range(images_per_request)]
        bodies.append(multipart_body([(data, image_set.content_type) for data in chosen]))
    return Workload(
        f"multi{images_per_request}_{image_set.name.removeprefix('jpeg_')}",
        images_per_request,
        bodies,
        f"{images_per_request} images/request (multipart), {image_set.note}",
    )


WORKLOAD_FACTORIES: dict[str, Callable[[dict[str, ImageSet]], Workload]] = {
    # multipart is what browsers and the naive baseline's clients send: the fair default
    "jpeg_500x375": lambda sets: _single(sets["jpeg_500x375"], multipart=True),
    "jpeg_12mp": lambda sets: _single(sets["jpeg_12mp"], multipart=True),
    "png_512": lambda sets: _single(sets["png_512"], multipart=True),
    "multi8_500x375": lambda sets: _multi(sets["jpeg_500x375"], 8),
    "raw_500x375": lambda sets: _single(sets["jpeg_500x375"], multipart=False),
}


def build_workloads(sets: dict[str, ImageSet], names: list[str]) -> dict[str, Workload]:
    return {name: WORKLOAD_FACTORIES[name](sets) for name in names}
