"""uvicorn with a drain-correct shutdown.

On the first SIGTERM/SIGINT: readiness turns 503 at once and every response carries
``Connection: close``; for ``shutdown_delay_s`` the server keeps accepting (load balancers need
that window to stop sending); then uvicorn's own graceful shutdown runs: it stops listening,
lets in-flight requests finish (their queued images run) for up to the rest of
``drain_timeout_s``, and the lifespan stops the batcher. A second signal skips the delay.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.state import Lifecycle

logger = logging.getLogger(__name__)

# Kept back from uvicorn's graceful timeout for the lifespan shutdown (stopping the batcher).
_LIFESPAN_SHUTDOWN_RESERVE_S = 1.0


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose exit waits ``shutdown_delay_s`` after marking the app draining."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, shutdown_delay_s: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.shutdown_delay_s = shutdown_delay_s
        self._stop_listening_at: float | None = None
        self._drain_logged = False
        self._signal_name = ""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only set flags here; on_tick (on the loop) acts on them.
        if self._stop_listening_at is None:
            self.lifecycle.start_draining()
            self._stop_listening_at = time.monotonic() + self.shutdown_delay_s
            self._signal_name = signal.Signals(sig).name
        elif self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._stop_listening_at is not None:
            if not self._drain_logged:
                self._drain_logged = True
                logger.info(
                    "draining: not ready, closing connections after each response",
                    extra={"signal": self._signal_name, "shutdown_delay_s": self.shutdown_delay_s},
                )
            if time.monotonic() >= self._stop_listening_at:
                self.should_exit = True
        return await super().on_tick(counter)


def create_server(app: FastAPI, settings: Settings) -> DrainingServer:
    """One process (batching is per process), uvloop and httptools when installed."""
    graceful_s = max(
        1, int(settings.drain_timeout_s - settings.shutdown_delay_s - _LIFESPAN_SHUTDOWN_RESERVE_S)
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",
        http="auto",
        lifespan="on",
        log_config=None,
        access_log=False,  # app.middleware logs one JSON line per request instead
        server_header=False,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=graceful_s,
        workers=1,
    )
    return DrainingServer(config, app.state.imgserve.lifecycle, settings.shutdown_delay_s)
