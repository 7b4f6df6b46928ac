"""Real photos that ship inside installed packages (never downloads), with their ImageNet classes."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import skimage
import sklearn


def _skimage(name: str) -> Path:
    return Path(os.path.dirname(skimage.__file__)) / "data" / name


def _sklearn(name: str) -> Path:
    return Path(os.path.dirname(sklearn.__file__)) / "datasets" / "images" / name


def _matplotlib(name: str) -> Path:
    return Path(matplotlib.get_data_path()) / "sample_data" / name


# photo -> ImageNet labels of which at least one must be in the default model's top 5
PHOTOS: dict[str, tuple[Path, set[str]]] = {
    "chelsea": (_skimage("chelsea.png"), {"tabby", "tiger cat", "Egyptian cat"}),
    "coffee": (_skimage("coffee.png"), {"espresso", "cup", "coffee mug"}),
    "rocket": (_skimage("rocket.jpg"), {"missile", "projectile", "space shuttle"}),
    "motorcycle": (_skimage("motorcycle_left.png"), {"moped", "motor scooter"}),
    "camera": (_skimage("camera.png"), {"tripod", "reflex camera"}),
    "china": (_sklearn("china.jpg"), {"palace", "monastery", "bell cote"}),
    "flower": (_sklearn("flower.jpg"), {"daisy"}),
    "grace_hopper": (_matplotlib("grace_hopper.jpg"), {"military uniform", "academic gown", "mortarboard"}),
}
