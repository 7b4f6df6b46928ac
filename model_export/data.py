"""ImageFolder loading, the train/val split, and the train and eval transform presets.

Images travel through the data pipeline as uint8 CHW tensors: the float conversion and the
mean/std normalisation happen in the model wrapper (:func:`normalize_uint8`), on the training
device and inside the exported ONNX graph alike, so what is trained is what is served.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T
from tqdm import tqdm

from model_card import Preprocessing

from .config import AugmentConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
SPLIT_FILENAME = "split.json"


class DatasetError(ValueError):
    """The dataset folder cannot be used as given; the message says what to fix."""


class SkippedFileWarning(UserWarning):
    """A file in the dataset tree was not a readable image and was left out."""


@dataclass
class ImageFolderScan:
    """The readable images of one ImageFolder tree, and what was skipped."""

    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def class_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for _, target in self.samples:
            counts[self.classes[target]] += 1
        return counts


@dataclass
class DatasetSplit:
    """Training and validation samples over one class list, and where they came from."""

    classes: list[str]
    train: list[tuple[Path, int]]
    val: list[tuple[Path, int]]
    source: dict[str, Any]
    skipped_files: int = 0

    def summary(self) -> dict[str, Any]:
        """The dataset part of the model card."""
        return {
            **self.source,
            "num_classes": len(self.classes),
            "train_images": len(self.train),
            "val_images": len(self.val),
            "train_per_class": _counts(self.train, self.classes),
            "val_per_class": _counts(self.val, self.classes),
            "skipped_files": self.skipped_files,
        }


def _counts(samples: Sequence[tuple[Path, int]], classes: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(classes, 0)
    for _, target in samples:
        counts[classes[target]] += 1
    return counts


def _check_image(path: Path) -> str | None:
    """Why ``path`` is not a usable image, or None. Decodes it (JPEG at 1/8 scale, cheaply)."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file extension ({path.suffix or 'none'})"
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


def scan_image_folder(root: Path, classes: list[str] | None = None) -> ImageFolderScan:
    """Read an ImageFolder tree (one sub-folder per class), skipping unreadable files with a warning.

    ``classes`` fixes the class list (a validation tree must use the training tree's classes).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise DatasetError(
                f"dataset folder {root} has {len(classes)} class folder(s) {classes}; "
                "need at least 2, one sub-folder of images per class"
            )
    elif sorted(found) != sorted(classes):
        raise DatasetError(
            f"dataset folder {root} has classes {found}, expected the training classes {classes}"
        )
    samples: list[tuple[Path, int]] = []
    skipped: list[tuple[Path, str]] = []
    files = [
        (path, index)
        for index, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    ]
    for path, index in tqdm(
        files, desc=f"scan {root.name}", unit="file", leave=False, disable=len(files) < 2000
    ):
        reason = _check_image(path)
        if reason is None:
            samples.append((path, index))
        else:
            skipped.append((path, reason))
            warnings.warn(f"skipping {path}: {reason}", SkippedFileWarning, stacklevel=2)
    scan = ImageFolderScan(root=root, classes=classes, samples=samples, skipped=skipped)
    empty = [name for name, count in scan.class_counts().items() if count == 0]
    if empty:
        raise DatasetError(
            f"class folder(s) {empty} in {root} have no readable images; remove them or add images"
        )
    return scan


def split_stratified(
    scan: ImageFolderScan, val_ratio: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Per-class seeded shuffle; each class gives round(n * val_ratio) images (at least 1) to validation."""
    if not 0.0 < val_ratio < 1.0:
        raise DatasetError(f"--val-ratio must be between 0 and 1 (exclusive), got {val_ratio}")
    rng = np.random.default_rng(seed)
    train: list[tuple[Path, int]] = []
    val: list[tuple[Path, int]] = []
    for index, name in enumerate(scan.classes):
        members = [s for s in scan.samples if s[1] == index]
        num_val = max(1, round(len(members) * val_ratio))
        if len(members) - num_val < 1:
            raise DatasetError(
                f"class {name!r} has {len(members)} image(s), too few to split with --val-ratio {val_ratio}: "
                "each class needs at least one training and one validation image"
            )
        order = rng.permutation(len(members))
        val += [members[i] for i in order[:num_val]]
        train += [members[i] for i in order[num_val:]]
    return train, val


def _relative(samples: Sequence[tuple[Path, int]], root: Path) -> list[list[Any]]:
    return [[path.relative_to(root).as_posix(), target] for path, target in samples]


def save_split(split: DatasetSplit, path: Path) -> None:
    root = Path(split.source["root"])
    payload = {
        **split.source,
        "classes": split.classes,
        "skipped_files": split.skipped_files,
        "train": _relative(split.train, root),
        "val": _relative(split.val, root),
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")


def load_split(path: Path) -> DatasetSplit:
    """Re-create a saved split (``split.json``); files that have since vanished are an error."""
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise DatasetError(f"split file {path} does not exist") from exc
    root = Path(payload["root"])

    def samples(key: str) -> list[tuple[Path, int]]:
        return [(root / rel, int(target)) for rel, target in payload[key]]

    split = DatasetSplit(
        classes=list(payload["classes"]),
        train=samples("train"),
        val=samples("val"),
        source={k: payload[k] for k in ("root", "layout", "val_ratio", "seed") if k in payload},
        skipped_files=int(payload.get("skipped_files", 0)),
    )
    missing = [str(p) for p, _ in split.train + split.val if not p.is_file()]
    if missing:
        raise DatasetError(
            f"split {path} names {len(missing)} file(s) that no longer exist, e.g. {missing[0]}"
        )
    return split


def load_dataset_split(data_dir: Path, val_ratio: float, seed: int) -> DatasetSplit:
    """``data_dir/train`` + ``data_dir/val`` when both exist, else one tree split by ``val_ratio``.

    Sample paths are absolute, whatever ``data_dir`` is: the split file stores them relative to
    the resolved root, and checkpoints name validation images that ``export`` must find from
    any working directory.
    """
    if not Path(data_dir).is_dir():
        raise DatasetError(f"dataset folder {data_dir} does not exist or is not a folder")
    data_dir = Path(data_dir).resolve()
    if (data_dir / "train").is_dir() and (data_dir / "val").is_dir():
        train_scan = scan_image_folder(data_dir / "train")
        val_scan = scan_image_folder(data_dir / "val", classes=train_scan.classes)
        return DatasetSplit(
            classes=train_scan.classes,
            train=train_scan.samples,
            val=val_scan.samples,
            source={"root": str(data_dir), "layout": "train/val folders"},
            skipped_files=len(train_scan.skipped) + len(val_scan.skipped),
        )
    scan = scan_image_folder(data_dir)
    train, val = split_stratified(scan, val_ratio, seed)
    return DatasetSplit(
        classes=scan.classes,
        train=train,
        val=val,
        source={
            "root": str(data_dir),
            "layout": "single tree",
            "val_ratio": val_ratio,
            "seed": seed,
        },
        skipped_files=len(scan.skipped),
    )


# --------------------------------------------------------------------------------------------
# transforms


def _interpolation(name: str) -> T.InterpolationMode:
    return T.InterpolationMode(name)


def create_eval_transform(preprocessing: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> uint8 CHW tensor: exactly ``Resize(resize_size)`` + ``CenterCrop(crop_size)``.

    The server replicates this (docs/ARCHITECTURE.md); keep it free of anything else.
    """
    transform: Callable[[Image.Image], torch.Tensor] = T.Compose(
        [
            T.Resize(preprocessing.resize_size, interpolation=_interpolation(preprocessing.interpolation)),
            T.CenterCrop(preprocessing.crop_size),
            T.PILToTensor(),
        ]
    )
    return transform


def create_train_transform(
    preprocessing: Preprocessing, augment: AugmentConfig
) -> Callable[[Image.Image], torch.Tensor]:
    """Random resized crop, shear/rotation, flip and colour jitter -> uint8 CHW tensor."""
    interpolation = _interpolation(preprocessing.interpolation)
    steps: list[Callable[..., Any]] = [
        T.RandomResizedCrop(
            preprocessing.crop_size, scale=(augment.min_scale, 1.0), interpolation=interpolation
        )
    ]
    if augment.shear_deg > 0 or augment.rotation_deg > 0:
        steps.append(
            T.RandomAffine(degrees=augment.rotation_deg, shear=augment.shear_deg, interpolation=interpolation)
        )
    if augment.hflip_prob > 0:
        steps.append(T.RandomHorizontalFlip(augment.hflip_prob))
    if augment.color_jitter > 0:
        jitter = augment.color_jitter
        steps.append(T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    steps.append(T.PILToTensor())
    transform: Callable[[Image.Image], torch.Tensor] = T.Compose(steps)
    return transform


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class ImageListDataset(Dataset[tuple[torch.Tensor, int]]):
    """(path, class index) samples -> (uint8 CHW tensor, class index)."""

    def __init__(
        self, samples: Sequence[tuple[Path, int]], transform: Callable[[Image.Image], torch.Tensor]
    ) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        return self.transform(load_rgb(path)), target


def normalize_uint8(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float, scaled by 1/255 and normalised; ``mean``/``std`` are (1, 3, 1, 1) in [0,
    1] units.
    """
    return (pixels.float() / 255.0 - mean) / std


def mean_std_tensors(
    preprocessing: Preprocessing, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std
