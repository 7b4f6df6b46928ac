"""Real nginx with the shipped docker/nginx/grpc.conf (and default.conf, which it needs) in front
of two real server processes' gRPC ports: tritonclient's gRPC calls over one connection are
spread over both replicas, and the health service answers through it.

Only `server app:8001` and `listen 8001` of grpc.conf are rewritten to the test's ports.
Skipped when there is no nginx binary (CI installs it: apt-get install nginx-light).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.nginx import find_nginx, write_local_config
from harness.server import REPO_ROOT, free_port
from tests.reliability import corpus
from tests.v2.conftest import TINY, V2Server, start_v2_server

NGINX = find_nginx()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed (apt-get install nginx-light)")
GRPC_CONF = REPO_ROOT / "docker" / "nginx" / "grpc.conf"


def render(workdir: Path, http_port: int, grpc_port: int, upstream_grpc_ports: list[int]) -> Path:
    """The shipped nginx.conf for local replicas (default.conf) plus grpc.conf's server block."""
    conf = write_local_config(workdir, http_port, [free_port()])  # the HTTP side is not used here
    shipped = GRPC_CONF.read_text()
    line = re.search(r"^(\s*)server app:8001( [^;]*);$", shipped, re.MULTILINE)
    assert line is not None, "grpc.conf has no `server app:8001 ...;` line"
    indent, params = line.groups()
    site = shipped.replace(
        line.group(0), "\n".join(f"{indent}server 127.0.0.1:{p}{params};" for p in upstream_grpc_ports)
    )
    site, listens = re.subn(
        r"^(\s*)listen 8001 http2;$", rf"\1listen 127.0.0.1:{grpc_port} http2;", site, flags=re.M
    )
    assert listens == 1
    site = site.replace("/var/log/nginx/access.log", str(workdir / "grpc-access.log"))
    text = conf.read_text().rstrip()
    assert text.endswith("}")
    conf.write_text(text[:-1] + site + "\n}\n")
    return conf


@pytest.fixture
def replicas(tiny_model_path: Path, tmp_path: Path) -> Iterator[list[V2Server]]:
    with ExitStack() as stack:
        servers = []
        for index in range(2):
            grpc_port, server = start_v2_server(
                tiny_model_path, tmp_path / f"replica{index}", decode_threads=1, warmup_batch_sizes=1
            )
            servers.append(V2Server(stack.enter_context(server), grpc_port))
        yield servers


def test_nginx_balances_grpc_calls_over_the_replicas(replicas: list[V2Server], tmp_path: Path) -> None:
    assert NGINX is not None
    grpc_port = free_port()
    conf = render(tmp_path, free_port(), grpc_port, [int(r.grpc_address.rsplit(":", 1)[1]) for r in replicas])
    with (tmp_path / "stderr.log").open("wb") as stderr:
        nginx = subprocess.Popen(
            [NGINX, "-p", str(tmp_path), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        address = f"127.0.0.1:{grpc_port}"
        deadline = time.monotonic() + 10
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = health.Check(
                        health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=2
                    )
                    break
                except grpc.RpcError:
                    assert nginx.poll() is None and time.monotonic() < deadline, (
                        tmp_path / "error.log"
                    ).read_text()
                    time.sleep(0.1)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        client = grpcclient.InferenceServerClient(address)  # one HTTP/2 connection to nginx
        image = grpcclient.InferInput("image", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[corpus.solid((250, 5, 5))]], dtype=np.object_))
        for _ in range(8):
            result = client.infer(
                TINY, [image], outputs=[grpcclient.InferRequestedOutput("probs", class_count=1)]
            )
            assert result.as_numpy("probs")[0][0].decode().endswith(":0:red")
        served = [
            httpx.get(f"{r.http}/metrics").text.count('imgserve_images_total{protocol="v2_grpc"} 4.0')
            for r in replicas
        ]
        assert served == [1, 1], [httpx.get(f"{r.http}/metrics").text for r in replicas]
    finally:
        nginx.terminate()
        nginx.wait(10)
