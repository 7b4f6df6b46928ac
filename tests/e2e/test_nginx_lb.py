"""Real nginx (Debian's package) with the shipped docker/nginx/default.conf in front of two
real server processes on 127.0.0.1: round-robin, the body limit, which failures are retried,
and a replica SIGTERMed under steady load.

Only the `server app:8000` and `listen 80` lines of the shipped file are rewritten (to the
test's ports); everything else (keep-alive, retries, timeouts, headers) is what ships.
Skipped when there is no nginx binary (CI installs it: apt-get install nginx-light).
"""

from __future__ import annotations

import io
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image
from skimage import data

from harness.nginx import Nginx, find_nginx
from harness.server import ServerProcess, free_port
from tests.conftest import StartServer

pytestmark = pytest.mark.skipif(
    find_nginx() is None, reason="nginx not installed (apt-get install nginx-light)"
)

CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}
# Longer than nginx's upstream keepalive_timeout (4 s): see docker-compose.yml.
SHUTDOWN_DELAY_S = 6.0
DRAIN_TIMEOUT_S = 20.0
REPLICA_SETTINGS = {
    "shutdown_delay_s": SHUTDOWN_DELAY_S,
    "drain_timeout_s": DRAIN_TIMEOUT_S,
    "max_batch_size": 8,
    "warmup_batch_sizes": "1,8",
    "decode_threads": 1,
    "intra_op_threads": 1,
}


def chelsea_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def replicas(start_module_server: StartServer, default_model_path: Path) -> list[ServerProcess]:
    """Two real servers with the default model, started (and warmed up) before nginx."""
    return [start_module_server(default_model_path, **REPLICA_SETTINGS) for _ in range(2)]


def predict(client: httpx.Client, url: str, image: bytes, **headers: str) -> httpx.Response:
    return client.post(
        f"{url}/predict", files={"file": ("chelsea.jpg", image, "image/jpeg")}, headers=headers
    )


def answered_by(response: httpx.Response) -> str:
    """The replica that answered (after a retry nginx lists every replica it tried)."""
    return response.headers["x-upstream-addr"].split(",")[-1].strip()


def test_shipped_config_passes_nginx_t(tmp_path: Path) -> None:
    result = Nginx(tmp_path, [free_port(), free_port()]).check()
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_round_robin_over_both_replicas_with_request_ids(
    replicas: list[ServerProcess], tmp_path: Path
) -> None:
    image = chelsea_jpeg()
    with Nginx(tmp_path, [r.port for r in replicas]) as nginx, httpx.Client(timeout=30) as client:
        responses = [predict(client, nginx.base_url, image) for _ in range(10)]
        tagged = predict(client, nginx.base_url, image, **{"X-Request-ID": "deploy-test-0001"})

    assert [r.status_code for r in responses] == [200] * 10
    served = Counter(answered_by(r) for r in responses)
    assert served == {f"127.0.0.1:{r.port}": 5 for r in replicas}  # strict alternation
    for response in responses:
        (prediction,) = response.json()["predictions"]
        assert prediction["top_k"][0]["label"] in CAT_LABELS
        # Without a client id nginx makes one (32 hex digits) and the app echoes it.
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert len({r.headers["x-request-id"] for r in responses}) == 10
    assert tagged.headers["x-request-id"] == "deploy-test-0001"
    assert "rid=deploy-test-0001" in nginx.access_log.read_text()


def test_body_limit_is_enforced_by_nginx_at_the_apps_limit(
    replicas: list[ServerProcess], tmp_path: Path
) -> None:
    limit = 20 * 1024 * 1024
    with Nginx(tmp_path, [r.port for r in replicas]) as nginx, httpx.Client(timeout=60) as client:
        headers = {"Content-Type": "image/jpeg"}
        at_limit = client.post(f"{nginx.base_url}/predict", content=b"\xff" * limit, headers=headers)
        over = client.post(f"{nginx.base_url}/predict", content=b"\xff" * (limit + 1), headers=headers)
    # At the limit the body reaches a replica, which refuses it as an image, not as too large.
    assert at_limit.status_code != 413 and at_limit.headers["x-upstream-addr"]
    assert at_limit.json()["detail"]
    # One byte more and nginx answers 413 itself: no replica was asked.
    assert over.status_code == 413
    assert over.headers.get("x-upstream-addr", "") == ""


@dataclass
class DeadEnd:
    """A fake upstream that reads a whole request, then closes without answering."""

    port: int = field(default_factory=free_port)
    requests: int = 0

    def serve(self, stop: threading.Event) -> None:
        with socket.create_server(("127.0.0.1", self.port)) as listener:
            listener.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(5)
                    received = b""
                    while b"\r\n\r\n" not in received:
                        received += conn.recv(65536)
                    head, _, body = received.partition(b"\r\n\r\n")
                    length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
                    while length and len(body) < int(length.group(1)):
                        body += conn.recv(65536)
                    self.requests += 1


@contextmanager
def dead_end() -> Iterator[DeadEnd]:
    fake, stop = DeadEnd(), threading.Event()
    thread = threading.Thread(target=fake.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        stop.set()
        thread.join(5)


def test_refused_connections_are_retried_on_the_other_replica(
    replicas: list[ServerProcess], tmp_path: Path
) -> None:
    nothing_listens = free_port()
    image = chelsea_jpeg()
    with (
        Nginx(tmp_path, [nothing_listens, replicas[0].port]) as nginx,
        httpx.Client(timeout=30) as client,
    ):
        responses = [predict(client, nginx.base_url, image) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 6
    assert {answered_by(r) for r in responses} == {f"127.0.0.1:{replicas[0].port}"}
    # Exactly one request met the refused connection (then max_fails took it out) and was retried.
    tried_both = [r.headers["x-upstream-addr"] for r in responses if "," in r.headers["x-upstream-addr"]]
    assert tried_both == [f"127.0.0.1:{nothing_listens}, 127.0.0.1:{replicas[0].port}"]


def test_a_post_already_sent_is_not_retried_but_a_get_is(
    replicas: list[ServerProcess], tmp_path: Path
) -> None:
    image = chelsea_jpeg()
    with dead_end() as fake:
        with (
            Nginx(tmp_path / "post", [fake.port, replicas[0].port]) as nginx,
            httpx.Client(timeout=30) as client,
        ):
            posts = [predict(client, nginx.base_url, image) for _ in range(4)]
        with (
            Nginx(tmp_path / "get", [fake.port, replicas[0].port]) as nginx,
            httpx.Client(timeout=30) as client,
        ):
            gets = [client.get(f"{nginx.base_url}/v1/models") for _ in range(4)]
    dead = f"127.0.0.1:{fake.port}"
    # The POST that reached the dead end is answered 502, not sent to a second replica.
    assert sorted(r.status_code for r in posts) == [200, 200, 200, 502]
    (failed,) = [r for r in posts if r.status_code == 502]
    assert failed.headers["x-upstream-addr"] == dead
    # The GET that reached it is idempotent: nginx asked the other replica.
    assert [r.status_code for r in gets] == [200] * 4
    assert [r.headers["x-upstream-addr"] for r in gets].count(f"{dead}, 127.0.0.1:{replicas[0].port}") == 1
    assert fake.requests == 2


@dataclass
class Load:
    """Steady load: a few clients posting photos through nginx until told to stop."""

    url: str
    image: bytes
    clients: int = 4
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: list[tuple[float, float, str | None, str | None]] = field(default_factory=list)
    retried: int = 0  # answered by the second replica nginx tried (the first refused)

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    response = predict(client, self.url, self.image)
                    failure = None if response.status_code == 200 else f"HTTP {response.status_code}"
                    tried = response.headers.get("x-upstream-addr", "")
                    replica = answered_by(response) if tried else None
                except httpx.HTTPError as exc:
                    failure, replica = f"{type(exc).__name__}: {exc}", None
                    tried = ""
                with self.lock:
                    self.results.append((started, time.monotonic(), replica, failure))
                    self.retried += "," in tried

    def sent(self) -> int:
        with self.lock:
            return len(self.results)


def test_sigterm_one_replica_under_steady_load_fails_no_request(
    start_server: StartServer, default_model_path: Path, tmp_path: Path
) -> None:
    """Four clients post photos through nginx; one replica gets SIGTERM; no request fails.

    The replica stops listening at once (nginx's next new connection to it is refused and
    retried on the other replica: safe, nothing was sent), answers what its open connections
    carry with Connection: close, drains and exits 0. A replica that kept accepting through
    its shutdown delay failed one POST in about five stops here: the connections still in its
    accept queue when it closed the socket were reset after nginx had sent the request.
    """
    # Replicas of its own: one of them is stopped.
    victim, survivor = (start_server(default_model_path, **REPLICA_SETTINGS) for _ in range(2))
    with Nginx(tmp_path, [victim.port, survivor.port]) as nginx:
        load = Load(nginx.base_url, chelsea_jpeg())
        threads = [threading.Thread(target=load.run) for _ in range(load.clients)]
        for thread in threads:
            thread.start()
        try:
            while load.sent() < 30:
                time.sleep(0.05)
            signalled = time.monotonic()
            victim.signal(signal.SIGTERM)
            exit_code = victim.proc.wait(timeout=DRAIN_TIMEOUT_S + 10)
            exited = time.monotonic()
            sent_at_exit = load.sent()
            while load.sent() < sent_at_exit + 30:
                time.sleep(0.05)
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(60)

    results = load.results
    failures = [(t0 - signalled, why) for t0, _, _, why in results if why]
    by_replica = Counter(replica for *_, replica, why in results if not why)
    after_exit = Counter(replica for t0, *_, replica, why in results if t0 > exited and not why)
    during_drain = Counter(replica for t0, *_, replica, why in results if signalled < t0 < exited and not why)
    print(
        f"\n{len(results)} requests, {len(failures)} failed, {load.retried} retried after a refused "
        f"connection; by replica {dict(by_replica)}; "
        f"SIGTERM to exit {exited - signalled:.1f} s (exit code {exit_code}); "
        f"between SIGTERM and exit {dict(during_drain)}; after exit {dict(after_exit)}"
    )
    assert failures == [], f"{failures[:5]}\nnginx error log:\n{nginx.errors()[-3000:]}"
    assert exit_code == 0
    # The shutdown delay plus the drain, within the drain timeout that bounds both.
    assert SHUTDOWN_DELAY_S <= exited - signalled < DRAIN_TIMEOUT_S + 2
    assert set(after_exit) == {f"127.0.0.1:{survivor.port}"}
    assert by_replica[f"127.0.0.1:{victim.port}"] > 0  # it was in rotation before the signal
