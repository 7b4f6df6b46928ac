"""Fixtures every test folder shares: the tiny colour model, the real default model, and real
server processes started the one way tests start them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.server import ServerProcess, settings_env
from harness.tiny_model import tiny_card, write_model
from tests.app.default_model import default_model_path  # noqa: F401  (a fixture)

StartServer = Callable[..., ServerProcess]
READY_TIMEOUT_S = 120.0  # the default model's warm-up on a busy 2-core machine


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny colour model of ``harness.tiny_model`` with its default card."""
    return write_model(tmp_path_factory.mktemp("tiny"), tiny_card())


def _servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    servers: list[ServerProcess] = []

    def start(model: Path, *, ready: bool = True, **settings: object) -> ServerProcess:
        # None of the developer's own IMGSERVE_* reach the server: only what the test says.
        server = ServerProcess(
            settings_env(model, settings),
            tmp_path_factory.mktemp("server") / "server.log",
            inherit_settings=False,
        )
        servers.append(server)
        if ready:
            server.start(READY_TIMEOUT_S)
        return server

    yield start
    errors = []
    for server in servers:
        try:
            server.stop()
        except RuntimeError as exc:  # it ignored SIGTERM: a bug in the server, reported here
            errors.append(str(exc))
    assert not errors, errors


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """``start_server(model, ready=True, **settings)``: a real server on 127.0.0.1 with
    ``IMGSERVE_<NAME>=value`` for each setting (``max_batch_size=4``), ready for traffic;
    ``ready=False`` returns it unspawned, for a start that must fail (``server.spawn()``).
    Every server it started is stopped (SIGTERM) when the test ends."""
    yield from _servers(tmp_path_factory)


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """``start_server`` for servers that a whole module shares; stopped after its last test."""
    yield from _servers(tmp_path_factory)
