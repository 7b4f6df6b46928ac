"""Fixtures: tiny models written to temporary folders, and real server processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from harness.server import ServerProcess
from harness.tiny_model import tiny_card, write_model
from model_card import ModelCard

StartServer = Callable[..., ServerProcess]

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


def make_server(log_dir: Path, model: Path, **settings: object) -> ServerProcess:
    """A server (not started) with IMGSERVE_* settings given without the prefix."""
    env = {"IMGSERVE_MODEL_PATH": str(model)}
    env |= {f"IMGSERVE_{key.upper()}": str(value) for key, value in settings.items()}
    return ServerProcess(env, log_dir / "server.log")


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


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[StartServer]:
    """start_server(model=None, ready=True, **settings): servers stopped when the test ends."""
    servers: list[ServerProcess] = []

    def start(model: Path | None = None, ready: bool = True, **settings: object) -> ServerProcess:
        server = make_server(tmp_path_factory.mktemp("server"), model or tiny_model, **settings)
        servers.append(server)
        if ready:
            server.start()
        return server

    yield start
    errors = []
    for server in servers:
        try:
            server.stop()
        except RuntimeError as exc:
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    """One server per module with the small LIMITS."""
    with make_server(tmp_path_factory.mktemp("limited"), tiny_model, **LIMITS) as server:
        yield server
