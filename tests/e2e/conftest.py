from __future__ import annotations

from pathlib import Path

import pytest

from harness.server import ServerProcess
from tests.conftest import StartServer


@pytest.fixture(scope="module")
def default_server(
    start_module_server: StartServer,
    default_model_path: Path,
) -> ServerProcess:
    """The real server with the default model and default batching settings; info-level logs,
    which the tests read."""
    return start_module_server(default_model_path, log_level="info")
