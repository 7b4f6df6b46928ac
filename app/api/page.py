"""The demo page: ``GET /`` serves one page (HTML, CSS and JavaScript shipped in ``app/web``)
that classifies photos through ``POST /predict`` and shows the top-k as bars.

The page and its files are public even when API keys are on: they are the same static files
for everyone and hold no data. The page asks for a key when the API answers 401, keeps it in
memory and sends it as ``X-API-Key`` with its own requests.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.staticfiles import StaticFiles
from starlette.staticfiles import PathLike
from starlette.types import Scope

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
PAGE_ASSETS = "/page-assets"

# Nothing from another origin, no inline script or style. Thumbnails are object URLs of the
# photos the user chose (blob:), which only this page's own script can create.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate each time (cheap: ETag / 304), so an upgraded server never runs old JavaScript.
    "Cache-Control": "no-cache",
}


class PageAssets(StaticFiles):
    """``app/web`` with the page's security and caching headers on every file."""

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(PAGE_HEADERS)
        return response


def add_page(app: FastAPI) -> None:
    """``GET /`` (the page) and ``/page-assets/*`` (its CSS, JavaScript and icon), no key needed."""
    html = (WEB_DIR / "index.html").read_bytes()
    app.mount(PAGE_ASSETS, PageAssets(directory=WEB_DIR), name="page-assets")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> Response:
        return Response(html, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
