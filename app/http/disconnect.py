"""Tell the dataplane when an HTTP client has gone away, so its queued images are dropped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request


def client_gone(request: Request) -> Callable[[], Awaitable[bool]]:
    """True once the client disconnects; False if the connection says something else.

    Once the body is read, the next ASGI ``receive`` only returns when the client disconnects.
    """

    async def gone() -> bool:
        message = await request.receive()
        return message.get("type") == "http.disconnect"

    return gone
