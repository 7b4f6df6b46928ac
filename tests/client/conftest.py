"""Fixtures: a real server with a tiny queue and an API key, and folders of real photos."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.server import ServerProcess
from tests.conftest import StartServer

from .photos import make_photo_folder

API_KEY = "client-test-key"
QUEUE = 4


@pytest.fixture(scope="module")
def busy_server(default_model_path: Path, start_module_server: StartServer) -> ServerProcess:
    """The default model behind a queue of 4 images (and so at most 4 per request), with a key."""
    return start_module_server(
        default_model_path,
        log_level="info",
        max_queue_images=QUEUE,
        max_images_per_request=QUEUE,
        api_keys=API_KEY,
    )


@pytest.fixture(scope="module")
def photos_200(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_photo_folder(tmp_path_factory.mktemp("photos"), 200)
