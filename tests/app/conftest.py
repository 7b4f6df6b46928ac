from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from model_export.tiny import tiny_card, write_model
from tests.app.default_model import default_model_path  # noqa: F401  (a fixture)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("tiny"), tiny_card())


@pytest.fixture
def make_client(tiny_model_path: Path) -> Callable[..., Any]:
    """make_client(**settings): an in-process app on the tiny model (test_api.py has its own)."""

    @contextmanager
    def make(**overrides: Any) -> Iterator[TestClient]:
        settings = Settings(model_path=tiny_model_path, decode_threads=1, warmup_batch_sizes="1", **overrides)
        with TestClient(create_app(settings)) as client:
            yield client

    return make
