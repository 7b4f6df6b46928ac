"""uvicorn with a drain-correct shutdown.

On the first SIGTERM/SIGINT: readiness turns 503 and the listening socket closes at once, so
a new connection is refused, which a load balancer retries on another replica (safe: nothing
was sent). Connections already open are still served for ``shutdown_delay_s``, every response
carrying ``Connection: close``, so keep-alive clients (nginx's upstream pool) retire them after
a complete exchange instead of racing a close. Then uvicorn's own graceful shutdown runs: it
lets in-flight requests finish (their queued images run) for up to the rest of
``drain_timeout_s``, and the lifespan stops the batcher. A second signal skips the delay.

Why not keep accepting during the delay: with ``Connection: close`` on every response, a
load balancer opens a new connection per request, and the ones still in the kernel's accept
queue when the socket finally closes are reset after the request was sent: a POST that
must not be retried fails (seen as nginx 502s, about one stop in five). Kubernetes' preStop
pause, which runs before SIGTERM, is the window for endpoint removal to propagate.

SIGHUP rescans the model repository (``on_sighup``): new versions load and swap in live.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI
from uvicorn.lifespan.on import LifespanOn

from app.config import Settings
from app.edge import EdgeHooks, EdgeLimits, create_edge_protocol
from app.metrics import Metrics
from app.state import Lifecycle

if TYPE_CHECKING:
    from uvicorn.lifespan.on import LifespanSendMessage

logger = logging.getLogger(__name__)

# File descriptors kept for what is not a client connection: the model files, the listening
# sockets, gRPC, the log, the decode threads' files.
_FILES_RESERVE = 128

# Kept back from uvicorn's graceful timeout for the lifespan shutdown (stopping the batcher).
_LIFESPAN_SHUTDOWN_RESERVE_S = 1.0


class _StartupLifespan(LifespanOn):
    """uvicorn's lifespan, except that a startup failure the app already logged in one line
    (``Lifecycle.startup_error``: a model that cannot load, CUDA required but missing) is not
    logged again as a traceback; anything else still is."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle

    async def send(self, message: LifespanSendMessage) -> None:
        if message["type"] == "lifespan.startup.failed" and self.lifecycle.startup_error is not None:
            message = {"type": "lifespan.startup.failed", "message": ""}
        await super().send(message)


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose exit waits ``shutdown_delay_s`` after marking the app draining."""

    def __init__(
        self,
        config: uvicorn.Config,
        lifecycle: Lifecycle,
        shutdown_delay_s: float,
        on_sighup: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.shutdown_delay_s = shutdown_delay_s
        self.on_sighup = on_sighup
        self._exit_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        if type(self.lifespan) is LifespanOn:
            self.lifespan = _StartupLifespan(self.config, self.lifecycle)
        if self.on_sighup is not None:  # before the models load: SIGHUP's default action is to exit
            self._loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._exit_at is None:
            self._exit_at = time.monotonic() + self.shutdown_delay_s
            if self._loop is None:  # a signal before startup: nothing to drain
                self.should_exit = True
            else:
                # Not at the next on_tick (up to 0.1 s away): every response from then on says
                # Connection: close, and the reconnections it causes must find no listener.
                self._loop.call_soon_threadsafe(self._begin_draining, signal.Signals(sig).name)
        elif self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    def _begin_draining(self, signal_name: str) -> None:
        for server in self.servers:
            server.close()  # stop listening first; uvicorn's shutdown() closes again harmlessly
        self.lifecycle.start_draining()
        logger.info(
            "draining: not ready, not listening, closing connections after each response",
            extra={"signal": signal_name, "shutdown_delay_s": self.shutdown_delay_s},
        )

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


def edge_limits(settings: Settings) -> EdgeLimits:
    return EdgeLimits(
        header_timeout_s=settings.header_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_header_count=settings.max_header_count,
        max_connections=settings.max_connections,
        lingering_time_s=settings.lingering_time_s,
        lingering_timeout_s=settings.lingering_timeout_s,
        send_timeout_s=settings.send_timeout_s,
    )


def raise_open_files_limit(max_connections: int) -> None:
    """Raise the soft open-files limit towards the hard one when ``max_connections`` does not
    fit (containers often start at 1,024), and warn when it still does not: past the limit,
    accept() fails and every new client, probes included, is dropped before the cap answers."""
    needed = max_connections + _FILES_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError) as exc:
        logger.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    if soft < needed:
        logger.warning(
            "the open-files limit (%d) is below max_connections + %d (%d): raise it (ulimit -n) "
            "or lower IMGSERVE_MAX_CONNECTIONS",
            soft,
            _FILES_RESERVE,
            needed,
        )


def create_server(app: FastAPI, settings: Settings) -> DrainingServer:
    """One process (batching is per process), uvloop and httptools (app/edge.py's protocol)."""
    # HTTP connections, then gRPC's (when it is on): both take descriptors from one limit.
    raise_open_files_limit(
        settings.max_connections + (settings.grpc_max_connections if settings.grpc_port else 0)
    )
    state = app.state.imgserve
    metrics: Metrics = state.metrics
    graceful_s = max(
        1, int(settings.drain_timeout_s - settings.shutdown_delay_s - _LIFESPAN_SHUTDOWN_RESERVE_S)
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",
        http=create_edge_protocol(edge_limits(settings), EdgeHooks(on_refusal=_count_refusal(metrics))),
        ws="none",  # no WebSocket routes; an upgrade would also leave the edge's connection count
        lifespan="on",
        log_config=None,
        access_log=False,  # app.middleware logs one JSON line per request instead
        server_header=False,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=graceful_s,
        workers=1,
    )
    server = DrainingServer(
        config, state.lifecycle, settings.shutdown_delay_s, on_sighup=state.request_rescan
    )
    metrics.http_connections.set_function(lambda: len(server.server_state.connections))
    return server


def _count_refusal(metrics: Metrics) -> Callable[[str], None]:
    def count(reason: str) -> None:
        metrics.edge_refusals.labels(reason).inc()

    return count
