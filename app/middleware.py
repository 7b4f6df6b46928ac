"""Pure ASGI middleware: request id, one JSON log line and metrics per request, draining.

Pure ASGI rather than BaseHTTPMiddleware: no extra task and no body re-wrapping per request.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.dataplane import request_id_or_new
from app.logs import log_access
from app.metrics import Metrics
from app.state import Lifecycle

REQUEST_ID_HEADER = b"x-request-id"
CONTEXT_KEY = "imgserve.request"


@dataclass
class RequestContext:
    """Per-request facts the routes fill in for the access log."""

    request_id: str
    images: int = 0
    body_pending: bool = False  # the request has a body that has not been read to its end


def get_request_context(scope: Scope) -> RequestContext | None:
    context = scope.get(CONTEXT_KEY)
    return context if isinstance(context, RequestContext) else None


class RequestMiddleware:
    """Honours or creates ``X-Request-ID``; logs and counts every request; adds
    ``Connection: close`` while draining so keep-alive clients move to another replica."""

    def __init__(self, app: ASGIApp, metrics: Metrics, lifecycle: Lifecycle) -> None:
        self.app = app
        self.metrics = metrics
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        context = RequestContext(request_id=_request_id(scope), body_pending=_has_body(scope))
        scope[CONTEXT_KEY] = context
        status = 500
        request_id = context.request_id.encode("latin-1")

        async def receive_tracking_body() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                context.body_pending = False
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id))
                # Draining: keep-alive clients should move to another replica. An unread body
                # (refused by its headers, or past a limit): closing is the only way not to
                # read the rest of it, and the connection could not carry another request.
                if self.lifecycle.draining or context.body_pending:
                    headers = [(k, v) for k, v in headers if k.lower() != b"connection"]
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive_tracking_body, send_with_headers)
        finally:
            self._record(scope, context, status, time.perf_counter() - start)

    def _record(self, scope: Scope, context: RequestContext, status: int, seconds: float) -> None:
        route = scope.get("route")
        route_path = getattr(route, "path", None) or "unmatched"
        # A front end's routes name their protocol (app.http.errors.ErrorBodyRoute); ours are "rest".
        protocol = getattr(route, "protocol", "rest")
        method = scope["method"]
        self.metrics.observe_request(route_path, method, str(status), protocol, seconds)
        client = scope.get("client")
        log_access(
            request_id=context.request_id,
            method=method,
            path=scope["path"],
            route=route_path,
            protocol=protocol,
            status=status,
            images=context.images,
            seconds=seconds,
            client=client[0] if client else None,
        )


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            return request_id_or_new(value)
    return uuid.uuid4().hex
