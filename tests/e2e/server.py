"""The e2e tests' way to run the real server: the model and settings as keyword arguments.

Starting, waiting and stopping live in ``harness.server.ServerProcess``; this only fixes
what the e2e tests want: none of the developer's ``IMGSERVE_*``, info-level request logs (the
tests read them), two minutes to get ready, and a stop on the way out whatever happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.server import ServerProcess, free_port


@contextmanager
def run_server(
    model_path: Path, log_dir: Path, ready_timeout_s: float = 120, **settings: Any
) -> Iterator[ServerProcess]:
    """A ready server with ``IMGSERVE_<NAME>=value`` for each ``name=value`` in ``settings``."""
    env = {"IMGSERVE_MODEL_PATH": str(model_path), "IMGSERVE_LOG_LEVEL": "info"}
    env |= {f"IMGSERVE_{name.upper()}": str(value) for name, value in settings.items()}
    port = free_port()
    server = ServerProcess(env, log_dir / f"server-{port}.log", port, inherit_settings=False)
    server.start(ready_timeout_s, probe_timeout_s=1)
    try:
        yield server
    finally:
        server.stop(timeout_s=30)


def metric_value(metrics_text: str, name: str) -> float:
    """The value of one unlabelled sample in Prometheus text."""
    for line in metrics_text.splitlines():
        if line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)
