from __future__ import annotations

from pathlib import Path

import pytest

from harness.tiny_model import tiny_card, write_model
from tests.app.default_model import default_model_path  # noqa: F401  (a fixture)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("tiny"), tiny_card())
