"""JSON-lines logging: one object per line, extras as top-level keys."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts, level, logger, message, extras, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    """Send every logger (uvicorn's included) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


access_logger = logging.getLogger("app.access")


def log_access(
    *,
    request_id: str,
    method: str,
    path: str,
    route: str,
    protocol: str,
    status: int | str,
    images: int,
    seconds: float,
    client: str | None,
) -> None:
    """The one access-log line of a request, whatever its protocol."""
    access_logger.info(
        "request",
        extra={
            "request_id": request_id,
            "method": method,
            "path": path,
            "route": route,
            "protocol": protocol,
            "status": status,
            "images": images,
            "latency_ms": round(seconds * 1000, 3),
            "client": client,
        },
    )
