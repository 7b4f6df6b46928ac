from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.server import ServerProcess
from harness.tiny_model import tiny_card, write_model
from tests.app.default_model import default_model_path  # noqa: F401  (a fixture)
from tests.e2e.server import run_server


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("tiny"), tiny_card())


@pytest.fixture(scope="module")
def default_server(
    default_model_path: Path,  # noqa: F811  (the imported fixture)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """The real server with the default model and default batching settings."""
    with run_server(default_model_path, tmp_path_factory.mktemp("logs")) as server:
        yield server
