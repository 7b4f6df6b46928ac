"""A request deadline every front end applies the same way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.inference.errors import DeadlineExceededError


@asynccontextmanager
async def request_deadline(seconds: float) -> AsyncIterator[None]:
    """Cancel the block after ``seconds`` (its queued images are dropped) and raise
    ``DeadlineExceededError``."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise DeadlineExceededError(
            f"the request did not finish within its deadline of {seconds} s"
        ) from None
