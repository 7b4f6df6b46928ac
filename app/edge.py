"""The HTTP edge: uvicorn's httptools protocol with the connection bounds uvicorn lacks.

The server is exposed directly (a Kubernetes Service, ``docker run -p``), so what nginx does in
the compose stack has to happen here too. uvicorn bounds idle keep-alive connections and
nothing else before the app sees a request, and httptools has no header size limit. This
subclass adds, per connection (docs/EDGE.md says why each bound lives here):

- a header timeout: from the connection's start, or the end of its previous response, until a
  request's headers are complete; a trickled byte does not restart it (uvicorn's keep-alive
  timer does restart). Past it: ``408`` if part of a request came, else a silent close.
- a bound on the bytes of a request line plus headers (``431``), counted as they arrive, so an
  unfinished header cannot pin memory, and on the number of header fields (``431``);
- exactly one ``Host`` in HTTP/1.1 (RFC 9112 section 3.2): none or two is ``400``;
- a cap on connections: one accepted past it is answered ``503`` + ``Retry-After``, except the
  probes' paths, which a kubelet must reach on a pod under a connection flood;
- a lingering close: a response sent before its request was read (a ``413`` on
  ``Content-Length``, a ``401``, one of the refusals above) half-closes, then reads and
  discards what the client still sends, for a bounded time, before closing. Closing a socket
  with unread bytes sends a TCP reset, which throws away the response in the client's receive
  buffer: stdlib clients (urllib, http.client) send the whole body before reading and saw
  only the reset. nginx's ``lingering_close`` does the same.
- a send timeout: a response the client does not take in (the write buffer stays above its
  high-water mark, so the request cycle waits) for ``send_timeout_s`` closes the connection,
  which gives back its place under the cap; nginx's ``send_timeout``.
- a fix for uvicorn's pipelining: a client that closes with pipelined requests queued left
  the running request marked connected (uvicorn marks only the newest), and its response
  then raised on the closed transport ("Exception in ASGI application", a traceback at
  error level on demand).

It overrides uvicorn's hooks (``on_*`` parser callbacks, ``_start_asgi_task``,
``on_response_complete``) and wraps the transport a request cycle sees; tests/edge fail if a
uvicorn release changes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

logger = logging.getLogger(__name__)

# Served on a connection past the cap: a kubelet's probe during a connection flood must not
# fail, or Kubernetes restarts (liveness) or empties (readiness) a pod that is working.
PROBE_PATHS = frozenset({b"/healthz", b"/readyz", b"/v2/health/live", b"/v2/health/ready"})

# A body's framing must pay for its parsing: httptools calls back into Python once per chunk
# (and per read a chunk spans), so a body sent as one-byte chunks costs the event loop ~1 us
# per byte (two 2 MB bodies: ~1 s each, /healthz p99 182 ms meanwhile). Past the first
# MIN_CHECKED_BODY_PIECES pieces, a body must average MIN_MEAN_BODY_PIECE_BYTES per piece, or
# it is refused (400). Real clients send 4-64 KiB chunks; 256 B bounds a 20 MiB body to ~80k
# callbacks, and one 64 KiB read to ~256.
MIN_CHECKED_BODY_PIECES = 1024
MIN_MEAN_BODY_PIECE_BYTES = 256
# A lingering connection (already answered) reads at most one socket read (asyncio: 256 KiB)
# per LINGER_READ_PAUSE_S: ~25 MB/s, so a 64 MiB body still drains in ~3 s of the 30 s, while
# refused clients re-sending at loopback speed (~1 GB/s against 422s) no longer take the
# event loop's time from the requests it is serving.
LINGER_READ_PAUSE_S = 0.01


@dataclass(frozen=True)
class EdgeLimits:
    """The connection-level bounds (``Settings``' ``header_timeout_s`` and the rest)."""

    header_timeout_s: float
    max_header_bytes: int
    max_header_count: int
    max_connections: int
    lingering_time_s: float
    lingering_timeout_s: float
    send_timeout_s: float = 10.0


def _ignore(reason: str) -> None:
    pass


@dataclass(frozen=True)
class EdgeHooks:
    """What the edge reports: ``on_refusal(reason)`` for each request it answers itself."""

    on_refusal: Callable[[str], None] = _ignore


class Refusal(Exception):
    """A request answered by the edge itself; raised in a parser callback, it stops parsing.
    ``reason`` is the metric's label (``app.metrics.EDGE_REFUSAL_REASONS``)."""

    def __init__(self, status: int, reason: str, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.retry_after_s = retry_after_s

    def response(self) -> bytes:
        """The whole response: the app's JSON error shape, and the connection closes."""
        body = json.dumps({"detail": self.detail}).encode()
        head = [
            STATUS_LINE[self.status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if self.retry_after_s is not None:
            head.append(b"retry-after: %d\r\n" % self.retry_after_s)
        return b"".join([*head, b"\r\n", body])


class BodyRefusal(Refusal):
    """A refusal found while the request's body streams in: its app is already running."""


class _CycleTransport(asyncio.Transport):
    """The connection as a request cycle sees it (write, close, is_closing: all it calls), so
    that the cycle's close after a response can linger instead."""

    def __init__(self, protocol: EdgeProtocol) -> None:
        super().__init__()
        self._protocol = protocol

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._protocol.transport.write(data)

    def is_closing(self) -> bool:
        return self._protocol.closing

    def close(self) -> None:
        self._protocol.close_after_response()


class EdgeProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the bounds above; ``create_edge_protocol`` binds the limits."""

    limits: ClassVar[EdgeLimits]
    admitted: ClassVar[set[EdgeProtocol]]  # connections under the cap, server-wide
    hooks: ClassVar[EdgeHooks]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cycle_transport = _CycleTransport(self)
        self._running: RequestResponseCycle | None = None
        self._in_head = True  # reading a request line and headers (or waiting for one)
        self._head_bytes = 0  # bytes since the last request ended
        self._body_pieces = 0  # on_body calls and bytes of the request being read
        self._body_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._pending_refusal: Refusal | None = None
        self._lingering = False
        self._linger_timer: asyncio.TimerHandle | None = None
        self._linger_until = 0.0
        self._last_read = 0.0
        self._send_timer: asyncio.TimerHandle | None = None

    @property
    def closing(self) -> bool:
        return self._lingering or self.transport.is_closing()

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.admitted) < self.limits.max_connections:
            self.admitted.add(self)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.admitted.discard(self)
        self._cancel_timers()
        super().connection_lost(exc)
        # uvicorn marks only the newest cycle disconnected; with requests pipelined the one
        # running is older, and its response would be written to a closed transport.
        queued = [cycle for cycle, _ in self.pipeline]
        self.pipeline.clear()
        for cycle in (self._running, *queued):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._last_read = self.loop.time()
            if not self.transport.is_closing():
                self.transport.pause_reading()
                self.loop.call_later(LINGER_READ_PAUSE_S, self._resume_lingering_read)
            return
        self._unset_keepalive_if_required()
        # Feed a request's head at most up to the limit, so an endless header is refused when
        # it passes the limit instead of being buffered by the parser.
        while data and not self.closing and self._pending_refusal is None:
            if not self._in_head:
                self._feed(data)
                return
            room = self.limits.max_header_bytes - self._head_bytes
            if room <= 0:
                limit = self.limits.max_header_bytes
                detail = f"request line and headers exceed {limit} bytes (max_header_bytes)"
                self._refuse(Refusal(431, "header_too_large", detail))
                return
            chunk, data = data[:room], data[room:]
            self._head_bytes += len(chunk)
            self._feed(chunk)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No WebSockets (uvicorn's ws="none"): the request was answered as plain HTTP, and
            # what follows its head in the same read is dropped, as uvicorn does.
            logger.debug("upgrade request answered as plain HTTP", extra={"client": self.client})
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            if isinstance(refusal, BodyRefusal):
                self._refuse_running(refusal)
                return
            if not isinstance(refusal, Refusal):
                logger.info("invalid HTTP request: %s", exc, extra={"client": self.client})
                refusal = Refusal(400, "invalid", "Invalid HTTP request received.")
            self._refuse(refusal)

    def pause_writing(self) -> None:
        """The client is not taking in what was written: it has ``send_timeout_s`` to start."""
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.limits.send_timeout_s, self._on_send_timeout)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_send_timer()

    # Parser callbacks

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_header_timer()
        # Counted once the head is in, not per field: max_header_bytes already bounds what the
        # fields can hold meanwhile, and a callback per field costs every request.
        if len(self.headers) > self.limits.max_header_count:
            limit = self.limits.max_header_count
            raise Refusal(431, "too_many_headers", f"more than {limit} header fields (max_header_count)")
        self._check_host()
        if self not in self.admitted and httptools.parse_url(self.url).path not in PROBE_PATHS:
            cap = self.limits.max_connections
            detail = f"over the connection limit of {cap} (max_connections); retry"
            raise Refusal(503, "connection_cap", detail, retry_after_s=1)
        self._body_pieces = self._body_bytes = 0
        existing = self.cycle
        super().on_headers_complete()
        if self.cycle is not existing:
            self.cycle.transport = self._cycle_transport

    def on_body(self, body: bytes) -> None:
        self._body_pieces += 1
        self._body_bytes += len(body)
        if (
            self._body_pieces > MIN_CHECKED_BODY_PIECES
            and self._body_bytes < MIN_MEAN_BODY_PIECE_BYTES * self._body_pieces
        ):
            raise BodyRefusal(
                400,
                "body_framing",
                f"request body framed in {self._body_pieces} pieces of {self._body_bytes} bytes in all; "
                f"send chunks of at least {MIN_MEAN_BODY_PIECE_BYTES} bytes on average",
            )
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _check_host(self) -> None:
        hosts = sum(1 for name, _ in self.headers if name == b"host")
        if hosts > 1 or (hosts == 0 and self.parser.get_http_version() == "1.1"):
            detail = f"an HTTP/1.1 request needs exactly one Host header; it has {hosts}"
            raise Refusal(400, "bad_host", detail)

    # Requests and responses

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        if self._lingering:
            self.server_state.total_requests += 1
            return
        super().on_response_complete()
        if self.closing or (self._running is not None and not self._running.response_complete):
            return  # closed, or a pipelined request whose headers are in has started
        if self._pending_refusal is not None:
            self._refuse(self._pending_refusal)
        else:
            self._arm_header_timer()

    def close_after_response(self) -> None:
        """A cycle closes the connection: linger if the client may still be sending."""
        if self.closing:
            return
        if not self._in_head or self._head_bytes > 0:  # a body or a next request part-read
            self._close_lingering()
        else:
            self.transport.close()

    def _log_refusal(self, refusal: Refusal) -> None:
        logger.info(
            "refused at the HTTP edge: %d %s",
            refusal.status,
            refusal.detail,
            extra={"client": self.client, "status": refusal.status},
        )
        self.hooks.on_refusal(refusal.reason)

    def _refuse(self, refusal: Refusal) -> None:
        self._log_refusal(refusal)
        if self._running is not None and not self._running.response_complete:
            # A pipelined request refused while an earlier one runs: answer after its response.
            self._pending_refusal = refusal
            self.flow.pause_reading()
            return
        self.transport.write(refusal.response())
        self._close_lingering()

    def _refuse_running(self, refusal: Refusal) -> None:
        """Answer for a request whose app is reading its body: the app sees a disconnect (its
        response, if any, goes nowhere), the client the refusal, then a lingering close."""
        cycle = self.cycle
        cycle.disconnected = True
        cycle.message_event.set()
        if cycle is not self._running:
            # Pipelined behind a request still running: it never starts, and its refusal is
            # answered after that request's response (``_refuse``'s pending path).
            self.pipeline = deque(entry for entry in self.pipeline if entry[0] is not cycle)
            self._refuse(refusal)
            return
        self._log_refusal(refusal)
        if not cycle.response_started:
            self.transport.write(refusal.response())
        self._close_lingering()

    # Timers

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._on_header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_header_timer()
        self._cancel_send_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.closing:
            return
        if self._head_bytes > 0:
            # Part of a request came: say why. No lingering: this client is the slow one.
            seconds = self.limits.header_timeout_s
            logger.info(
                "request headers not complete within %s s: 408", seconds, extra={"client": self.client}
            )
            detail = f"request headers not complete within {seconds} s (header_timeout_s)"
            self.transport.write(Refusal(408, "header_timeout", detail).response())
            self.hooks.on_refusal("header_timeout")
        self.transport.close()

    def _on_send_timeout(self) -> None:
        """Nothing of the response drained for ``send_timeout_s``: drop the connection and what
        it buffered (a close would wait for the client to read it)."""
        self._send_timer = None
        if self.transport.is_closing():
            return
        seconds = self.limits.send_timeout_s
        logger.info(
            "client took in nothing of its response for %s s (send_timeout_s): closed",
            seconds,
            extra={"client": self.client},
        )
        self.hooks.on_refusal("send_timeout")
        self.transport.abort()

    def _close_lingering(self) -> None:
        """Half-close, then read and discard for up to ``lingering_time_s`` (and no longer than
        ``lingering_timeout_s`` without a byte), then close."""
        self._lingering = True
        self._cancel_header_timer()
        self._unset_keepalive_if_required()
        now = self.loop.time()
        self._linger_until = now + self.limits.lingering_time_s
        self._last_read = now
        self.flow.read_paused = False  # reading resumes for good: what comes is discarded
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()  # after the response is flushed
        self._linger_timer = self.loop.call_later(self.limits.lingering_timeout_s, self._on_linger_timer)

    def _resume_lingering_read(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _on_linger_timer(self) -> None:
        now = self.loop.time()
        next_check = min(self._last_read + self.limits.lingering_timeout_s, self._linger_until)
        if now >= next_check:
            self._linger_timer = None
            self.transport.close()
        else:
            self._linger_timer = self.loop.call_later(next_check - now, self._on_linger_timer)


def create_edge_protocol(limits: EdgeLimits, hooks: EdgeHooks | None = None) -> type[EdgeProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``: bound to ``limits``, its own
    count of admitted connections (one per server) and a refusal counter."""

    class BoundEdgeProtocol(EdgeProtocol):
        pass

    BoundEdgeProtocol.limits = limits
    BoundEdgeProtocol.admitted = set()
    BoundEdgeProtocol.hooks = hooks or EdgeHooks()
    return BoundEdgeProtocol
