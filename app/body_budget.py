"""A bound on request body bytes held at once across the process, as pure ASGI middleware.

Every route that takes a body buffers it whole before the images are admitted (a decoder
needs all of an image's bytes), and keeps it until the response is sent. Without a bound, a
few hundred clients that each send a body one byte short of the limit and then stall pin
gigabytes until their deadline. The budget counts a body's declared ``Content-Length`` up
front, the moment the route first reads the body, and the bytes of a chunked body as they
arrive; a body that would pass the budget is refused at once with 503 and ``Retry-After``
(through the route's own error shape), before its bytes are read. A compressed body's
decompressed bytes count too, as they are produced (:func:`hold_body_bytes`). What a request
holds is given back when its response is done.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.inference.errors import BodyBudgetBusyError

SCOPE_KEY = "imgserve.body_hold"
RETRY_AFTER_S = 1  # bodies come and go in the time of one request: no better estimate exists


class BodyBudget:
    """Body bytes held by requests in progress, at most ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held_bytes = 0

    def hold(self, count: int) -> None:
        """Count ``count`` more bytes, or raise ``BodyBudgetBusyError`` when they do not fit."""
        if self.held_bytes + count > self.max_bytes:
            raise BodyBudgetBusyError(
                f"overloaded: request bodies of {self.held_bytes} bytes are being read or served and "
                f"this one needs {count} more, over the limit of {self.max_bytes} bytes held at once "
                f"(max_buffered_body_bytes); retry after {RETRY_AFTER_S} s",
                RETRY_AFTER_S,
            )
        self.held_bytes += count

    def release(self, count: int) -> None:
        self.held_bytes -= count


class BodyHold:
    """The bytes one request holds in the budget: its body as received, and what a route
    makes of it (a compressed body's decompressed bytes); all given back when it ends."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held_bytes = 0

    def hold(self, count: int) -> None:
        self.budget.hold(count)
        self.held_bytes += count

    def release(self) -> None:
        self.budget.release(self.held_bytes)
        self.held_bytes = 0


def hold_body_bytes(scope: Scope, count: int) -> None:
    """Count ``count`` more bytes against the budget for this request (``BodyBudgetBusyError``
    when they do not fit); nothing without the middleware (tests of other parts)."""
    hold = scope.get(SCOPE_KEY)
    if isinstance(hold, BodyHold):
        hold.hold(count)


class BodyBudgetMiddleware:
    """Counts each HTTP request's body against a :class:`BodyBudget` while the request runs."""

    def __init__(self, app: ASGIApp, budget: BodyBudget) -> None:
        self.app = app
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        hold = scope[SCOPE_KEY] = BodyHold(self.budget)
        counted = 0  # body bytes counted: the declared length up front, then what arrives
        received = 0

        async def receive_within_budget() -> Message:
            nonlocal counted, received
            if counted == 0 and declared:
                hold.hold(declared)  # before a byte of the body is read
                counted = declared
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > counted:
                    hold.hold(received - counted)
                    counted = received
            return message

        try:
            await self.app(scope, receive_within_budget, send)
        finally:
            hold.release()


def _content_length(scope: Scope) -> int:
    """The declared body length; 0 when there is none or it is malformed (the route says so)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0
