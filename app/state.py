"""What the front ends share: settings, metrics, the served models and the process lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from app.body_budget import BodyBudget
from app.config import Settings
from app.dataplane import DataPlane
from app.inference.control import ModelControl
from app.inference.errors import ModelNotFoundError, NotReadyError
from app.inference.model import ServedModel
from app.inference.registry import ModelRegistry
from app.inference.statistics import ModelStatistics
from app.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass
class Lifecycle:
    """Ready once the model is warm; draining from the first SIGTERM/SIGINT until exit.

    Written by the lifespan and by the server's signal handler (a plain flag, safe there).
    """

    ready: bool = False
    draining: bool = False
    draining_since: float | None = None
    # Called once, on the event loop, when draining starts (the gRPC server stops with HTTP).
    drain_hooks: list[Callable[[], None]] = field(default_factory=list)
    # Why the models could not be loaded at start, once logged in one line (no traceback then).
    startup_error: str | None = None

    @property
    def serving(self) -> bool:
        """Ready and not draining: what readiness probes report."""
        return self.ready and not self.draining

    def start_draining(self) -> None:
        if not self.draining:
            self.draining = True
            self.draining_since = time.monotonic()
            for hook in self.drain_hooks:
                hook()

    def seconds_left(self, drain_timeout_s: float) -> float:
        """Time left of the drain grace period (all of it when not draining)."""
        if self.draining_since is None:
            return drain_timeout_s
        return drain_timeout_s - (time.monotonic() - self.draining_since)


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    body_budget: BodyBudget
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    registry: ModelRegistry = field(default_factory=ModelRegistry)
    # Per model version: requests, queue and compute times (Triton's ModelStatistics).
    statistics: ModelStatistics = field(default_factory=ModelStatistics)
    control: ModelControl | None = None  # set by the lifespan once the models are loaded
    # Parses request framing (multipart) off the event loop; started and stopped by the lifespan.
    parse_pool: ThreadPoolExecutor | None = None
    dataplane: DataPlane | None = None  # built by the lifespan: the one request path
    _background: set[asyncio.Task[object]] = field(default_factory=set)

    def get_model(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The named model (or the default one); ``NotReadyError`` until the models are warm."""
        if not self.lifecycle.ready:
            raise NotReadyError("not ready: the model is loading")
        return self.registry.resolve(name, version)

    def get_dataplane(self) -> DataPlane:
        """The request path; ``NotReadyError`` before the lifespan has built it."""
        if self.dataplane is None:
            raise NotReadyError("not ready: the model is loading")
        return self.dataplane

    def served_models(self) -> list[ServedModel]:
        if not self.lifecycle.ready:
            raise NotReadyError("not ready: the model is loading")
        return self.registry.models()

    def check_ready(self) -> None:
        """``NotReadyError`` while loading, draining, or while the default model has no version."""
        if self.lifecycle.draining:
            raise NotReadyError("not ready: draining, the server is shutting down")
        if not self.lifecycle.ready:
            raise NotReadyError("not ready: the model is loading")
        with contextlib.suppress(ModelNotFoundError):  # several models, no default: requests name one
            self.registry.default()

    def request_rescan(self) -> None:
        """Rescan the model repository in the background (SIGHUP); call on the event loop."""
        if self.control is None or self.lifecycle.draining:
            logger.warning("rescan ignored: the server is starting or shutting down")
            return
        loaded_only = self.settings.model_control == "explicit"
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(self.control.rescan(loaded_only))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
