"""Start a real server (``python -m app``) as a child process on 127.0.0.1 and stop it.

The one place that runs a server process for the tests, the reliability commands and the
benchmarks: they all want the same thing (a free port, settings as ``IMGSERVE_*``
environment variables exactly as an operator gives them, ``/readyz`` before traffic, a clear
error with the log when it never gets there, SIGTERM to stop), so one class keeps their
start-up and shut-down from drifting apart. ``harness.nginx.Nginx`` runs nginx with it too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_ARGV = (sys.executable, "-m", "app")


def free_port() -> int:
    """A port nothing listens on now; the kernel picks it, so parallel runs do not collide."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time (user + system) that process ``pid`` has used, or one of its threads
    (``thread``: its id; the main thread's is ``pid``). Unlike wall time, the machine's other
    work does not change it."""
    stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_env(port: int, env: Mapping[str, str], inherit_settings: bool = True) -> dict[str, str]:
    """This process's environment, plus the server's host, port, gRPC off and a quiet log level.

    ``inherit_settings=False`` drops the ``IMGSERVE_*`` this process has, so that a developer's
    exported settings cannot change what a test sees; the soak command keeps them, since an
    operator configures it that way. ``env`` overrides everything.
    """
    inherited = {
        key: value for key, value in os.environ.items() if inherit_settings or not key.startswith("IMGSERVE_")
    }
    # gRPC off unless asked for (IMGSERVE_GRPC_PORT in ``env``): parallel servers would all
    # want its default port, 8001.
    own = {
        "IMGSERVE_HOST": "127.0.0.1",
        "IMGSERVE_PORT": str(port),
        "IMGSERVE_GRPC_PORT": "0",
        "IMGSERVE_LOG_LEVEL": "warning",
    }
    return inherited | own | dict(env)


def settings_env(model_path: Path, settings: Mapping[str, object]) -> dict[str, str]:
    """The model and settings as an operator gives them: ``IMGSERVE_MODEL_PATH``, and
    ``IMGSERVE_<NAME>=value`` for each ``name=value`` (``max_batch_size=8``)."""
    env = {"IMGSERVE_MODEL_PATH": str(model_path)}
    return env | {f"IMGSERVE_{name.upper()}": str(value) for name, value in settings.items()}


class ServerProcess:
    """One server process; ``start()`` returns once ``ready_path`` answers 200.

    ``argv`` defaults to ``python -m app``; ``argv_prefix`` wraps it (e.g. ``taskset -c 0-3``
    so a benchmark pins the server to its CPUs) and ``cwd`` lets a benchmark run another
    checkout of the app.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        port: int | None = None,
        *,
        argv: Sequence[str] = APP_ARGV,
        argv_prefix: Sequence[str] = (),
        cwd: Path = REPO_ROOT,
        inherit_settings: bool = True,
        ready_path: str = "/readyz",
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        self.log_path = log_path
        self.env = child_env(self.port, env, inherit_settings)
        self.argv = [*argv_prefix, *argv]
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server was not spawned"
        return self.proc.pid

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process and return at once (for tests that watch a start that must fail)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self.proc

    def start(
        self, timeout_s: float = 90.0, probe_timeout_s: float = 2.0, poll_s: float = 0.1
    ) -> ServerProcess:
        """Spawn, then wait until ready; on failure the process is stopped before raising."""
        self.spawn()
        try:
            self.wait_ready(timeout_s, probe_timeout_s, poll_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float, probe_timeout_s: float = 2.0, poll_s: float = 0.1) -> None:
        """Poll ``ready_path`` until 200; raise with the exit code and log tail if it never comes."""
        assert self.proc is not None, "the server was not spawned"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before ready:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}{self.ready_path}", timeout=probe_timeout_s).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(poll_s)
        raise RuntimeError(
            f"server not ready after {timeout_s} s (exit code {self.proc.poll()}):\n{self.log()}"
        )

    def log(self) -> str:
        """The log's tail, enough to explain a failure without flooding the report."""
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        """Every log line parsed as JSON; a line that is not JSON comes back as ``{"raw": line}``."""
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"raw": line})
        return lines

    def rss(self) -> int:
        """Resident memory now; raises (with the log) if the server has died meanwhile."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
        return rss_bytes(self.pid)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` without waiting, for tests that watch what happens during a drain."""
        assert self.proc is not None, "the server was not spawned"
        self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; returns the exit code.

        Ignoring SIGTERM is a bug (a deployment would be killed mid-drain), so after the kill
        it raises rather than passing silently.
        """
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"server ignored SIGTERM for {timeout_s} s:\n{self.log()}") from None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
