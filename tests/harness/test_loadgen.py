"""The load generator's open loop: its schedule, latency timed from when a request was due,
and what it reports of shed (503) answers. Against a real HTTP server (the standard
library's), never a mock: the timing under test is the socket's."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.loadgen import Target, arrival_offsets, main, open_loop, percentile, save_workload


class Handler(BaseHTTPRequestHandler):
    """200 at once on any path but /busy, which sheds: 503 with Retry-After."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the servers under test

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        busy = self.path == "/busy"
        body = b'{"detail": "overloaded"}' if busy else b'{"ok": true}'
        self.send_response(503 if busy else 200)
        if busy:
            self.send_header("Retry-After", "2")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_uniform_schedule_is_evenly_spaced_and_ends_before_the_duration() -> None:
    assert arrival_offsets(4, 1.0) == [0.0, 0.25, 0.5, 0.75]
    assert arrival_offsets(10, 0.25) == pytest.approx([0.0, 0.1, 0.2])


def test_poisson_schedule_has_exponential_gaps_of_mean_one_over_the_rate() -> None:
    rate, duration = 1000.0, 20.0
    offsets = arrival_offsets(rate, duration, "poisson", seed=7)
    # a Poisson count: mean and variance rate x duration = 20,000, so 4 sigma is about 566
    assert abs(len(offsets) - rate * duration) < 566, len(offsets)
    assert offsets == sorted(offsets) and offsets[0] > 0 and offsets[-1] < duration
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.03)
    # exponential, not evenly spaced: the standard deviation equals the mean, and 1 - 1/e of the
    # gaps are shorter than the mean (an even schedule has neither)
    assert statistics.pstdev(gaps) == pytest.approx(mean, rel=0.05)
    assert sum(g < mean for g in gaps) / len(gaps) == pytest.approx(1 - 1 / 2.718281828, abs=0.02)


def test_poisson_schedule_is_repeatable_by_seed() -> None:
    first = arrival_offsets(50, 2.0, "poisson", seed=1)
    assert arrival_offsets(50, 2.0, "poisson", seed=1) == first
    assert arrival_offsets(50, 2.0, "poisson", seed=2) != first


def test_schedule_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="rate above 0 requests/s; got 0"):
        arrival_offsets(0, 1.0)
    with pytest.raises(ValueError, match="arrivals must be one of"):
        arrival_offsets(1, 1.0, "bursty")  # type: ignore[arg-type]


def test_latency_counts_from_when_a_request_was_due_not_when_it_was_sent(port: int) -> None:
    target = Target(f"http://127.0.0.1:{port}/predict", [(b"x", "image/jpeg")])
    late_s = 0.3
    # Started 0.3 s late: the requests due in [0, 0.3) go out at once, already overdue.
    results, dropped = open_loop(target, 20, 0.5, t0=time.monotonic() - late_s)
    assert dropped == 0 and [r.status for r in results] == [200] * 10
    assert [r.started_s for r in results] == pytest.approx(arrival_offsets(20, 0.5))
    for r in results:
        # nothing finishes before the call was made; an overdue request carries its lateness
        assert r.finished_s >= late_s, r
        assert r.latency_s >= late_s - r.started_s, r
    on_time = [r.latency_s for r in results if r.started_s > late_s + 0.01]
    overdue = [r.latency_s for r in results if r.started_s < late_s - 0.1]
    assert on_time and overdue and max(on_time) < min(overdue), (on_time, overdue)


def test_the_command_reports_achieved_load_and_shed_answers(port: int, tmp_path: Path) -> None:
    save_workload(tmp_path / "w", "tiny", 1, [(b"x", "image/jpeg")])

    def run(path: str) -> dict[str, object]:
        out = tmp_path / "out.json"
        load = ["--rate", "100", "--arrivals", "poisson", "--seed", "3", "--warmup", "0.2", "--duration", "1"]
        workload = ["--workload", str(tmp_path / "w"), "--port", str(port), "--path", path]
        main([*workload, *load, "--out", str(out)])
        return dict(json.loads(out.read_text()))

    served = run("/predict")
    assert served["mode"] == "open" and served["arrivals"] == "poisson" and served["error_count"] == 0
    sent = len(arrival_offsets(100, 1.2, "poisson", seed=3))
    assert served["requests_sent"] == sent
    # the answers that completed inside the 1 s window: about 100, a Poisson count
    assert 60 <= served["requests_ok"] <= 140 and served["requests_per_s"] == served["requests_ok"]
    latencies = served["latencies_s"]
    assert isinstance(latencies, list) and served["latency_ms"]["p50"] == 1000 * percentile(latencies, 50)  # type: ignore[index]

    shed = run("/busy")
    assert shed["requests_ok"] == 0 and shed["latencies_s"] == []
    shed_count = shed["errors"]["http_503"]  # type: ignore[index]
    assert shed_count > 0 and shed["shed_with_retry_after"] == shed_count
    assert len(shed["shed_latencies_s"]) == shed_count  # type: ignore[arg-type]
    assert shed["sample_error_body"] == '{"detail": "overloaded"}'
