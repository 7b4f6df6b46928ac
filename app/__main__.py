"""``python -m app`` / ``imgserve``: read the settings, then serve with uvicorn (one process)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from pydantic import ValidationError

from app.config import Settings
from app.logs import configure_logging
from app.main import create_app
from app.server import create_server

logger = logging.getLogger("app")


def describe_settings_errors(exc: ValidationError) -> str:
    lines = [f"invalid settings ({exc.error_count()} error(s)):"]
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        name = f"IMGSERVE_{field.upper()}" if field else "settings"
        message = error["msg"].removeprefix("Value error, ")
        shown = "" if not field or "api_keys" in field else f" (got {error.get('input')!r})"
        lines.append(f"  {name}: {message}{shown}")
    return "\n".join(lines)


# The client's command line (imgserve-client) reads IMGSERVE_CLIENT_URL and IMGSERVE_CLIENT_API_KEY:
# a shell that runs both is not a typo.
CLIENT_PREFIX = "IMGSERVE_CLIENT_"


def unknown_setting_names(environ: Mapping[str, str]) -> list[str]:
    known = {f"IMGSERVE_{name.upper()}" for name in Settings.model_fields}
    return sorted(
        name
        for name in environ
        if name.upper().startswith("IMGSERVE_")
        and not name.upper().startswith(CLIENT_PREFIX)
        and name.upper() not in known
    )


def main() -> None:
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.exit(describe_settings_errors(exc))
    configure_logging(settings.log_level)
    logger.info("starting", extra={"settings": settings.public_summary()})
    for name in unknown_setting_names(os.environ):
        logger.warning("ignoring %s: not a setting (a typo?)", name)
    server = create_server(create_app(settings), settings)
    server.run()
    if server.started is False:
        sys.exit(3)


if __name__ == "__main__":
    main()
