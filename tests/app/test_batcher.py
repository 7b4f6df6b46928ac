"""The dynamic batcher, deterministic: a fake model records every batch it is given.

The tests of the bounds (max_batch_size, max_delay_ms, the queue) run the ``fixed`` policy,
which waits out the delay; the ``adaptive`` policy's own tests come after them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from app.inference.batcher import (
    MAX_RETRY_AFTER_S,
    Batcher,
    BatcherConfig,
    next_batch_size,
    retry_after_s,
    seconds_to_wait,
)
from app.inference.errors import ModelFailedError, NotReadyError, QueueFullError

pytestmark = pytest.mark.anyio

LONG_DELAY_MS = 60_000.0


class RecordingModel:
    """Returns each input's first element times 10; fails batches that contain ``poison``."""

    def __init__(self, poison: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.poison = poison
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.gate.wait(timeout=10)
        self.threads.add(threading.current_thread().name)
        values = [int(v) for v in batch[:, 0]]
        self.batches.append(values)
        if self.poison is not None and self.poison in values:
            raise RuntimeError("poisoned batch")
        return batch[:, :1].astype(np.float32) * 10


def images(*values: int) -> list[np.ndarray]:
    return [np.array([v, 0], dtype=np.int64) for v in values]


@pytest.fixture
async def make_batcher() -> AsyncIterator[object]:
    started: list[Batcher] = []

    def make(
        model: RecordingModel,
        policy: str = "fixed",
        instances: int = 1,
        run_alone: RecordingModel | None = None,
        **config: float,
    ) -> Batcher:
        batcher = Batcher(
            model,
            BatcherConfig(policy=policy, **config),  # type: ignore[arg-type]
            instances=instances,
            run_alone=run_alone,
        )
        batcher.start()
        started.append(batcher)
        return batcher

    yield make
    for batcher in started:
        await batcher.stop(timeout_s=5)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_nothing_runs_until_the_batch_fills(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=4, max_delay_ms=LONG_DELAY_MS)
    first = asyncio.create_task(batcher.submit(images(1, 2)))
    second = asyncio.create_task(batcher.submit(images(3)))
    await asyncio.sleep(0.05)
    assert model.batches == []
    assert not first.done() and not second.done()
    assert batcher.queued_images == 3
    third = asyncio.create_task(batcher.submit(images(4, 5)))
    results = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert [[float(r[0]) for r in rows] for rows in results] == [[10.0, 20.0], [30.0]]
    assert model.batches == [[1, 2, 3, 4]]
    # 5 waits for the next batch: a multi-image request may span batches.
    await asyncio.sleep(0.05)
    assert not third.done()
    assert batcher.queued_images == 1


async def test_a_partial_batch_runs_after_max_delay(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=8, max_delay_ms=30)
    rows = await asyncio.wait_for(batcher.submit(images(7, 8)), 5)
    assert [float(r[0]) for r in rows] == [70.0, 80.0]
    assert model.batches == [[7, 8]]


async def test_concurrent_requests_share_batches_up_to_max_batch_size(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=4, max_delay_ms=50)
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(images(i)) for i in range(10))), 5)
    assert [float(rows[0][0]) for rows in results] == [i * 10.0 for i in range(10)]
    assert [len(b) for b in model.batches] == [4, 4, 2]
    assert sorted(v for b in model.batches for v in b) == list(range(10))


async def test_inference_runs_on_its_own_thread(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=1, max_delay_ms=0)
    await batcher.submit(images(1))
    assert model.threads and all(name.startswith("inference") for name in model.threads)


async def test_an_error_fails_exactly_the_requests_in_its_batch(make_batcher) -> None:
    model = RecordingModel(poison=3)
    batcher = make_batcher(model, max_batch_size=2, max_delay_ms=LONG_DELAY_MS)
    requests = [asyncio.create_task(batcher.submit(images(v))) for v in (1, 2, 3, 4, 5, 6)]
    await asyncio.sleep(0.05)
    done = await asyncio.wait_for(asyncio.gather(*requests[:6], return_exceptions=True), 5)
    assert model.batches == [[1, 2], [3, 4], [5, 6]]
    assert [float(r[0][0]) if isinstance(r, list) else type(r) for r in done] == [
        10.0,
        20.0,
        ModelFailedError,
        ModelFailedError,
        50.0,
        60.0,
    ]
    assert "batch of 2 images" in str(done[2])
    # The batcher survives and keeps serving.
    batcher_rows = await asyncio.wait_for(
        asyncio.gather(batcher.submit(images(7)), batcher.submit(images(8))), 5
    )
    assert [float(rows[0][0]) for rows in batcher_rows] == [70.0, 80.0]


async def test_a_request_spanning_a_failed_batch_fails_and_drops_its_other_images(make_batcher) -> None:
    model = RecordingModel(poison=2)
    batcher = make_batcher(model, max_batch_size=2, max_delay_ms=LONG_DELAY_MS)
    spanning = asyncio.create_task(batcher.submit(images(1, 2, 3)))
    await settle()
    with pytest.raises(ModelFailedError):
        await asyncio.wait_for(spanning, 5)
    assert model.batches == [[1, 2]]
    assert batcher.queued_images == 0  # image 3 was dropped, not left to run


async def test_overload_gives_503_at_once(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=8, max_delay_ms=LONG_DELAY_MS, max_queue_images=4)
    waiting = asyncio.create_task(batcher.submit(images(1, 2, 3)))
    await settle()
    with pytest.raises(QueueFullError) as excinfo:
        batcher.reserve(2)
    assert excinfo.value.retry_after_s == 1  # nothing has run yet: the lower bound
    assert excinfo.value.message == (
        "overloaded: 3 images are queued and this request brings 2, over the queue limit of 4 "
        "(max_queue_images); retry after 1 s"
    )
    reservation = batcher.reserve(1)  # exactly fills the queue
    assert batcher.queued_images == 4
    reservation.release()
    assert batcher.queued_images == 3
    waiting.cancel()


async def test_a_request_larger_than_the_queue_is_refused(make_batcher) -> None:
    batcher = make_batcher(RecordingModel(), max_queue_images=2)
    with pytest.raises(
        QueueFullError, match=r"3 images can never fit the queue limit of 2 \(max_queue_images\)"
    ):
        batcher.reserve(3)


async def test_cancelled_requests_drop_their_queued_images(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=3, max_delay_ms=LONG_DELAY_MS)
    gone = asyncio.create_task(batcher.submit(images(1, 2)))
    await settle()
    assert batcher.queued_images == 2
    gone.cancel()
    await settle()
    assert batcher.queued_images == 0
    rows = await asyncio.wait_for(asyncio.gather(*(batcher.submit(images(v)) for v in (3, 4, 5))), 5)
    assert [float(r[0][0]) for r in rows] == [30.0, 40.0, 50.0]
    assert model.batches == [[3, 4, 5]]


async def test_a_deadline_drops_images_not_yet_run(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=4, max_delay_ms=LONG_DELAY_MS)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await batcher.submit(images(1, 2))
    assert batcher.queued_images == 0
    assert model.batches == []


async def test_stop_drains_the_queue_then_refuses_new_work(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, max_batch_size=4, max_delay_ms=LONG_DELAY_MS)
    pending = [asyncio.create_task(batcher.submit(images(v))) for v in (1, 2, 3)]
    await settle()
    await batcher.stop(timeout_s=5)
    assert [float(r[0][0]) for r in await asyncio.gather(*pending)] == [10.0, 20.0, 30.0]
    assert model.batches == [[1, 2, 3]]
    with pytest.raises(NotReadyError, match="shutting down"):
        batcher.reserve(1)


async def test_stop_with_a_stuck_model_fails_what_is_left(make_batcher) -> None:
    model = RecordingModel()
    model.gate.clear()  # the model blocks
    batcher = make_batcher(model, max_batch_size=1, max_delay_ms=0)
    running = asyncio.create_task(batcher.submit(images(1)))
    queued = asyncio.create_task(batcher.submit(images(2)))
    await asyncio.sleep(0.05)
    await batcher.stop(timeout_s=0.1)
    model.gate.set()
    for request in (running, queued):
        with pytest.raises(NotReadyError, match="shutting down"):
            await asyncio.wait_for(request, 5)


async def test_batch_observer_sees_every_batch() -> None:
    seen: list[int] = []
    batcher = Batcher(
        RecordingModel(),
        BatcherConfig(max_batch_size=2, max_delay_ms=LONG_DELAY_MS, policy="fixed"),
        on_batch=lambda size, seconds: seen.append(size),
    )
    batcher.start()
    try:
        await asyncio.wait_for(batcher.submit(images(1, 2, 3, 4)), 5)
    finally:
        await batcher.stop()
    assert seen == [2, 2]


# -- the adaptive policy: never wait for nothing ------------------------------------------------

ADAPTIVE = BatcherConfig(max_batch_size=4, max_delay_ms=10.0, policy="adaptive")
FIXED = BatcherConfig(max_batch_size=4, max_delay_ms=10.0, policy="fixed")


def wait_at(config: BatcherConfig, now: float, queued: int, decoding: int) -> float:
    """The policy on a fake clock: the oldest image was enqueued at t = 100.000 s."""
    return seconds_to_wait(config, now=now, oldest_enqueued_at=100.0, queued=queued, decoding=decoding)


def test_a_lone_image_runs_at_once() -> None:
    assert wait_at(ADAPTIVE, now=100.0, queued=1, decoding=0) == 0.0
    assert wait_at(FIXED, now=100.0, queued=1, decoding=0) == pytest.approx(0.010)


def test_images_still_decoding_are_waited_for_up_to_the_bound() -> None:
    assert wait_at(ADAPTIVE, now=100.0, queued=1, decoding=2) == pytest.approx(0.010)
    assert wait_at(ADAPTIVE, now=100.006, queued=1, decoding=2) == pytest.approx(0.004)
    assert wait_at(ADAPTIVE, now=100.010, queued=1, decoding=2) == 0.0  # never past the bound
    assert wait_at(ADAPTIVE, now=100.5, queued=1, decoding=2) == 0.0


def test_a_full_batch_never_waits() -> None:
    for config in (ADAPTIVE, FIXED):
        assert wait_at(config, now=100.0, queued=4, decoding=0) == 0.0
        assert wait_at(config, now=100.0, queued=5, decoding=10) == 0.0


def test_zero_delay_never_waits() -> None:
    config = BatcherConfig(max_batch_size=4, max_delay_ms=0.0, policy="adaptive")
    assert wait_at(config, now=100.0, queued=1, decoding=3) == 0.0


async def test_adaptive_runs_a_lone_request_without_waiting_for_the_delay(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, policy="adaptive", max_batch_size=8, max_delay_ms=LONG_DELAY_MS)
    rows = await asyncio.wait_for(batcher.submit(images(1)), 5)
    assert [float(r[0]) for r in rows] == [10.0]
    assert model.batches == [[1]]


async def test_a_due_batch_starts_from_the_request_not_on_the_batching_tasks_turn(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, policy="adaptive", max_batch_size=8, max_delay_ms=LONG_DELAY_MS)
    model.gate.clear()
    request = asyncio.create_task(batcher.submit(images(1)))
    await asyncio.sleep(0)  # one step of the request; the batching task has had no turn since
    assert batcher.running_images == 1
    model.gate.set()
    assert [float(r[0]) for r in await asyncio.wait_for(request, 5)] == [10.0]


async def test_adaptive_waits_for_an_image_still_decoding(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, policy="adaptive", max_batch_size=8, max_delay_ms=LONG_DELAY_MS)
    decoding = batcher.reserve(1)  # admitted, not yet decoded
    first = asyncio.create_task(batcher.submit(images(1)))
    await asyncio.sleep(0.05)
    assert model.batches == [] and not first.done()
    second = asyncio.create_task(batcher.infer(images(2), decoding))  # its decode finished
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert model.batches == [[1, 2]]


async def test_adaptive_stops_waiting_when_a_decode_fails(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, policy="adaptive", max_batch_size=8, max_delay_ms=LONG_DELAY_MS)
    decoding = batcher.reserve(1)
    first = asyncio.create_task(batcher.submit(images(1)))
    await asyncio.sleep(0.05)
    assert not first.done()
    decoding.release()  # that image turned out undecodable: nothing more is on its way
    await asyncio.wait_for(first, 5)
    assert model.batches == [[1]]


async def test_adaptive_waits_no_longer_than_max_delay(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, policy="adaptive", max_batch_size=8, max_delay_ms=30)
    decoding = batcher.reserve(1)  # never arrives within the test
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(batcher.submit(images(1)), 5)
    assert loop.time() - start >= 0.025
    assert model.batches == [[1]]
    decoding.release()


class SlowModel(RecordingModel):
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(0.2 * len(batch))
        return super().__call__(batch)


async def test_retry_after_comes_from_the_queue_and_the_recent_time_per_image(make_batcher) -> None:
    assert retry_after_s(0, 0.0) == 1
    assert retry_after_s(256, 0.010) == 3
    assert retry_after_s(10_000, 1.0) == MAX_RETRY_AFTER_S
    model = SlowModel()
    batcher = make_batcher(model, policy="adaptive", max_batch_size=1, max_delay_ms=0, max_queue_images=8)
    await batcher.submit(images(0))  # teaches the batcher its time per image: 0.2 s
    model.gate.clear()
    stuck = [asyncio.create_task(batcher.submit(images(1)))]
    await settle()
    assert batcher.running_images == 1
    stuck += [asyncio.create_task(batcher.submit(images(v))) for v in range(2, 10)]
    await settle()
    assert batcher.queued_images == 8
    with pytest.raises(QueueFullError) as excinfo:
        batcher.reserve(1)
    assert excinfo.value.retry_after_s == 2  # ceil(9 images x 0.2 s)
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(*stuck), 10)


# -- model instances: several batches at once, a lone image alone -----------------------------


def test_the_queue_is_spread_over_every_instance_within_max_batch_size() -> None:
    config = BatcherConfig(max_batch_size=8)
    assert next_batch_size(config, queued=1, instances=2) == 1
    assert next_batch_size(config, queued=5, instances=2) == 3
    assert next_batch_size(config, queued=6, instances=3) == 2
    assert next_batch_size(config, queued=40, instances=2) == 8
    assert next_batch_size(config, queued=7, instances=1) == 7


class BarrierModel(RecordingModel):
    """Passes only when ``parties`` batches are in it at once."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=5)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.barrier.wait()
        return super().__call__(batch)


async def test_instances_run_batches_at_once_on_their_own_threads(make_batcher) -> None:
    model = BarrierModel(parties=2)
    batcher = make_batcher(model, policy="adaptive", instances=2, max_batch_size=8, max_delay_ms=0)
    rows = await asyncio.wait_for(batcher.submit(images(1, 2)), 10)
    assert [float(r[0]) for r in rows] == [10.0, 20.0]
    assert sorted(model.batches) == [[1], [2]]  # one image each: the queue spread over both
    assert len(model.threads) == 2 and all(name.startswith("inference") for name in model.threads)


async def test_a_lone_image_on_an_idle_model_runs_alone_and_holds_every_instance(make_batcher) -> None:
    alone, instance = RecordingModel(), RecordingModel()
    batcher = make_batcher(
        instance, policy="adaptive", instances=2, run_alone=alone, max_batch_size=8, max_delay_ms=0
    )
    alone.gate.clear()
    first = asyncio.create_task(batcher.submit(images(1)))
    while batcher.running_images == 0:
        await asyncio.sleep(0.01)
    later = [asyncio.create_task(batcher.submit(images(v))) for v in (2, 3)]
    await asyncio.sleep(0.05)
    assert instance.batches == [] and batcher.queued_images == 2  # the lone run holds both
    alone.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert alone.batches == [[1]]
    assert sorted(instance.batches) == [[2], [3]]
    # An image still decoding needs a core: the lone image beside it runs on one instance.
    with batcher.reserve(1):
        await asyncio.wait_for(batcher.submit(images(4)), 5)
    assert alone.batches == [[1]] and instance.batches[-1] == [4]


async def test_stop_drains_batches_running_on_every_instance(make_batcher) -> None:
    model = RecordingModel()
    batcher = make_batcher(model, policy="adaptive", instances=3, max_batch_size=2, max_delay_ms=0)
    model.gate.clear()
    requests = [asyncio.create_task(batcher.submit(images(v, v + 100))) for v in range(6)]
    while batcher.running_images < 6:
        await asyncio.sleep(0.01)
    stopping = asyncio.create_task(batcher.stop(timeout_s=5))
    await asyncio.sleep(0.05)
    assert not stopping.done()
    model.gate.set()
    await asyncio.wait_for(stopping, 5)
    results = await asyncio.gather(*requests)
    assert [[float(r[0]) for r in rows] for rows in results] == [
        [10.0 * v, 10.0 * (v + 100)] for v in range(6)
    ]
    with pytest.raises(NotReadyError):
        batcher.reserve(1)
