"""Event-loop lag and GC pauses reach the metrics (app/runtime_watch.py)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from app.metrics import Metrics
from app.runtime_watch import RuntimeWatch

pytestmark = pytest.mark.anyio


def sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name.split("{")[0], _labels(name))
    return value or 0.0


def _labels(name: str) -> dict[str, str]:
    if "{" not in name:
        return {}
    pairs = name[name.index("{") + 1 : -1].split(",")
    return {key: value.strip('"') for key, value in (pair.split("=") for pair in pairs)}


async def test_a_blocked_loop_shows_as_lag_and_a_collection_as_a_pause() -> None:
    metrics = Metrics()
    watch = RuntimeWatch(metrics.event_loop_lag, metrics.gc_pause, interval_s=0.02)
    watch.start()
    await asyncio.sleep(0.1)  # a few timers on time
    on_time = sample(metrics, 'imgserve_event_loop_lag_seconds_bucket{le="0.1"}')
    time.sleep(0.3)  # the loop can serve nothing meanwhile
    await asyncio.sleep(0.1)
    gc.collect()
    await watch.stop()
    assert on_time >= 1
    late = sample(metrics, "imgserve_event_loop_lag_seconds_count") - sample(
        metrics, 'imgserve_event_loop_lag_seconds_bucket{le="0.25"}'
    )
    assert late == 1  # the one timer the blocked loop ran 0.28 s late
    assert sample(metrics, 'imgserve_gc_pause_seconds_count{generation="2"}') >= 1
    assert watch._on_gc not in gc.callbacks  # stopped: nothing left behind in the process
