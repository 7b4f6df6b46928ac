from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_client(tiny_model_path: Path) -> Callable[..., Any]:
    """make_client(**settings): an in-process app on the tiny model (test_api.py has its own)."""

    @contextmanager
    def make(**overrides: Any) -> Iterator[TestClient]:
        overrides.setdefault("grpc_port", 0)  # in-process apps need no gRPC port
        settings = Settings(model_path=tiny_model_path, decode_threads=1, warmup_batch_sizes="1", **overrides)
        with TestClient(create_app(settings)) as client:
            yield client

    return make
