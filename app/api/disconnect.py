"""Stop working for a client that has gone away: its queued images are dropped, not run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from app.errors import ServiceError

T = TypeVar("T")


class ClientGoneError(ServiceError):
    status_code = 499  # nginx's "client closed request": nobody reads it, the log does


async def unless_disconnected(work: Awaitable[T], request: Request) -> T:
    """Await ``work``, but cancel it (dropping its queued images) if the client goes away.

    Once the body is read, the next ASGI ``receive`` only returns when the client disconnects.
    """
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(request.receive())
    try:
        done, _ = await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work_task in done:
            return work_task.result()
        message = watcher.result()
        if message.get("type") == "http.disconnect":
            work_task.cancel()
            raise ClientGoneError("the client disconnected before the result was ready")
        return await work_task
    finally:
        # Cancelling the work drops its images that have not run; wait for that to happen.
        work_task.cancel()
        watcher.cancel()
        await asyncio.gather(work_task, watcher, return_exceptions=True)
