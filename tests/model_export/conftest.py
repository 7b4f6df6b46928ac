"""Fixtures for the export stage: real photos and real digits, written to temporary folders.

Nothing here downloads: the photos ship with scikit-image, the digits with scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# CI and dev boxes share 2 cores with other suites: with 2 threads OpenMP spin-waits make
# small convolutions ~10x slower under load than with 1 (measured), so tests use one.
torch.set_num_threads(1)

DIGITS_SIDE_PX = 32


def write_digits_image_folder(
    root: Path, side_px: int = DIGITS_SIDE_PX, limit_per_class: int | None = None
) -> Path:
    """scikit-learn's 1,797 8x8 handwritten digits as an ImageFolder of RGB PNGs (``root/0/…``,
    ``root/9/…``).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    for index, (image, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        target = int(target)
        if limit_per_class is not None and counts.get(target, 0) >= limit_per_class:
            continue
        counts[target] = counts.get(target, 0) + 1
        # Values are 0..16 ink; white background, dark ink, like a scanned page.
        gray = (255 - image * (255 / 16)).astype(np.uint8)
        pil = (
            Image.fromarray(gray, mode="L")
            .resize((side_px, side_px), Image.Resampling.BILINEAR)
            .convert("RGB")
        )
        folder = root / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        pil.save(folder / f"{index:04d}.png")
    return root


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_image_folder(tmp_path_factory.mktemp("digits") / "digits")


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    from skimage import data

    return {"chelsea": Image.fromarray(data.chelsea()), "coffee": Image.fromarray(data.coffee())}
