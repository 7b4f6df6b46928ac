"""The dynamic batcher, deterministic: a fake model records every batch it is given."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest

from app.errors import InferenceError, QueueFullError, UnavailableError
from app.inference.batcher import Batcher, BatcherConfig

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

    def make(model: RecordingModel, **config: float) -> Batcher:
        batcher = Batcher(model, BatcherConfig(**config))  # type: ignore[arg-type]
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
        InferenceError,
        InferenceError,
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
    with pytest.raises(InferenceError):
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
    assert excinfo.value.status_code == 503
    assert excinfo.value.headers == {"Retry-After": "1"}
    assert "3 images are queued (limit 4)" in excinfo.value.detail
    reservation = batcher.reserve(1)  # exactly fills the queue
    assert batcher.queued_images == 4
    reservation.release()
    assert batcher.queued_images == 3
    waiting.cancel()


async def test_a_request_larger_than_the_queue_is_refused(make_batcher) -> None:
    batcher = make_batcher(RecordingModel(), max_queue_images=2)
    with pytest.raises(QueueFullError, match="3 images can never fit the queue of 2"):
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
    with pytest.raises(UnavailableError, match="shutting down"):
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
        with pytest.raises(UnavailableError, match="shutting down"):
            await asyncio.wait_for(request, 5)


async def test_batch_observer_sees_every_batch() -> None:
    seen: list[int] = []
    batcher = Batcher(
        RecordingModel(),
        BatcherConfig(max_batch_size=2, max_delay_ms=LONG_DELAY_MS),
        on_batch=lambda size, seconds: seen.append(size),
    )
    batcher.start()
    try:
        await asyncio.wait_for(batcher.submit(images(1, 2, 3, 4)), 5)
    finally:
        await batcher.stop()
    assert seen == [2, 2]
