"""Real server processes with the v2 front ends on, and the helpers the v2 tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.server import ServerProcess, free_port, settings_env

TINY = "tiny-rgb"  # tiny_card()'s name
DEFAULT = "efficientnet_lite0-imagenet1k"


class V2Server:
    """A running server and the addresses of its HTTP and gRPC ports."""

    def __init__(self, process: ServerProcess, grpc_port: int) -> None:
        self.process = process
        self.http = process.base_url
        self.http_address = f"127.0.0.1:{process.port}"
        self.grpc_address = f"127.0.0.1:{grpc_port}"

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by its name and labels, e.g. 'imgserve_images_total{protocol="rest"}'."""
        samples = {}
        for line in httpx.get(f"{self.http}/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                samples[key] = float(value)
        return samples


def start_v2_server(model_path: Path, log_dir: Path, **settings: Any) -> tuple[int, ServerProcess]:
    """A server (started by ``with``) with gRPC on a free port and info-level logs; none of the
    developer's own IMGSERVE_* settings."""
    grpc_port = free_port()
    env = settings_env(model_path, {"grpc_port": grpc_port, "log_level": "info", **settings})
    server = ServerProcess(env, log_dir / "server.log", inherit_settings=False)
    return grpc_port, server


@pytest.fixture(scope="module")
def default_v2(
    default_model_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[V2Server]:
    """The default model (EfficientNet-Lite0, ImageNet) with default settings and gRPC on."""
    grpc_port, server = start_v2_server(default_model_path, tmp_path_factory.mktemp("logs"))
    with server as process:
        yield V2Server(process, grpc_port)


@pytest.fixture(scope="module")
def tiny_v2(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Server]:
    """A tiny model with small limits, for the error cases."""
    grpc_port, server = start_v2_server(
        tiny_model_path,
        tmp_path_factory.mktemp("logs"),
        max_upload_bytes=200_000,
        max_images_per_request=4,
        max_image_pixels=1_000_000,
        decode_threads=1,
        warmup_batch_sizes=1,
    )
    with server as process:
        yield V2Server(process, grpc_port)
