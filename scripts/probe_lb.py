"""Send real photos through the load balancer and report which replica answered each request.

Used by scripts/container-test.sh. Every request is a POST /predict of scikit-image's
`chelsea` photo as a JPEG; a request fails unless it gets 200 with predictions. nginx names
the replica that answered in `X-Upstream-Addr` (after a retry the header lists every replica
tried; the last one answered).

    python scripts/probe_lb.py --url http://127.0.0.1:8080 --requests 40 --expect-replicas 2
    python scripts/probe_lb.py --url ... --stop-container imgserve-ci-app-1 --expect-gone 10.89.0.2
"""

from __future__ import annotations

import argparse
import collections
import io
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image
from skimage import data


def chelsea_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class Tally:
    """Thread-safe outcomes by replica, and by phase: before, during and after a replica's stop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.failures: list[tuple[str, str]] = []  # (phase, why)
        self.by_replica: collections.Counter[str] = collections.Counter()
        self.after_stop: collections.Counter[str] = collections.Counter()
        self.stopping = threading.Event()
        self.stopped = threading.Event()

    def phase(self) -> str:
        return "after" if self.stopped.is_set() else "during" if self.stopping.is_set() else "before"

    def record(self, replica: str | None, failure: str | None, phase: str) -> None:
        with self.lock:
            self.sent += 1
            if failure is not None:
                self.failures.append((phase, failure))
                return
            assert replica is not None
            self.by_replica[replica] += 1
            if phase == "after":
                self.after_stop[replica] += 1


def predict_once(client: httpx.Client, url: str, image: bytes) -> tuple[str | None, str | None]:
    """Return (replica, None) on success, (None, why) on failure."""
    try:
        response = client.post(f"{url}/predict", files={"file": ("chelsea.jpg", image, "image/jpeg")})
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    replica = response.headers.get("x-upstream-addr", "?").split(",")[-1].strip()
    if response.status_code != 200:
        return None, f"HTTP {response.status_code} from {replica}: {response.text[:200]}"
    body = response.json()
    if not body.get("predictions"):
        return None, f"no predictions from {replica}: {str(body)[:200]}"
    return replica, None


def stop_container(name: str, tally: Tally, stop_timeout_s: int) -> None:
    print(f"stopping {name}")
    tally.stopping.set()
    started = time.monotonic()
    subprocess.run(["podman", "stop", "--time", str(stop_timeout_s), name], check=True, capture_output=True)
    print(f"podman stop {name}: {time.monotonic() - started:.1f} s")
    tally.stopped.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=int, default=40, help="requests to send (at least)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--expect-replicas", type=int, default=0, help="fail unless this many answered")
    parser.add_argument("--stop-container", help="podman-stop this container after a few requests")
    parser.add_argument("--stop-timeout-s", type=int, default=30)
    parser.add_argument("--expect-gone", help="replica address that must not answer once stopped")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="per request")
    parser.add_argument("--deadline-s", type=float, default=180.0, help="for the whole probe")
    args = parser.parse_args(argv)

    image = chelsea_jpeg()
    tally = Tally()
    finished = threading.Event()

    def worker() -> None:
        with httpx.Client(timeout=args.timeout_s) as client:
            while not finished.is_set():
                phase = tally.phase()
                replica, failure = predict_once(client, args.url, image)
                tally.record(replica, failure, phase)

    def wait_for(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + args.deadline_s
        while not condition():
            if time.monotonic() > deadline:
                finished.set()
                raise SystemExit(f"FAIL: gave up after {args.deadline_s} s waiting for {what}")
            time.sleep(0.02)

    started = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        futures = [pool.submit(worker) for _ in range(args.concurrency)]
        if args.stop_container:
            # Load before, during and after the stop: the stop takes the replica's shutdown
            # delay plus its drain, then as many requests again.
            wait_for(lambda: tally.sent >= args.requests // 2, "the first requests")
            stop_container(args.stop_container, tally, args.stop_timeout_s)
            wait_for(
                lambda: sum(tally.after_stop.values()) + len(tally.failures) >= args.requests // 2,
                "requests after the stop",
            )
        else:
            wait_for(lambda: tally.sent >= args.requests, f"{args.requests} requests")
        finished.set()
        for future in futures:
            future.result()
    elapsed_s = time.monotonic() - started

    print(
        f"{tally.sent} requests in {elapsed_s:.1f} s, {len(tally.failures)} failed; "
        f"by replica: {dict(tally.by_replica)}"
    )
    problems: list[str] = []
    for phase, why in tally.failures[:10]:
        problems.append(f"{why} ({phase} the stop)" if args.stop_container else why)
    if len(tally.by_replica) < args.expect_replicas:
        problems.append(
            f"expected answers from {args.expect_replicas} replicas, got {dict(tally.by_replica)}"
        )
    if args.stop_container:
        print(f"started after the stop: {dict(tally.after_stop)}")
        if not tally.after_stop:
            problems.append("no request succeeded after the replica was stopped")
        if args.expect_gone and tally.after_stop[args.expect_gone.split(":")[0] + ":8000"]:
            problems.append(f"{args.expect_gone} still answered after it was stopped")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
