"""Real nginx running the shipped configuration (docker/nginx/default.conf) in front of
local replicas.

Tests and benchmarks put real nginx in front of server processes on 127.0.0.1. Both must run
the configuration we ship, so only what cannot hold outside a container changes: the upstream
`server app:8000 ...;` line becomes one line per local replica (same parameters), `listen 80`
becomes a local port, and logs and temp files go to a work folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from harness.server import REPO_ROOT, ServerProcess, free_port

SHIPPED_CONF = REPO_ROOT / "docker" / "nginx" / "default.conf"


def find_nginx() -> str | None:
    """nginx's path, also where /usr/sbin is not on PATH (a non-root shell)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def write_local_config(workdir: Path, listen_port: int, upstream_ports: list[int]) -> Path:
    """Write ``workdir/nginx.conf`` (error log ``workdir/error.log``, access log
    ``workdir/access.log``); nginx runs it with ``-p workdir -c PATH``, in the foreground."""
    shipped = SHIPPED_CONF.read_text()
    server_line = re.search(r"^(\s*)server app:8000( [^;]*);$", shipped, re.MULTILINE)
    if server_line is None:
        raise ValueError(f"{SHIPPED_CONF} has no `server app:8000 ...;` line")
    indent, params = server_line.groups()
    servers = "\n".join(f"{indent}server 127.0.0.1:{port}{params};" for port in upstream_ports)
    site = shipped.replace(server_line.group(0), servers)
    site, listens = re.subn(r"^(\s*)listen 80;$", rf"\1listen 127.0.0.1:{listen_port};", site, flags=re.M)
    if listens != 1:
        raise ValueError(f"{SHIPPED_CONF} should have one `listen 80;` line, found {listens}")
    site = site.replace("/var/log/nginx/access.log", str(workdir / "access.log"))
    temp = workdir / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    # As root, nginx's workers would run as `nobody`, who cannot use a private temp folder.
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = f"""
{user}
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{site}
}}
"""
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path


class Nginx(ServerProcess):
    """nginx in the foreground with the shipped site in front of ``upstream_ports``; ready
    once its own ``/lb-healthz`` answers. Its logs are ``error.log`` and ``access.log`` in
    ``workdir``; ``argv_prefix`` wraps the command (``taskset -c 0-3``)."""

    def __init__(self, workdir: Path, upstream_ports: list[int], *, argv_prefix: Sequence[str] = ()) -> None:
        nginx = find_nginx()
        if nginx is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.access_log = workdir / "access.log"
        self.error_log = workdir / "error.log"
        port = free_port()
        self.conf = write_local_config(workdir, port, upstream_ports)
        # -e: the error log from the first line on (the default, /var/log/nginx, may not be writable)
        argv = [nginx, "-e", str(self.error_log), "-p", str(workdir), "-c", str(self.conf)]
        super().__init__(
            {}, workdir / "stderr.log", port, argv=argv, argv_prefix=argv_prefix, ready_path="/lb-healthz"
        )

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the rendered configuration."""
        return subprocess.run([*self.argv, "-t"], capture_output=True, text=True, timeout=30, check=False)

    def errors(self) -> str:
        return self.error_log.read_text() if self.error_log.exists() else ""
