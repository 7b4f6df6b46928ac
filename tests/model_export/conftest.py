"""Fixtures for the export stage: real photos and real digits, written to temporary folders.

Nothing here downloads: the photos ship with scikit-image, the digits with scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from model_export import sample_data

# CI and dev boxes share 2 cores with other suites: with 2 threads OpenMP spin-waits make
# small convolutions ~10x slower under load than with 1 (measured), so tests use one.
torch.set_num_threads(1)

DIGITS_SIDE_PX = 32
DIGITS_TRAIN_ARGS = ["--hflip-prob", "0", "--min-scale", "0.8", "--shear-deg", "5", "--workers", "0"]


def write_digits_image_folder(
    root: Path, side_px: int = DIGITS_SIDE_PX, limit_per_class: int | None = None
) -> Path:
    """scikit-learn's 1,797 8x8 handwritten digits as an ImageFolder of RGB PNGs (``root/0/…``)."""
    return sample_data.write_digits_image_folder(root, side_px, limit_per_class)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_image_folder(tmp_path_factory.mktemp("digits") / "digits")


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    from skimage import data

    return {"chelsea": Image.fromarray(data.chelsea()), "coffee": Image.fromarray(data.coffee())}


@pytest.fixture(scope="session")
def cnn_run(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """simple_cnn trained on the digits at 32 px (8 epochs): a run folder with best.pt and split.json."""
    from model_export.cli import main

    run = tmp_path_factory.mktemp("cnn_run")
    assert main([
        "--threads", "1", "train", "--data", str(digits_dir), "--arch", "simple_cnn",
        "--crop-size", "32", "--resize-size", "32",
        "--epochs", "8", "--lr", "2e-3", "--output-dir", str(run), *DIGITS_TRAIN_ARGS,
    ]) == 0  # fmt: skip
    return run
