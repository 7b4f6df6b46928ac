"""Real photos for calibrating and gating reduced-precision variants, split by photo.

A model that was exported from a training run calibrates on its own training split and is
judged on its validation split (:func:`labelled_crops`). The default ImageNet model has no
data here, so it uses the real photos that ship with installed packages (scikit-image's
``data``, scikit-learn's ``load_sample_images``, matplotlib's ``sample_data``): a fixed list
of named photos, each assigned to exactly one role, calibration or gate, so no pixel of a
gate photo is ever seen while calibrating (random crops of one photo are not independent
samples: splitting crops would leak).

Crops are drawn as a user's photos come: a random area of 35-100% of the photo at an aspect
ratio of 3/4 to 4/3, mirrored half the time, then the model's own eval transform (resize,
centre crop) from its card, as uint8 NHWC pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model_card import Preprocessing

from .data import create_eval_transform, load_rgb, load_split

# Each sample photo once (skimage's cat() is chelsea(); the motorcycle pair is one scene, left
# image only). Grey photos are photos too: the model sees them as RGB with equal channels.
CALIBRATION_PHOTOS = (
    "skimage:astronaut",
    "skimage:coffee",
    "skimage:hubble_deep_field",
    "skimage:camera",
    "skimage:gravel",
    "sklearn:flower.jpg",
    "skimage:page",
)
GATE_PHOTOS = (
    "skimage:chelsea",
    "skimage:rocket",
    "skimage:motorcycle_left",
    "skimage:immunohistochemistry",
    "skimage:retina",
    "skimage:coins",
    "skimage:moon",
    "skimage:clock",
    "skimage:brick",
    "skimage:grass",
    "skimage:text",
    "sklearn:china.jpg",
    "matplotlib:grace_hopper.jpg",
)
MIN_AREA, MAX_AREA = 0.35, 1.0
MIN_ASPECT, MAX_ASPECT = 3 / 4, 4 / 3


class PhotoError(RuntimeError):
    """A sample photo cannot be loaded (its package is not installed)."""


@dataclass(frozen=True)
class CropSet:
    """uint8 NHWC crops, where they came from, and labels when the data has them."""

    pixels: np.ndarray
    source: str
    photos: tuple[str, ...]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pixels)

    def describe(self) -> dict[str, object]:
        """What a model card records of the set."""
        return {"source": self.source, "crops": len(self), "photos": list(self.photos)}


def load_sample_photo(name: str) -> Image.Image:
    """One named photo (``package:name``) as RGB."""
    package, _, item = name.partition(":")
    try:
        if package == "skimage":
            array = _skimage_photo(item)
        elif package == "sklearn":
            import sklearn.datasets

            return load_rgb(Path(sklearn.datasets.__file__).parent / "images" / item)
        elif package == "matplotlib":
            import matplotlib

            return load_rgb(Path(matplotlib.get_data_path()) / "sample_data" / item)
        else:
            raise PhotoError(f"unknown photo source {package!r} in {name!r}")
    except (ImportError, OSError) as exc:
        raise PhotoError(f"sample photo {name!r} cannot be loaded: {exc}") from exc
    image = Image.fromarray(array)
    return image.convert("RGB")


def _skimage_photo(item: str) -> np.ndarray:
    import skimage.data

    if item == "motorcycle_left":
        left, _right, _disparity = skimage.data.stereo_motorcycle()  # type: ignore[no-untyped-call]
        return np.asarray(left)
    array: np.ndarray = getattr(skimage.data, item)()
    return array


def random_crop(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random 35-100% area, 3/4-4/3 aspect crop, mirrored half the time."""
    area = photo.width * photo.height * rng.uniform(MIN_AREA, MAX_AREA)
    aspect = math.exp(rng.uniform(math.log(MIN_ASPECT), math.log(MAX_ASPECT)))
    width = min(photo.width, round(math.sqrt(area * aspect)))
    height = min(photo.height, round(math.sqrt(area / aspect)))
    left = int(rng.integers(0, photo.width - width + 1))
    top = int(rng.integers(0, photo.height - height + 1))
    crop = photo.crop((left, top, left + width, top + height))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


def _to_pixels(transform: Callable[[Image.Image], object], images: Sequence[Image.Image]) -> np.ndarray:
    tensors = [transform(image) for image in images]
    return np.stack([t.permute(1, 2, 0).numpy() for t in tensors])  # type: ignore[attr-defined]


def photo_crops(
    photo_names: Sequence[str], total: int, preprocessing: Preprocessing, seed: int, source: str
) -> CropSet:
    """``total`` crops spread evenly over ``photo_names`` (the first photos get one more)."""
    if not photo_names:
        raise PhotoError("no photos to crop")
    transform = create_eval_transform(preprocessing)
    rng = np.random.default_rng(seed)
    images: list[Image.Image] = []
    for index, name in enumerate(photo_names):
        photo = load_sample_photo(name)
        count = total // len(photo_names) + (1 if index < total % len(photo_names) else 0)
        images.extend(random_crop(photo, rng) for _ in range(count))
    return CropSet(_to_pixels(transform, images), source, tuple(photo_names))


def sample_photo_crops(
    preprocessing: Preprocessing, *, calibration_crops: int, tuning_crops: int, gate_crops: int, seed: int = 0
) -> tuple[CropSet, CropSet, CropSet]:
    """Calibration and tuning crops (other crops of the same photos), and gate crops from a
    disjoint set of photos."""
    source = "sample photos of installed packages"
    calibration = photo_crops(CALIBRATION_PHOTOS, calibration_crops, preprocessing, seed, source)
    tuning = photo_crops(CALIBRATION_PHOTOS, tuning_crops, preprocessing, seed + 1, source)
    gate = photo_crops(GATE_PHOTOS, gate_crops, preprocessing, seed + 2, source)
    return calibration, tuning, gate


def labelled_crops(
    split_path: Path,
    preprocessing: Preprocessing,
    labels: Sequence[str],
    *,
    calibration_images: int,
    tuning_images: int,
    seed: int = 0,
) -> tuple[CropSet, CropSet, CropSet]:
    """From a training run's split.json: calibration and tuning images from its training split
    (disjoint random samples), the gate on its whole validation split, with labels."""
    split = load_split(split_path)
    transform = create_eval_transform(preprocessing)
    index = {label: i for i, label in enumerate(labels)}
    missing = sorted(set(split.classes) - set(index))
    if missing:
        raise PhotoError(f"classes {missing} of {split_path} are not labels of the model")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split.train))
    source = f"training split of {split_path}"

    def train_set(indices: np.ndarray) -> CropSet:
        images = [load_rgb(split.train[int(i)][0]) for i in indices]
        return CropSet(_to_pixels(transform, images), source, ())

    calibration = train_set(order[:calibration_images])
    tuning = train_set(order[calibration_images : calibration_images + tuning_images])
    gate_pixels = _to_pixels(transform, [load_rgb(path) for path, _ in split.val])
    gate_labels = np.array([index[split.classes[target]] for _, target in split.val])
    gate = CropSet(gate_pixels, f"validation split of {split_path}", (), gate_labels)
    return calibration, tuning, gate
