"""Per model version statistics: fed by a real batcher (with a fake model that takes a known
time) and by request outcomes, as Triton's ModelStatistics reports them."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from app.inference.batcher import Batcher, BatcherConfig
from app.inference.errors import ModelFailedError
from app.inference.statistics import NS_PER_S, Duration, ExecutionTiming, ModelStatistics, VersionStatistics

pytestmark = pytest.mark.anyio

MODEL_S = 0.02  # each fake run takes at least this long
LONG_DELAY_MS = 60_000.0


class SlowModel:
    """Sleeps ``MODEL_S`` per run; fails a batch that holds ``poison``."""

    def __init__(self, poison: int | None = None) -> None:
        self.poison = poison
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait(timeout=10)
        time.sleep(MODEL_S)
        if self.poison is not None and self.poison in batch[:, 0]:
            raise RuntimeError("poisoned batch")
        return batch[:, :1].astype(np.float32)


def images(*values: int) -> list[np.ndarray]:
    return [np.array([v, 0], dtype=np.int64) for v in values]


@dataclass(frozen=True)
class Outcome:
    model_name: str | None
    model_version: str | None
    duration_s: float
    error: BaseException | None = None


async def run_batcher(model: SlowModel, statistics: VersionStatistics, **config: float) -> Batcher:
    batcher = Batcher(model, BatcherConfig(policy="fixed", **config), statistics=statistics)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def test_each_run_and_each_request_is_counted_with_its_times() -> None:
    store = ModelStatistics()
    stats = store.track("m", "1")
    batcher = await run_batcher(SlowModel(), stats, max_batch_size=4, max_delay_ms=LONG_DELAY_MS)
    try:
        # 2 + 1 + 1 images fill one batch of 4; the next 2 + 1 a batch of 3 once it is stopped.
        first = [asyncio.create_task(batcher.submit(images(*v))) for v in ((1, 2), (3,), (4,))]
        await asyncio.wait_for(asyncio.gather(*first), 5)
        second = [asyncio.create_task(batcher.submit(images(*v))) for v in ((5, 6), (7,))]
        await asyncio.sleep(0.05)
    finally:
        await batcher.stop(timeout_s=5)
    await asyncio.gather(*second)

    assert (stats.execution_count, stats.inference_count) == (2, 7)
    assert [(b.batch_size, b.compute_infer.count) for b in stats.batch_statistics()] == [(3, 1), (4, 1)]
    assert all(b.compute_infer.ns >= MODEL_S * NS_PER_S for b in stats.batch_statistics())
    # Per request that succeeded: 5 requests, each in one run of at least MODEL_S.
    assert stats.queue.count == stats.compute_input.count == stats.compute_infer.count == 5
    assert stats.compute_output.count == 5
    assert stats.compute_infer.ns >= 5 * MODEL_S * NS_PER_S
    # The second batch's requests waited for the stop, at least the 50 ms slept.
    assert stats.queue.ns >= 2 * 0.05 * NS_PER_S
    assert stats.last_inference_ms >= time.time_ns() // 1_000_000 - 10_000


async def test_a_failed_run_counts_as_a_run_but_gives_no_request_times() -> None:
    stats = ModelStatistics().track("m", "1")
    batcher = await run_batcher(SlowModel(poison=2), stats, max_batch_size=1, max_delay_ms=0)
    try:
        await batcher.submit(images(1))
        with pytest.raises(ModelFailedError):
            await batcher.submit(images(2))
    finally:
        await batcher.stop(timeout_s=5)
    assert stats.execution_count == 1  # the failed run has no timing to report
    assert stats.queue.count == stats.compute_infer.count == 1


def test_outcomes_count_against_the_version_that_answered() -> None:
    store = ModelStatistics()
    one, two = store.track("m", "1"), store.track("m", "2")
    store.request_finished(Outcome("m", "1", 0.25))
    store.request_finished(Outcome("m", "1", 0.5, ModelFailedError("boom")))
    store.request_finished(Outcome("m", "2", 1.0))
    store.request_finished(Outcome("m", None, 1.0, ModelFailedError("before a version")))
    store.request_finished(Outcome("other", "1", 1.0))
    assert (one.success, one.fail) == (Duration(1, 0.25), Duration(1, 0.5))
    assert (one.success.ns, one.fail.ns) == (250_000_000, 500_000_000)
    assert (two.success, two.fail) == (Duration(1, 1.0), Duration())
    assert [(s.name, s.version) for s in store.versions()] == [("m", "1"), ("m", "2")]


def test_a_version_keeps_its_figures_until_its_last_load_drains() -> None:
    store = ModelStatistics()
    stats = store.track("m", "10")
    stats.request_finished(True, 1.0)
    assert store.track("m", "10") is stats  # reloaded from a changed file: still counting
    store.track("m", "9")
    assert [s.version for s in store.versions("m")] == ["9", "10"]
    store.forget("m", "10")  # the old load drained
    assert store.get("m", "10") is stats
    store.forget("m", "10")
    assert store.get("m", "10") is None
    assert [s.version for s in store.versions()] == ["9"]


def test_a_request_split_over_runs_counts_the_longest_of_them() -> None:
    """Its images ran at once on two instances: the request took the longest run, not the sum."""
    stats = VersionStatistics("m", "1")
    runs = [ExecutionTiming(1, 0.1, 0.5, 0.01), ExecutionTiming(1, 0.2, 0.3, 0.02)]
    stats.observe_request(0.05, runs)
    assert (stats.queue, stats.compute_input) == (Duration(1, 0.05), Duration(1, 0.2))
    assert (stats.compute_infer, stats.compute_output) == (Duration(1, 0.5), Duration(1, 0.02))
