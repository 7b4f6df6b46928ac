"""Overload: offered load well past capacity gets fast 503s with Retry-After, the accepted
requests keep a bounded latency, and the server recovers fully when the load drops.

The server runs a tiny model with a fixed ~45 ms cost per batch (max 4 images a batch, so
a capacity near 90 images/s on one core) and a queue of 8 images. 24 closed-loop clients
offer several times that.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from harness.loadgen import Target, closed_loop, percentile
from harness.metrics import read_metrics
from tests.conftest import StartServer

from . import corpus
from .conftest import write_tiny_model
from .helpers import assert_error

QUEUE = 8
SETTINGS = {
    "max_batch_size": 4,
    "max_delay_ms": 2,
    "max_queue_images": QUEUE,
    "max_images_per_request": 4,
    "request_timeout_s": 10,
    "decode_threads": 2,
}


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("slow"), slow_matmuls=30)


def test_overload_gives_fast_503s_bounded_latency_and_full_recovery(
    start_server: StartServer, slow_model: Path
) -> None:
    server = start_server(model=slow_model, **SETTINGS)
    red = corpus.solid((250, 0, 0))
    target = Target(f"{server.base_url}/predict?top_k=1", [(red, "image/png")])

    results = closed_loop(target, concurrency=24, duration_s=6)

    statuses = {r.status for r in results}
    ok = [r for r in results if r.status == 200]
    shed = [r for r in results if r.status == 503]
    ok_p50, ok_p99 = percentile([r.latency_s for r in ok], 50), percentile([r.latency_s for r in ok], 99)
    shed_p50, shed_p99 = (
        percentile([r.latency_s for r in shed], 50),
        percentile([r.latency_s for r in shed], 99),
    )
    print(
        f"\n{len(results)} requests in 6 s: "
        f"{len(ok)} x 200 (p50 {ok_p50 * 1000:.0f} ms, p99 {ok_p99 * 1000:.0f} ms), "
        f"{len(shed)} x 503 (p50 {shed_p50 * 1000:.1f} ms, p99 {shed_p99 * 1000:.1f} ms)"
    )
    assert statuses <= {200, 503}, statuses  # no 5xx but the load-shedding 503, no 504, no reset
    assert len(ok) >= 100 and len(shed) >= 100, (len(ok), len(shed))
    assert all(
        r.retry_after is not None and r.retry_after.isdigit() and int(r.retry_after) >= 1 for r in shed
    )
    # Shedding is immediate: milliseconds, not the 10 s deadline. (Measured by Python clients
    # that share 2 cores with the server, so the bound has slack; it is still far below the
    # deadline and below what accepted requests take.)
    assert shed_p50 < 0.1 and shed_p99 < 0.5, (shed_p50, shed_p99)
    assert shed_p50 < ok_p50 / 2, (shed_p50, ok_p50)
    # Accepted requests waited at most for the queue ahead of them (8 images = 2 batches) and
    # their own batch: ~150 ms of model time; generous for a shared 2-core machine.
    assert ok_p99 < 1.5, ok_p99

    # Recovery: load is gone, so requests succeed one after another with the queue empty.
    with httpx.Client(timeout=10) as client:
        latencies = []
        for _ in range(20):
            start = time.monotonic()
            response = client.post(target.url, content=red, headers={"content-type": "image/png"})
            latencies.append(time.monotonic() - start)
            assert response.status_code == 200, response.text
            assert response.json()["predictions"][0]["top_k"][0]["label"] == "red"
    assert max(latencies) < 0.5, latencies
    assert httpx.get(f"{server.base_url}/readyz").json() == {"status": "ready"}
    assert read_metrics(server.base_url)["imgserve_queue_images"] == 0
    assert read_metrics(server.base_url)["imgserve_running_images"] == 0


def test_503_body_names_the_queue_limit(start_server: StartServer, slow_model: Path) -> None:
    """Under load, a request that does not fit the queue gets 503, Retry-After and the limit."""
    server = start_server(
        model=slow_model, **{**SETTINGS, "max_queue_images": 4, "max_images_per_request": 4}
    )
    files = [("file", (f"{i}.png", corpus.solid((i, 0, 0)), "image/png")) for i in range(4)]
    # Eight clients keep the queue busy while a four-image request tries to get in.
    grey = corpus.solid((9, 9, 9))
    seen = []
    with httpx.Client(timeout=10) as client:
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(timeout=10) as c:
                while not stop.is_set():
                    c.post(f"{server.base_url}/predict", content=grey, headers={"content-type": "image/png"})

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            for _ in range(100):
                response = client.post(f"{server.base_url}/predict", files=files)
                seen.append(response.status_code)
                if response.status_code == 503:
                    break
        finally:
            stop.set()
            for t in threads:
                t.join(15)
    assert 503 in seen, seen
    retry_after = response.headers["retry-after"]
    # Whole seconds from the queue and the recent time per image: 1 on a quiet machine, more
    # when the shared machine slows the model down; the message says the same wait.
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60, retry_after
    assert_error(
        response,
        503,
        "overloaded",
        "this request brings 4",
        "queue limit of 4 (max_queue_images)",
        f"retry after {retry_after} s",
    )


def test_retry_after_is_the_queue_times_the_recent_time_per_image(
    start_server: StartServer, tmp_path: Path
) -> None:
    """End to end, the 503's ``Retry-After`` is whole seconds from the queue and the measured
    time per image, not the 1 s floor, and the message says the same wait and the limit."""
    slower = write_tiny_model(tmp_path / "slower", slow_matmuls=1000)  # 0.1-0.3 s per image
    server = start_server(
        model=slower,
        **{
            **SETTINGS,
            "max_batch_size": 1,
            "max_queue_images": 8,
            "max_images_per_request": 1,
            "request_timeout_s": 60,
        },
    )
    url, body, headers = f"{server.base_url}/predict", corpus.solid((9, 9, 9)), {"content-type": "image/png"}
    assert httpx.post(url, content=body, headers=headers, timeout=30).status_code == 200
    responses: list[httpx.Response] = []

    def send() -> None:
        responses.append(httpx.post(url, content=body, headers=headers, timeout=60))

    threads = [threading.Thread(target=send) for _ in range(14)]  # 1 running + 8 queued fit; 5 do not
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    shed = [r for r in responses if r.status_code == 503]
    assert len(responses) == 14 and {r.status_code for r in responses} == {200, 503} and shed
    samples = read_metrics(server.base_url)
    seconds_per_image = (
        samples["imgserve_inference_duration_seconds_sum"]
        / samples["imgserve_inference_duration_seconds_count"]
    )
    for response in shed:
        retry_after = response.headers["retry-after"]
        assert retry_after.isdigit(), retry_after
        # at most 9 images ahead (8 queued, 1 running), at least the one running
        assert 2 <= int(retry_after) <= max(2, round(2 * 9 * seconds_per_image)), (
            retry_after,
            seconds_per_image,
        )
        assert_error(response, 503, "queue limit of 8 (max_queue_images)", f"retry after {retry_after} s")
