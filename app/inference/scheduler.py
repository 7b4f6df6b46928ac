"""Fair scheduling of blocking decode work: round-robin across requests, heavy images in a lane.

A plain ``ThreadPoolExecutor`` runs work first come, first served: a request that brings 32
images that each take a second to decode occupies every thread for 16 s on 2 cores, and the
25 ms request behind it waits all that time. Here each request (an ``owner``) has its own queue
of jobs, and a free thread takes the next job of the next request in turn, so a request waits
for at most one job of each request ahead of it, not for all of their jobs. Heavy jobs (big
images) may occupy at most ``heavy_threads`` threads at once, ``threads - 1`` by default, so on
a machine with two or more decode threads one is always free for light work: a small image
never waits behind a big one.

Jobs are handed to the pool only when a thread is free, so the pool never holds a backlog:
the order of the backlog is decided here, on the event loop, with no locks. Nothing here knows
about HTTP.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from app.inference.errors import NotReadyError


@dataclass(eq=False)
class Job:
    """One blocking call; ``heavy`` ones share the heavy lane."""

    run: Callable[[], Any]
    heavy: bool = False
    on_done: Callable[[], None] | None = None  # called on the event loop once the job has run
    future: asyncio.Future[Any] | None = field(default=None, repr=False)


class FairScheduler:
    """Runs jobs on ``threads`` threads, one job of each waiting request in turn.

    ``start``/``stop`` from a lifespan; ``run`` from the event loop.
    """

    def __init__(self, threads: int, heavy_threads: int | None = None, name: str = "decode") -> None:
        self.threads = threads
        self.heavy_threads = heavy_threads if heavy_threads is not None else max(1, threads - 1)
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._queues: dict[object, deque[Job]] = {}
        self._turns: deque[object] = deque()  # owners with queued jobs, next first
        self._running = 0
        self._heavy_running = 0

    @property
    def queued_jobs(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    @property
    def running_jobs(self) -> int:
        return self._running

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self._name)

    def stop(self) -> None:
        pool, self._pool = self._pool, None
        for queue in self._queues.values():
            for job in queue:
                if job.future is not None and not job.future.done():
                    job.future.set_exception(NotReadyError("the server is shutting down"))
        self._queues.clear()
        self._turns.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, owner: object, jobs: Sequence[Job]) -> list[Any]:
        """Each job's result or exception, in order; cancelling drops the jobs not yet started."""
        if self._pool is None:
            raise NotReadyError("the server is shutting down")
        loop = asyncio.get_running_loop()
        for job in jobs:
            job.future = loop.create_future()
        if owner not in self._queues:
            self._queues[owner] = deque()
            self._turns.append(owner)
        self._queues[owner].extend(jobs)
        self._dispatch()
        futures = [job.future for job in jobs if job.future is not None]
        try:
            return await asyncio.gather(*futures, return_exceptions=True)
        finally:
            self._forget(owner, jobs)

    def _forget(self, owner: object, jobs: Sequence[Job]) -> None:
        queue = self._queues.get(owner)
        if queue is None:
            return
        dropped = set(map(id, jobs))
        remaining = deque(job for job in queue if id(job) not in dropped)
        if remaining:
            self._queues[owner] = remaining
        else:
            self._remove(owner)

    def _remove(self, owner: object) -> None:
        del self._queues[owner]
        self._turns.remove(owner)

    def _dispatch(self) -> None:
        while self._pool is not None and self._running < self.threads:
            job = self._next_job()
            if job is None:
                return
            self._running += 1
            self._heavy_running += job.heavy
            try:
                done = asyncio.get_running_loop().run_in_executor(self._pool, job.run)
            except RuntimeError:  # the pool shut down under us
                self._finished(job, None)
                return
            done.add_done_callback(partial(self._finished, job))

    def _next_job(self) -> Job | None:
        """The first job of the next request whose first job may run now; that request goes last."""
        for _ in range(len(self._turns)):
            owner = self._turns[0]
            self._turns.rotate(-1)
            queue = self._queues[owner]
            if queue[0].heavy and self._heavy_running >= self.heavy_threads:
                continue
            job = queue.popleft()
            if not queue:
                self._remove(owner)
            return job
        return None

    def _finished(self, job: Job, done: asyncio.Future[Any] | None) -> None:
        self._running -= 1
        self._heavy_running -= job.heavy
        if job.on_done is not None:
            job.on_done()
        future = job.future
        if future is not None and not future.done():
            if done is None or done.cancelled():
                future.set_exception(NotReadyError("the server is shutting down"))
            elif (error := done.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result())
        elif done is not None and not done.cancelled():
            done.exception()  # the caller left: mark any error retrieved
        self._dispatch()
