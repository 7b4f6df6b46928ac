"""Start the real server (``python -m app``) on 127.0.0.1 and stop it, always."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A running ``python -m app``; its JSON log lines are in ``log_path``."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"raw": line})
        return lines

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log_path.read_text()[-4000:]}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout_s} s:\n{self.log_path.read_text()[-4000:]}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@contextmanager
def run_server(
    model_path: Path, log_dir: Path, ready_timeout_s: float = 120, **settings: Any
) -> Iterator[ServerProcess]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSERVE_")}
    env.update(
        {"IMGSERVE_MODEL_PATH": str(model_path), "IMGSERVE_HOST": "127.0.0.1", "IMGSERVE_PORT": str(port)}
    )
    env.update({f"IMGSERVE_{name.upper()}": str(value) for name, value in settings.items()})
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = ServerProcess(process, port, log_path)
    try:
        server.wait_ready(ready_timeout_s)
        yield server
    finally:
        server.stop()


def metric_value(metrics_text: str, name: str) -> float:
    for line in metrics_text.splitlines():
        if line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)
