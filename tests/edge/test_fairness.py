"""Fairness of the process-wide pixel budget, over a real server: clients looping heavy
requests cannot spend the part of ``max_decoding_pixels`` kept for light requests.

Before: the budget was first come, first served; 3 clients looping requests of 4 x 25 MP flat
WebPs (4.4 KB each, at max_request_pixels) made 22% of normal predicts get 503.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import httpx

from tests.conftest import StartServer
from tests.edge.test_cost import attackers, flat_webp, multipart
from tests.reliability import corpus

ATTACK_S = 4.0


def test_clients_looping_heavy_requests_do_not_turn_normal_predicts_away(
    start_server: StartServer, tiny_model_path: Path, tmp_path: Path
) -> None:
    """3 clients loop 4 x 25 MP WebPs (100 MP, the per-request budget) for 4 s, two decode
    threads: the normal predicts sent meanwhile all get 200, and heavy requests are still
    served (those past the budget less light_decoding_pixels get 503 + Retry-After)."""
    server = start_server(tiny_model_path, decode_threads=2, warmup_batch_sizes="1")
    base = server.base_url
    heavy = [(f"flat{i}.webp", flat_webp(5000), "image/webp") for i in range(4)]
    normal = {"file": ("astronaut.jpg", corpus.jpeg(), "image/jpeg")}
    statuses: collections.Counter[int] = collections.Counter()
    with attackers(f"{base}/predict", multipart(heavy), ATTACK_S, tmp_path, count=3) as outcomes:
        time.sleep(0.5)
        end = time.monotonic() + ATTACK_S - 1.0
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < end:
                statuses[client.post(f"{base}/predict", files=normal).status_code] += 1
                time.sleep(0.02)
    heavy_statuses = collections.Counter(status for outcome in outcomes for status in outcome[0].split())
    print(f"\nnormal predicts: {dict(statuses)}; heavy requests: {dict(heavy_statuses)}")
    assert set(statuses) == {200}, statuses
    assert heavy_statuses["200"] >= 1, heavy_statuses  # heavy requests are still served
