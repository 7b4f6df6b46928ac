"""Probes under element bombs: ``/readyz`` and gRPC health p50 and p99 while ~20 MB JSON and
protobuf element bombs run (the target: p99 <= 100 ms), against the same probes on the idle
server, in alternating rounds.

    python -m reliability.probes_under_bombs                      # 3 rounds of 10 s + 10 s
    python -m reliability.probes_under_bombs --rounds 5 --rate 13e6 --bombers 2

It starts its own server (``python -m app`` on 127.0.0.1 with gRPC, settings from IMGSERVE_*
in the environment or ``--set NAME=VALUE``; the tiny model of ``harness.tiny_model`` unless
``--model`` names one: the bombs are refused before any model work). Each round measures the
probes for ``--seconds`` on the idle server, then for as long again while ``--bombers``
processes send the bombs of ``harness.bombs`` (v2 JSON of 6.6 M empty rows, TF Serving JSON of
6.6 M empty instances, a ModelInferRequest of 4 M outputs), each paced to ``--rate`` bytes a
second. Each probe is due every 20 ms and its latency counts from when it was due, so a stall
shows whole. Beside each phase: the CPU the server and every other process on the host took
(per second of the phase), so that a slow round can be told apart as the host's.

Exit status 0 when every bomb was refused (400, INVALID_ARGUMENT) and every probe answered;
1 otherwise. Whether the p99 target holds is printed, not the exit status: on a shared machine
it measures the machine as much as the server.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from harness.bombs import REFUSED, bombers, probe_latencies
from harness.loadgen import percentile
from harness.server import ServerProcess, cpu_seconds, free_port, settings_env
from harness.tiny_model import tiny_card, write_model

TARGET_P99_MS = 100.0


@dataclass
class Phase:
    name: str
    readyz_ms: tuple[float, float]  # p50, p99
    health_ms: tuple[float, float]
    probes: int
    failed_probes: int
    server_cores: float
    other_cores: float


def host_busy_s() -> float:
    """CPU seconds the host's CPUs were busy since boot (/proc/stat, not idle or iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = sum(fields[:8]) - fields[3] - fields[4]
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(name: str, server: ServerProcess, address: str, seconds: float) -> Phase:
    wall, host, own = time.monotonic(), host_busy_s(), cpu_seconds(server.pid)
    http, health = probe_latencies(server.base_url, address, seconds)
    wall = time.monotonic() - wall
    server_cores = (cpu_seconds(server.pid) - own) / wall
    failed = sum(v == float("inf") for v in http + health)
    return Phase(
        name=name,
        readyz_ms=(percentile(http, 50) * 1000, percentile(http, 99) * 1000),
        health_ms=(percentile(health, 50) * 1000, percentile(health, 99) * 1000),
        probes=len(http) + len(health),
        failed_probes=failed,
        server_cores=server_cores,
        other_cores=(host_busy_s() - host) / wall - server_cores,
    )


def line(phase: Phase) -> str:
    (r50, r99), (h50, h99) = phase.readyz_ms, phase.health_ms
    return (
        f"{phase.name:<16} /readyz p50 {r50:6.1f} p99 {r99:7.1f} ms | gRPC health p50 {h50:6.1f} "
        f"p99 {h99:7.1f} ms | {phase.probes} probes, {phase.failed_probes} failed | cores: server "
        f"{phase.server_cores:.2f}, others {phase.other_cores:.2f}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m reliability.probes_under_bombs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", type=Path, help="model.onnx (default: the tiny model, built here)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="each phase's length (default 10)")
    parser.add_argument("--rate", type=float, default=13e6, help="bytes a second, each bomber (13e6)")
    parser.add_argument("--bombers", type=int, default=1, help="bomber processes (default 1)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="an IMGSERVE_ setting"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings: dict[str, object] = {"grpc_port": free_port()}
    for item in args.set:
        name, _, value = item.partition("=")
        settings[name.lower().removeprefix("imgserve_")] = value
    address = f"127.0.0.1:{settings['grpc_port']}"
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_model(Path(tmp) / "tiny", tiny_card())
        server = ServerProcess(settings_env(model, settings), Path(tmp) / "server.log").start(timeout_s=180)
        try:
            phases, statuses = run_rounds(server, address, args)
        finally:
            server.stop()
    return report(phases, statuses)


def run_rounds(
    server: ServerProcess, address: str, args: argparse.Namespace
) -> tuple[list[Phase], list[str]]:
    """Each round: the probes on the idle server, then beside the bombers."""
    name = httpx.get(f"{server.base_url}/v1/models").json()["models"][0]["name"]
    phases, statuses = [], []
    print(f"{args.rounds} rounds: {args.seconds:.0f} s idle, then {args.seconds:.0f} s beside "
          f"{args.bombers} bomber(s) at {args.rate / 1e6:.0f} MB/s each; host: "
          f"{os.cpu_count()} cores", flush=True)  # fmt: skip
    for round_ in range(1, args.rounds + 1):
        phases.append(measure(f"round {round_} idle", server, address, args.seconds))
        print(line(phases[-1]), flush=True)
        with bombers(
            server.base_url, address, name, args.seconds + 1.0, args.rate, count=args.bombers
        ) as answers:
            time.sleep(0.5)
            phases.append(measure(f"round {round_} bombs", server, address, args.seconds))
        statuses.extend(answers)
        print(line(phases[-1]), flush=True)
    return phases, statuses


def report(phases: list[Phase], statuses: list[str]) -> int:
    busy = [p for p in phases if p.name.endswith("bombs")]
    worst = max(max(p.readyz_ms[1], p.health_ms[1]) for p in busy)
    met = "met" if worst <= TARGET_P99_MS else "NOT met"
    kinds = {s: statuses.count(s) for s in sorted(set(statuses))}
    print(f"\nbombs sent: {len(statuses)}, answers {kinds}")
    print(f"worst probe p99 under bombs: {worst:.1f} ms (target <= {TARGET_P99_MS:.0f} ms: {met})")
    refused = bool(statuses) and set(statuses) <= REFUSED
    answered = all(p.failed_probes == 0 for p in phases)
    if not refused:
        print("FAIL: a bomb was not refused with 400 / INVALID_ARGUMENT")
    if not answered:
        print("FAIL: a probe did not answer")
    return 0 if refused and answered else 1


if __name__ == "__main__":
    sys.exit(main())
