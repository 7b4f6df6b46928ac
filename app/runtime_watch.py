"""What stalls the whole process, as metrics: event-loop lag and Python's garbage collector.

A latency spike has many possible causes; two of them belong to the process itself and are
invisible from outside it: the event loop busy with one callback (every request waits), and
a garbage collection (the GIL is held: every thread waits). A timer due every 100 ms records
how late the loop ran it (``imgserve_event_loop_lag_seconds``, which a collection also
delays), and ``gc.callbacks`` time each collection (``imgserve_gc_pause_seconds`` by
generation). A slow minute with neither is not the server's Python: the model, the cores it
was given, or the machine (see ``python -m reliability.soak``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from typing import Any, Protocol


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


class PauseObserver(Protocol):
    def labels(self, *values: str) -> Observer: ...


class RuntimeWatch:
    """Started by the lifespan, stopped at shutdown; ``interval_s``: the timer's period."""

    def __init__(self, loop_lag: Observer, gc_pause: PauseObserver, interval_s: float = 0.1) -> None:
        self.loop_lag = loop_lag
        self.gc_pause = gc_pause
        self.interval_s = interval_s
        # A collection can start in any thread, at any allocation, even inside a metric's own
        # lock: the callback only appends (atomic under the GIL); the loop task observes.
        self._pauses: deque[tuple[int, float]] = deque(maxlen=10_000)
        self._gc_started: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="runtime-watch")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._flush()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # The GIL is held from "start" to "stop" of one collection: they pair up.
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self._pauses.append((int(info["generation"]), time.perf_counter() - self._gc_started))
            self._gc_started = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.loop_lag.observe(max(0.0, loop.time() - due))
            self._flush()

    def _flush(self) -> None:
        while self._pauses:
            generation, seconds = self._pauses.popleft()
            self.gc_pause.labels(str(generation)).observe(seconds)
