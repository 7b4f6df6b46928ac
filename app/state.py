"""What the routes share: settings, metrics, the pipeline and the process lifecycle."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.config import Settings
from app.errors import UnavailableError
from app.inference.pipeline import Pipeline
from app.metrics import Metrics


@dataclass
class Lifecycle:
    """Ready once the model is warm; draining from the first SIGTERM/SIGINT until exit.

    Written by the lifespan and by the server's signal handler (a plain flag, safe there).
    """

    ready: bool = False
    draining: bool = False
    draining_since: float | None = None

    def start_draining(self) -> None:
        if not self.draining:
            self.draining = True
            self.draining_since = time.monotonic()

    def seconds_left(self, drain_timeout_s: float) -> float:
        """Time left of the drain grace period (all of it when not draining)."""
        if self.draining_since is None:
            return drain_timeout_s
        return drain_timeout_s - (time.monotonic() - self.draining_since)


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    pipeline: Pipeline | None = None

    def get_pipeline(self) -> Pipeline:
        if self.pipeline is None or not self.lifecycle.ready:
            raise UnavailableError("not ready: the model is loading")
        return self.pipeline
