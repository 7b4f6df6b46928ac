"""Element bombs and the probes measured beside them, for tests/edge and
``python -m reliability.probes_under_bombs``.

A bomb is a ~20 MB request of millions of tiny elements: v2 JSON of 6.6 M empty rows, TF
Serving JSON of 6.6 M empty instances, a ``ModelInferRequest`` of 4 M outputs. The server must
refuse each from a count (400, INVALID_ARGUMENT) without parsing it, and its probes must keep
answering meanwhile.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

# The bomber runs in its own process (its own GIL, so the probes beside it are not slowed by
# it): it sends the three bombs in turn, each paced to ``rate`` bytes a second, for
# ``duration_s``, then prints every answer's status (HTTP status or gRPC code name).
BOMBER = """
import sys, time, grpc, httpx
base, address, key, model, duration_s, rate = sys.argv[1:7]
rows = 6_600_000
v2 = (b'{"inputs":[{"name":"image","shape":[1,1],"datatype":"BYTES","data":['
      + b"[]," * rows + b'[]]}]}')
tfs = b'{"instances":[' + b"{}," * rows + b"{}]}"
# A ModelInferRequest of four million outputs named "p": field 6, 3 bytes each, ~20 MB.
proto = b"\\x0a" + bytes([len(model)]) + model.encode() + b"\\x32\\x03\\x0a\\x01p" * 4_000_000
statuses, end = [], time.monotonic() + float(duration_s)
with httpx.Client(timeout=60, headers={"x-api-key": key}) as client, grpc.insecure_channel(
    address, options=[("grpc.max_send_message_length", -1)]
) as channel:
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    def paced(send, size):
        # At most `rate` bytes a second: the sustained rate of the review's finding.
        start = time.monotonic()
        send()
        time.sleep(max(0.0, size / float(rate) - (time.monotonic() - start)))

    def grpc_bomb():
        try:
            infer(proto, metadata=(("x-api-key", key),), timeout=60)
            statuses.append("OK")
        except grpc.RpcError as exc:
            statuses.append(exc.code().name)

    while time.monotonic() < end:
        url = f"{base}/v2/models/{model}/infer"
        paced(lambda: statuses.append(client.post(url, content=v2).status_code), len(v2))
        url = f"{base}/v1/models/{model}:predict"
        paced(lambda: statuses.append(client.post(url, content=tfs).status_code), len(tfs))
        paced(grpc_bomb, len(proto))
print(" ".join(map(str, statuses)))
"""
REFUSED = frozenset({"400", "INVALID_ARGUMENT"})


@contextlib.contextmanager
def bombers(
    base_url: str,
    grpc_address: str,
    model: str,
    duration_s: float,
    rate: float,
    key: str = "",
    count: int = 1,
) -> Iterator[list[str]]:
    """``count`` bomber processes for ``duration_s`` while the block runs; the list holds every
    answer's status once the block is done."""
    argv = [sys.executable, "-c", BOMBER, base_url, grpc_address, key, model, str(duration_s), str(rate)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    statuses: list[str] = []
    try:
        yield statuses
    finally:
        for proc in procs:
            out, _ = proc.communicate(timeout=duration_s + 120)
            statuses.extend(out.split())


def probe_latencies(
    base_url: str, grpc_address: str, duration_s: float, period_s: float = 0.02
) -> tuple[list[float], list[float]]:
    """``/readyz`` and gRPC health, each due every ``period_s`` for ``duration_s`` (in two
    threads); each latency counts from when its probe was due, so a frozen server's whole stall
    shows (a probe that waits does not hide the ones that would have been due meanwhile). A
    probe that fails counts as infinitely late."""
    http: list[float] = []
    health: list[float] = []

    def poll(probe: Callable[[], None], latencies: list[float]) -> None:
        start = time.perf_counter()
        due = start
        while due < start + duration_s:
            time.sleep(max(0.0, due - time.perf_counter()))
            try:
                probe()
                done = time.perf_counter()
            except (AssertionError, httpx.HTTPError, grpc.RpcError):  # a failed probe: never answered
                done = time.perf_counter()
                latencies.append(float("inf"))
            while due <= done and due < start + duration_s:  # every probe due by now: this long
                latencies.append(done - due)
                due += period_s

    with httpx.Client(timeout=10) as client, grpc.insecure_channel(grpc_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def ready() -> None:
            assert client.get(f"{base_url}/readyz").status_code == 200

        def serving() -> None:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

        threads = [
            threading.Thread(target=poll, args=(ready, http)),
            threading.Thread(target=poll, args=(serving, health)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return http, health
