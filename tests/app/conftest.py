from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.default_model import default_model_path  # noqa: F401  (a fixture)
from tests.app.tiny_models import make_card, write_model


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("tiny"), make_card())
