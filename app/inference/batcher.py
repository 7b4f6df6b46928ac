"""The dynamic batcher: gathers images from concurrent requests into one model run.

Triton's two knobs bound every batch: it runs when it holds ``max_batch_size`` images or when
its oldest image has waited ``max_delay_ms``, whichever comes first. Within those bounds the
``adaptive`` policy (the default) never waits for nothing: the batcher knows how many admitted
images are still being decoded, so when none is on its way it runs at once, and otherwise it
waits for those images only (never past the bounds). A lone request pays no batching delay,
and under load batches still fill, because the next batch forms while the model runs. The
``fixed`` policy is Triton's: always wait out ``max_delay_ms`` for a batch to fill.

The queue is bounded in images: ``reserve`` refuses at once (``QueueFullError``) rather than
letting latency grow without bound, with a ``retry_after_s`` estimated from the queue and the
recent time per image. A reservation is taken before decoding, so decode work is bounded too.

Model instances (Triton's instance groups): on a CPU, this model's per-image cost hardly
falls with the batch size, and one run spread over every core loses time to its threads
meeting at each layer, while a batch on one thread per core does not. So ``run_batch`` may run
on ``instances`` threads at once, each batch on its own thread; a lone image that finds every
instance idle and no other image decoding runs on ``run_alone`` instead (all cores on one
image: the lowest latency), and holds every instance while it runs. When the policy says run,
each free instance takes its share of the queue (see :func:`next_batch_size`).

A request may ask for the model's explanations (``infer(..., explain=True)``): a batch that
holds any such image runs with ``explain=True`` (the runner then returns longer rows), and
a batch without one runs as before.

One background task (started and stopped by the owner, e.g. the app lifespan) forms batches
and runs them in dedicated threads, so the event loop never blocks on the model; a request
whose images make a batch due (a lone image on an idle model) starts it itself. Each image
has its own future; a failing batch fails exactly the images (and so the requests) in it. A
cancelled request (deadline, disconnected client) drops its images that have not run yet.

Nothing here knows about HTTP; any protocol front end can feed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import numpy as np

from app.inference.errors import ModelFailedError, NotReadyError, QueueFullError
from app.inference.statistics import ExecutionObserver, ExecutionTiming

logger = logging.getLogger(__name__)

# run_batch(batch) -> rows; called as run_batch(batch, explain=True) for a batch that holds an
# image whose request asked for explanations.
RunBatch = Callable[..., np.ndarray]
BatchObserver = Callable[[int, float], None]


BatchPolicy = Literal["adaptive", "fixed"]

# Retry-After bounds, in whole seconds: some clients reject 0 or fractions, and an estimate
# past a minute says more about a stalled model than about when to come back.
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60


MAX_BATCH_SIZE_LIMIT = 1024


def powers_of_two_up_to(limit: int) -> list[int]:
    """1, 2, 4, ... below ``limit``, then ``limit`` itself: the default warm-up batch sizes."""
    sizes = [1 << i for i in range(limit.bit_length()) if (1 << i) < limit]
    return [*sizes, limit]


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    max_queue_images: int = 256
    policy: BatchPolicy = "adaptive"


def seconds_to_wait(
    config: BatcherConfig, *, now: float, oldest_enqueued_at: float, queued: int, decoding: int
) -> float:
    """How long to wait for more images before running a batch (0: run now); a pure function.

    ``queued`` images wait in the queue, the oldest since ``oldest_enqueued_at``; ``decoding``
    admitted images are still being decoded and will join the queue.
    """
    if queued >= config.max_batch_size:
        return 0.0
    remaining = oldest_enqueued_at + config.max_delay_ms / 1000 - now
    if remaining <= 0:
        return 0.0
    if config.policy == "adaptive" and decoding == 0:
        return 0.0  # nothing is on its way: waiting could only add latency
    return remaining


def next_batch_size(config: BatcherConfig, *, queued: int, instances: int) -> int:
    """Images for the next batch: the queue spread evenly over every instance, at most
    ``max_batch_size``; a pure function.

    Not over the free instances only: one instance that frees while the others run would
    then take the whole queue, and the images at its end would wait for that long run when
    the next instance to free could have run them sooner (c=32: p99 +25%, same images/s).
    """
    return max(1, min(config.max_batch_size, math.ceil(queued / instances)))


def retry_after_s(images_ahead: int, seconds_per_image: float) -> int:
    """Whole seconds until the queue ahead has likely run, within the documented bounds."""
    estimate = math.ceil(images_ahead * seconds_per_image)
    return min(max(estimate, MIN_RETRY_AFTER_S), MAX_RETRY_AFTER_S)


@dataclass(eq=False)
class _Execution:
    """One model run as its images see it: when it took them off the queue, and its timing."""

    started_at: float
    timing: ExecutionTiming | None = None


@dataclass(eq=False)
class _Item:
    array: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued_at: float
    in_queue: bool = True
    explain: bool = False
    execution: _Execution | None = None  # set when it runs, only for a batcher with statistics


@dataclass(eq=False)
class Reservation:
    """Room for ``count`` images in the queue, held from admission until they are enqueued."""

    count: int
    _batcher: Batcher = field(repr=False)
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._batcher._release(self.count)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Batcher:
    """Dynamic batching in front of a blocking ``run_batch(uint8 [N,...]) -> [N, ...]``.

    ``run_batch`` must be safe to call from ``instances`` threads at once; ``run_alone`` (by
    default ``run_batch``) runs a lone image while no other batch runs. ``statistics`` is told
    each run's timing and, per request that succeeds, its queue and compute time.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        config: BatcherConfig,
        on_batch: BatchObserver | None = None,
        *,
        instances: int = 1,
        run_alone: RunBatch | None = None,
        statistics: ExecutionObserver | None = None,
    ) -> None:
        if instances < 1:
            raise ValueError(f"instances must be at least 1, not {instances}")
        self._run_batch = run_batch
        self._run_alone = run_alone or run_batch
        self.config = config
        self.instances = instances
        self._on_batch = on_batch
        self._statistics = statistics
        self._queue: deque[_Item] = deque()
        self._queued = 0  # live (not dropped) items in _queue
        self._reserved = 0  # admitted images not yet enqueued (being decoded)
        self._running = 0  # images in the batches now running
        self._busy = 0  # instances held by running batches (a lone image's holds them all)
        self._runs: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self._seconds_per_image = 0.0  # moving average over recent batches

    # -- state ------------------------------------------------------------------------------
    @property
    def queued_images(self) -> int:
        """Images admitted and not yet running: decoding or waiting in the queue."""
        return self._queued + self._reserved

    @property
    def running_images(self) -> int:
        """Images in the batches now running."""
        return self._running

    @property
    def decoding_images(self) -> int:
        """Images admitted and not yet in the queue (being decoded)."""
        return self._reserved

    @property
    def accepting(self) -> bool:
        return self._task is not None and not self._stopping

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching task on the running loop."""
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._executor = ThreadPoolExecutor(max_workers=self.instances, thread_name_prefix="inference")
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="batcher")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, finish what is queued (within ``timeout_s``), then stop."""
        if self._task is None:
            return
        self._stopping = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            logger.error("batcher did not drain within %.1f s; failing what is left", timeout_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            for run in self._runs:
                run.cancel()
            await asyncio.gather(*self._runs, return_exceptions=True)
        self._fail_queued(NotReadyError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = None

    # -- admission --------------------------------------------------------------------------
    def reserve(self, count: int) -> Reservation:
        """Admit ``count`` images or raise ``QueueFullError`` at once."""
        if not self.accepting:
            raise NotReadyError("the server is shutting down")
        limit = self.config.max_queue_images
        if count > limit:
            raise QueueFullError(
                f"{count} images can never fit the queue limit of {limit} (max_queue_images)"
            )
        if self.queued_images + count > limit:
            wait_s = retry_after_s(self.queued_images + self._running, self._seconds_per_image)
            raise QueueFullError(
                f"overloaded: {self.queued_images} images are queued and this request brings {count}, "
                f"over the queue limit of {limit} (max_queue_images); retry after {wait_s} s",
                wait_s,
            )
        self._reserved += count
        return Reservation(count, self)

    def _release(self, count: int) -> None:
        self._reserved -= count
        self._wakeup.set()  # a batch waiting for these images need not wait any longer

    async def infer(
        self, arrays: Sequence[np.ndarray], reservation: Reservation | None = None, *, explain: bool = False
    ) -> list[np.ndarray]:
        """Run the arrays (possibly across several batches); results in order.

        ``explain``: their batches run with ``explain=True``. Cancelling the caller (a
        deadline, a client gone) drops the arrays not yet run.
        """
        if reservation is None:
            reservation = self.reserve(len(arrays))
        with reservation:
            if len(arrays) != reservation.count:
                raise ValueError(f"reserved {reservation.count} images but got {len(arrays)}")
            if self._stopping:
                raise NotReadyError("the server is shutting down")
            items = self._enqueue(arrays, explain)
            reservation.release()
        self._launch_if_due()
        try:
            rows = [await item.future for item in items]
        finally:
            self._drop_unfinished(items)
        if self._statistics is not None:
            _observe_request(self._statistics, items)
        return rows

    async def submit(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Reserve and infer in one step."""
        return await self.infer(arrays, self.reserve(len(arrays)))

    def _enqueue(self, arrays: Sequence[np.ndarray], explain: bool = False) -> list[_Item]:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [_Item(array, loop.create_future(), now, explain=explain) for array in arrays]
        self._queue.extend(items)
        self._queued += len(items)
        self._wakeup.set()
        return items

    def _drop_unfinished(self, items: list[_Item]) -> None:
        for item in items:
            if item.in_queue:
                item.in_queue = False
                self._queued -= 1
            if not item.future.done():
                item.future.cancel()
            elif not item.future.cancelled():
                item.future.exception()  # mark retrieved: one failure already reached the caller

    # -- the batching task ------------------------------------------------------------------
    async def _serve(self) -> None:
        while await self._wait_for_batch():
            self._launch_batches()

    async def _wait_for_batch(self) -> bool:
        """True when a batch should start now (see :func:`seconds_to_wait`) on a free instance;
        False once stopping, with the queue empty and every batch finished."""
        while True:
            self._discard_dropped_head()
            timeout: float | None = None
            if self._queue and self._busy < self.instances:
                if self._stopping:
                    return True  # drain: no more images are coming
                timeout = self._seconds_to_wait()
                if timeout <= 0:
                    return True
            elif self._stopping and not self._queue and not self._runs:
                return False
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    def _seconds_to_wait(self) -> float:
        return seconds_to_wait(
            self.config,
            now=time.monotonic(),
            oldest_enqueued_at=self._queue[0].enqueued_at,
            queued=self._queued,
            decoding=self._reserved,
        )

    def _launch_if_due(self) -> None:
        """Start what the policy starts now from the caller, not on the batching task's next
        turn: a lone image on an idle model skips one pass of the event loop."""
        self._discard_dropped_head()
        free = self._busy < self.instances and not self._stopping
        if self._queue and free and self._seconds_to_wait() <= 0:
            self._launch_batches()

    def _discard_dropped_head(self) -> None:
        while self._queue and not self._queue[0].in_queue:
            self._queue.popleft()

    def _launch_batches(self) -> None:
        """Start a batch on each free instance that the queue has a share for (see
        :func:`next_batch_size`). A lone image runs alone, on every core, only when nothing else
        needs one: no batch running and no admitted image still decoding (decoders on the other
        cores would make a run spread over every core wait for its slowest thread)."""
        if self._queued == 1 and self._busy == 0 and self._reserved == 0:
            self._launch(self._take(1), alone=True)
            return
        share = next_batch_size(self.config, queued=self._queued, instances=self.instances)
        while self._queued > 0 and self._busy < self.instances:
            items = self._take(share)
            if not items:
                return
            self._launch(items, alone=False)

    def _take(self, size: int) -> list[_Item]:
        items: list[_Item] = []
        while self._queue and len(items) < size:
            item = self._queue.popleft()
            if item.in_queue:
                item.in_queue = False
                items.append(item)
        self._queued -= len(items)
        return items

    def _launch(self, items: list[_Item], alone: bool) -> None:
        held = self.instances if alone else 1
        if self._statistics is not None:
            execution = _Execution(time.monotonic())
            for item in items:
                item.execution = execution
        self._busy += held
        self._running += len(items)
        run = asyncio.get_running_loop().create_task(self._run(items, alone, held))
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)  # also when cancelled before it started

    async def _run(self, items: list[_Item], alone: bool, held: int) -> None:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            batch = np.stack([item.array for item in items])
            stacked = time.perf_counter()
            runner = self._run_alone if alone else self._run_batch
            if any(item.explain for item in items):
                runner = partial(runner, explain=True)
            outputs, infer_s = await loop.run_in_executor(self._executor, _timed, runner, batch)
            if len(outputs) != len(items):
                raise RuntimeError(f"model returned {len(outputs)} rows for a batch of {len(items)}")
        except asyncio.CancelledError:
            # stop() gave up waiting for a stuck model: these requests must not hang.
            for item in items:
                if not item.future.done():
                    item.future.set_exception(NotReadyError("the server is shutting down"))
            raise
        except Exception as exc:
            logger.exception("inference failed on a batch of %d images", len(items))
            error = ModelFailedError(f"inference failed on a batch of {len(items)} images")
            error.__cause__ = exc
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
        else:
            returned = time.perf_counter()
            for item, row in zip(items, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
            if self._statistics is not None:  # before the callers resume: they read the timing
                timing = ExecutionTiming(len(items), stacked - start, infer_s, time.perf_counter() - returned)
                _observe_execution(self._statistics, items, timing)
        finally:
            self._busy -= held
            self._running -= len(items)
            self._runs.discard(asyncio.current_task())
            self._wakeup.set()  # an instance is free; when stopping, maybe the last one
        seconds = time.perf_counter() - start
        # Per image of throughput: under load every instance runs a batch like this one.
        sample = seconds / len(items) / (1 if alone else self.instances)
        self._seconds_per_image = _moving_average(self._seconds_per_image, sample)
        if self._on_batch is not None:
            self._on_batch(len(items), seconds)

    def _fail_queued(self, error: Exception) -> None:
        while self._queue:
            item = self._queue.popleft()
            if item.in_queue and not item.future.done():
                item.future.set_exception(error)
            item.in_queue = False
        self._queued = 0


def _observe_execution(statistics: ExecutionObserver, items: list[_Item], timing: ExecutionTiming) -> None:
    execution = items[0].execution  # the same for every item of the run
    if execution is not None:
        execution.timing = timing
    statistics.observe_execution(timing)


def _observe_request(statistics: ExecutionObserver, items: list[_Item]) -> None:
    """A request's queue time (its images' longest wait for a run) and the runs its images were in."""
    if len(items) == 1:  # most requests
        execution = items[0].execution
        if execution is not None and execution.timing is not None:
            statistics.observe_request(execution.started_at - items[0].enqueued_at, (execution.timing,))
        return
    queue_s = 0.0
    timings: dict[int, ExecutionTiming] = {}
    for item in items:
        execution = item.execution
        if execution is not None:
            queue_s = max(queue_s, execution.started_at - item.enqueued_at)
            if execution.timing is not None:
                timings[id(execution)] = execution.timing
    statistics.observe_request(queue_s, list(timings.values()))


def _timed(run: RunBatch, batch: np.ndarray) -> tuple[np.ndarray, float]:
    """``run(batch)`` and its duration, measured on the thread that runs it: the model's own
    time, without the hand-offs between threads."""
    start = time.perf_counter()
    outputs = run(batch)
    return outputs, time.perf_counter() - start


def _moving_average(average: float, sample: float, weight: float = 0.2) -> float:
    return sample if average == 0.0 else average + weight * (sample - average)
