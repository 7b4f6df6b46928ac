"""Fixtures: the reliability tests' tiny models (six colour labels, faults on demand) and a
server with small limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.server import ServerProcess
from harness.tiny_model import tiny_card, write_model
from model_card import ModelCard
from tests.conftest import StartServer

# Six labels (top_k defaults to 5), the first three scored 10 x the mean red, green, blue.
LABELS = ["red", "green", "blue", "black", "white", "grey"]
WEIGHTS = 10 * np.eye(3, len(LABELS), dtype=np.float32)
BIAS = np.zeros(len(LABELS), np.float32)

# Limits small enough that the tests can hit each of them quickly.
LIMITS: dict[str, object] = {
    "max_upload_bytes": 1_000_000,
    "max_images_per_request": 4,
    "max_image_pixels": 40_000_000,
    "allowed_formats": "JPEG,PNG,WEBP,GIF",
    "max_batch_size": 8,
    "max_delay_ms": 2,
    "request_timeout_s": 3,
}


def reliability_card(crop_size: int = 32, resize_size: int | None = None, name: str = "tiny") -> ModelCard:
    return tiny_card(
        labels=LABELS,
        resize_size=resize_size or crop_size + 8,
        crop_size=crop_size,
        name=name,
        version="0.0.1",
        weights_source="none: softmax of 10 x the mean colour",
    )


def write_tiny_model(
    directory: Path, *, crop_size: int = 32, poison: bool = False, slow_matmuls: int = 0
) -> Path:
    """The reliability tests' model; ``poison`` and ``slow_matmuls`` inject faults (harness/tiny_model.py)."""
    card = reliability_card(crop_size, name="tiny-poison" if poison else "tiny")
    return write_model(directory, card, WEIGHTS, BIAS, poison=poison, slow_matmuls=slow_matmuls)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def poison_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("poison"), poison=True)


@pytest.fixture(scope="module")
def limited_server(start_module_server: StartServer, tiny_model: Path) -> ServerProcess:
    """One server per module with the small LIMITS."""
    return start_module_server(tiny_model, **LIMITS)
