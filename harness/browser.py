"""Debian's Chromium, driven by Playwright (Python), for the demo page's tests and benchmark.

Playwright cannot download its own browser build here (nor in CI), so this launches the
system binary from Debian's ``chromium`` package (``apt-get install chromium``; the test
command installs it as it installs nginx), headless, with nothing that phones home.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from playwright.sync_api import Browser, sync_playwright

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",  # root in CI containers, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
# A camera that shows a test pattern, and camera permission granted without a prompt.
FAKE_CAMERA_ARGS = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


def find_chromium() -> str | None:
    """The system Chromium's path, or None when the package is not installed."""
    found = next((path for path in CHROMIUM_CANDIDATES if os.access(path, os.X_OK)), None)
    return found or shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def launch_chromium(extra_args: Sequence[str] = ()) -> Iterator[Browser]:
    """A headless Chromium (the system binary); closed, with Playwright's driver, on the way out."""
    executable = find_chromium()
    if executable is None:
        raise RuntimeError("no chromium binary: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=[*CHROMIUM_ARGS, *extra_args]
        )
        try:
            yield browser
        finally:
            browser.close()
