"""Start, watch and stop the processes under test; read their CPU time and their metrics.

Server CPU time comes from the kernel's accounting of each server process (utime + stime in
``/proc/PID/stat``, all threads included), never from the client: it is the same whatever the
load generator costs. A topology (one server, or nginx + replicas) is a group of processes;
its CPU time is the sum over the group, nginx's worker processes included.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness.metrics import read_metrics
from harness.nginx import Nginx
from harness.server import REPO_ROOT, ServerProcess, free_port, settings_env

READY_TIMEOUT_S = 180.0  # a cold start on a GPU (CUDA init, warm-up) takes minutes, not seconds
STOP_TIMEOUT_S = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def taskset_prefix(cpus: str | None) -> list[str]:
    if not cpus or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cpus]


@dataclass
class Proc:
    """One process of a topology: the shared ``ServerProcess`` plus what a benchmark adds.

    The CPU accounting covers the child processes too (nginx's workers), and ``metrics`` says
    whether the process serves ``/metrics`` (ours does; nginx and the naive server do not).
    """

    name: str
    server: ServerProcess
    metrics: bool = True

    @property
    def port(self) -> int:
        return self.server.port

    def pids(self) -> list[int]:
        return [self.server.pid, *children(self.server.pid)]

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                total += process_cpu_s(pid)
        return total

    def stop(self) -> None:
        self.server.stop(STOP_TIMEOUT_S)


def start_proc(name: str, server: ServerProcess, metrics: bool = True) -> Proc:
    """Start ``server`` and wait (up to 180 s: a cold GPU start) until it is ready."""
    server.start(READY_TIMEOUT_S, poll_s=0.2)
    return Proc(name, server, metrics)


# --- metrics -----------------------------------------------------------------------------------
def scrape(port: int) -> dict[str, float]:
    """The server's metrics now, or none when it does not answer (the window's figures then
    say so rather than the whole run failing)."""
    try:
        return read_metrics(f"http://127.0.0.1:{port}")
    except httpx.HTTPError:
        return {}


def _sum_matching(samples: dict[str, float], pattern: str) -> float | None:
    regex = re.compile(pattern)
    values = [value for key, value in samples.items() if regex.fullmatch(key.split("{")[0])]
    return sum(values) if values else None


@dataclass
class MetricsDelta:
    """What the server says it did between two scrapes."""

    batches: float | None = None
    batched_images: float | None = None
    images_processed: float | None = None

    @property
    def mean_batch_size(self) -> float | None:
        if self.batches and self.batched_images is not None:
            return self.batched_images / self.batches
        return None


# The server's metric names (app/metrics.py): the batch-size histogram and the images counter.
BATCH_SIZE_SUM = r"imgserve_batch_size_sum"
BATCH_SIZE_COUNT = r"imgserve_batch_size_count"
IMAGES_TOTAL = r"imgserve_images_total"


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> MetricsDelta:
    def delta(pattern: str) -> float | None:
        a, b = _sum_matching(after, pattern), _sum_matching(before, pattern)
        return None if a is None or b is None else a - b

    return MetricsDelta(delta(BATCH_SIZE_COUNT), delta(BATCH_SIZE_SUM), delta(IMAGES_TOTAL))


# --- topologies ----------------------------------------------------------------------------------
@dataclass
class Topology:
    """One thing under test: the port the client talks to and every process that serves it."""

    name: str
    port: int
    procs: list[Proc] = field(default_factory=list)
    # Several servers without a load balancer: load generator process i talks to
    # client_ports[i % len(client_ports)] (empty: every one to ``port``).
    client_ports: list[int] = field(default_factory=list)

    def port_for(self, client_index: int) -> int:
        """The port load generator process ``client_index`` sends to."""
        return self.client_ports[client_index % len(self.client_ports)] if self.client_ports else self.port

    def cpu_s(self) -> float:
        return sum(proc.cpu_s() for proc in self.procs)

    def scrape_all(self) -> list[dict[str, float]]:
        return [scrape(proc.port) for proc in self.procs if proc.metrics]

    def stop(self) -> None:
        """Stop every process, last started first; one that ignored SIGTERM is reported after."""
        errors: list[RuntimeError] = []
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except RuntimeError as error:
                errors.append(error)
        if errors:
            raise errors[0]


def sum_deltas(before: list[dict[str, float]], after: list[dict[str, float]]) -> MetricsDelta:
    total = MetricsDelta()
    for b, a in zip(before, after, strict=True):
        d = metrics_delta(b, a)
        for attr in ("batches", "batched_images", "images_processed"):
            value = getattr(d, attr)
            if value is not None:
                setattr(total, attr, (getattr(total, attr) or 0.0) + value)
    return total


def start_ours(
    name: str,
    model_path: Path,
    settings: dict[str, str],
    log_dir: Path,
    cpus: str | None,
    cwd: Path = REPO_ROOT,
) -> Topology:
    """Our server (``cwd``: another checkout of it, for an A/B) with ``settings`` as IMGSERVE_*."""
    server = ServerProcess(
        settings_env(model_path, settings), log_dir / f"{name}.log", argv_prefix=taskset_prefix(cpus), cwd=cwd
    )
    proc = start_proc(name, server)
    return Topology(name, proc.port, [proc])


def start_naive(model_path: Path, log_dir: Path, cpus: str | None) -> Topology:
    port = free_port()
    argv = [sys.executable, "-m", "bench.naive_server", "--model", str(model_path), "--port", str(port)]
    server = ServerProcess({}, log_dir / "naive.log", port, argv=argv, argv_prefix=taskset_prefix(cpus))
    proc = start_proc("naive", server, metrics=False)
    return Topology("naive", port, [proc])


def start_replicas(
    model_path: Path, settings: dict[str, str], replicas: int, log_dir: Path, cpus: str | None
) -> Topology:
    topo = Topology(f"nginx+{replicas}", 0)
    try:
        for index in range(replicas):
            replica = start_ours(f"replica{index}", model_path, settings, log_dir, cpus)
            topo.procs.extend(replica.procs)
        nginx = Nginx(log_dir / "nginx", [p.port for p in topo.procs], argv_prefix=taskset_prefix(cpus))
        topo.procs.append(start_proc("nginx", nginx, metrics=False))
        topo.port = nginx.port
    except BaseException:
        topo.stop()
        raise
    return topo
