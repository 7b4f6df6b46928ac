"""The demo page as files over HTTP (in process): what is served, with which headers, to whom.

What the page does in a browser is tested in tests/e2e/test_page_browser.py.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from app.api.page import WEB_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = "page-key-123"
CSP = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
ASSETS = {
    "page.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The contract for anyone who automates the page (README, "Demo page").
TEST_IDS = {
    "file-input", "dropzone", "result-row", "label", "probability", "latency-ms", "model-version", "error",
    "explain-toggle", "cam-overlay", "cam-caption",
}  # fmt: skip


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_code: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in and data.strip():
            self.inline_code.append(data)


def parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


def test_the_page_and_its_files_are_served_with_the_security_headers(
    make_client: Callable[..., Any],
) -> None:
    with make_client() as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert {name: page.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
        assert page.text == (WEB_DIR / "index.html").read_text()
        for name, content_type in ASSETS.items():
            asset = client.get(f"/page-assets/{name}")
            assert (asset.status_code, asset.headers["content-type"]) == (200, content_type), name
            assert {key: asset.headers.get(key) for key in SECURITY_HEADERS} == SECURITY_HEADERS, name
            assert asset.content == (WEB_DIR / name).read_bytes()
            # Revalidation by ETag answers 304 without the body.
            again = client.get(f"/page-assets/{name}", headers={"If-None-Match": asset.headers["etag"]})
            assert (again.status_code, again.content) == (304, b"")
        head = client.head("/")
        assert (head.status_code, head.content, head.headers["content-length"]) == (
            200, b"", str(len(page.content)),
        )  # fmt: skip
        assert client.get("/page-assets/").status_code == 404
        assert client.get("/page-assets/../config.py").status_code == 404


def test_the_page_loads_only_its_own_files_by_relative_urls_and_has_no_inline_code(
    make_client: Callable[..., Any],
) -> None:
    with make_client() as client:
        html = client.get("/").text
        tags = parse(html)
        urls = [attrs[a] for _, attrs in tags.tags for a in ("src", "href") if attrs.get(a)]
        assert sorted(urls) == [
            "docs",
            "page-assets/favicon.svg",
            "page-assets/page.css",
            "page-assets/page.js",
        ]
        for url in urls:
            assert url and not url.startswith("/") and "://" not in url, url
            if url.startswith("page-assets/"):
                assert client.get(f"/{url}").status_code == 200, url
        # The CSP (default-src 'self') forbids inline script, inline style and event attributes.
        assert tags.inline_code == []
        assert not [(tag, a) for tag, attrs in tags.tags for a in attrs if a == "style" or a.startswith("on")]
        assert [attrs.get("src") for tag, attrs in tags.tags if tag == "script"] == ["page-assets/page.js"]
        test_ids = {attrs["data-testid"] for _, attrs in tags.tags if attrs.get("data-testid")}
        assert test_ids >= TEST_IDS
    script = (WEB_DIR / "page.js").read_text()
    requested = re.findall(r"send\(\s*[`\"']([^`\"']+)[`\"']", script)
    # relative: they work under any path
    assert requested == ["v1/models", "predict?top_k=${k}${explainParameter}"]
    for text in (script, (WEB_DIR / "page.css").read_text()):
        assert not re.search(r"https?:|url\(|@import", text)


def test_with_api_keys_the_page_needs_none_but_the_api_does(make_client: Callable[..., Any]) -> None:
    with make_client(api_keys=KEY) as client:
        assert client.get("/").status_code == 200
        for name in ASSETS:
            assert client.get(f"/page-assets/{name}").status_code == 200, name
        models = client.get("/v1/models")
        assert (models.status_code, models.json()) == (
            401, {"detail": "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"},
        )  # fmt: skip
        assert client.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200


def test_the_docs_link_to_the_page_and_demo_page_false_turns_both_off(
    make_client: Callable[..., Any],
) -> None:
    link = "[the demo page](./)"
    with make_client() as client:
        assert link in client.get("/openapi.json").json()["info"]["description"]
        assert "/" not in client.get("/openapi.json").json()["paths"]  # the page is not an API
    with make_client(demo_page=False) as client:
        assert client.get("/").status_code == 404
        assert client.get("/page-assets/page.js").status_code == 404
        assert link not in client.get("/openapi.json").json()["info"]["description"]
        assert client.get("/healthz").status_code == 200


def test_every_page_file_ships_in_the_package() -> None:
    """setuptools copies only what [tool.setuptools.package-data] names into a wheel."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["app"]
    files = sorted(p.relative_to(WEB_DIR.parent).as_posix() for p in WEB_DIR.iterdir())
    assert files == ["web/favicon.svg", "web/index.html", "web/page.css", "web/page.js"]
    assert [f for f in files if not any(fnmatch.fnmatch(f, pattern) for pattern in patterns)] == []
