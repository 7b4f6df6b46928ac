"""The demo page in a real browser: Debian's Chromium, headless, driven by Playwright, against
real server processes on 127.0.0.1 (and once through the shipped nginx configuration).

Each test reads what the page shows through its data-testid contract and compares it with
what POST /predict answers for the same file. Skipped only where Debian's chromium package is
not installed (scripts/test.sh installs it when run as root).
"""

from __future__ import annotations

import base64
import io
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Request, Route, expect
from skimage import data

from harness.browser import FAKE_CAMERA_ARGS, find_chromium, launch_chromium
from harness.metrics import read_metrics
from harness.nginx import Nginx, find_nginx
from harness.server import ServerProcess
from harness.tiny_model import tiny_card, write_model
from tests.conftest import StartServer

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="Debian's chromium package is not installed (scripts/test.sh installs it as root: "
    "apt-get install chromium)",
)

# The server the photo tests use: the default model, limits small enough to hit quickly.
PHOTO_SERVER = {
    "max_upload_bytes": 3_000_000,
    "max_images_per_request": 4,
    "allowed_formats": "JPEG,PNG,WEBP,GIF",  # BMP left out: the 415 test sends one
    "max_batch_size": 8,
    "warmup_batch_sizes": "1,8",
    "decode_threads": 1,
    "intra_op_threads": 1,
}
KEY = "page-test-key-4f1c"
RESULTS_TIMEOUT_MS = 30_000


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


CHELSEA = encode(Image.fromarray(data.chelsea()), "JPEG", quality=90)
COFFEE = encode(Image.fromarray(data.coffee()), "JPEG", quality=90)
ROCKET = encode(Image.fromarray(data.rocket()), "JPEG", quality=90)


def solid_png(rgb: tuple[int, int, int]) -> bytes:
    return encode(Image.new("RGB", (48, 48), rgb), "PNG")


def payload(name: str, content: bytes, mime: str = "image/jpeg") -> dict[str, Any]:
    return {"name": name, "mimeType": mime, "buffer": content}


def artifact_dir(tmp_path: Path) -> Path:
    """IMGSERVE_TEST_ARTIFACTS if set (CI keeps it), else the test's own temporary folder."""
    folder = Path(os.environ.get("IMGSERVE_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium(FAKE_CAMERA_ARGS) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def photo_server(default_model_path: Path, start_module_server: StartServer) -> ServerProcess:
    return start_module_server(default_model_path, **PHOTO_SERVER)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("page-tiny"), tiny_card())


@pytest.fixture(scope="module")
def keyed_server(tiny_model: Path, start_module_server: StartServer) -> ServerProcess:
    return start_module_server(tiny_model, api_keys=KEY, warmup_batch_sizes="1")


@pytest.fixture(scope="module")
def busy_server(tiny_model: Path, start_module_server: StartServer) -> ServerProcess:
    """A queue of one image that a batch holds for 4 s: a second image gets 503 + Retry-After."""
    settings = {
        "batch_policy": "fixed",
        "max_delay_ms": 4000,
        "max_batch_size": 2,
        "max_queue_images": 1,
        "max_images_per_request": 1,
        "warmup_batch_sizes": "1",
    }
    return start_module_server(tiny_model, **settings)


@dataclass
class Watched:
    """A page with everything it did: console errors, uncaught errors and every request."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def record_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"console {message.type}: {message.text}")

    def predict_requests(self) -> list[Request]:
        return [r for r in self.requests if urlsplit(r.url).path.endswith("/predict")]


@contextmanager
def open_page(browser: Browser, base_url: str, **context_options: Any) -> Iterator[Watched]:
    """A fresh browser context on the page, once it has asked the server for the model."""
    context = browser.new_context(**context_options)
    watched = Watched(context, context.new_page())
    watched.page.on("console", watched.record_console)
    watched.page.on("pageerror", lambda exc: watched.errors.append(f"page error: {exc}"))
    watched.page.on("request", lambda request: watched.requests.append(request))
    try:
        watched.page.goto(f"{base_url}/")
        yield watched
    finally:
        context.close()


def wait_model_info(page: Page) -> None:
    expect(page.get_by_test_id("model-info")).to_contain_text(" version ")


def wait_results(page: Page, count: int) -> list[dict[str, Any]]:
    """The cards once every one of ``count`` is done or failed, as the data-testids show them."""
    page.wait_for_function(
        """n => { const cards = document.querySelectorAll('[data-testid=result]');
                  return cards.length === n && [...cards].every(c => c.dataset.state !== 'pending'); }""",
        arg=count,
        timeout=RESULTS_TIMEOUT_MS,
    )
    cards: list[dict[str, Any]] = page.evaluate(
        """() => [...document.querySelectorAll('[data-testid=result]')].map(card => {
             const texts = id => [...card.querySelectorAll(`[data-testid=${id}]`)].map(e => e.textContent);
             const img = card.querySelector('[data-testid=thumbnail]');
             return {filename: card.dataset.filename, state: card.dataset.state,
                     status: card.querySelector('[data-testid=status]').textContent,
                     rows: card.querySelectorAll('[data-testid=result-row]').length,
                     labels: texts('label'), probabilities: texts('probability'),
                     model: texts('model-name')[0], version: texts('model-version')[0],
                     latency: texts('latency-ms')[0],
                     thumbnail: img.hidden ? null : {src: img.src, width: img.naturalWidth}};
           })"""
    )
    return cards


def predict(base_url: str, files: list[tuple[str, bytes]], top_k: int = 5, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/predict?top_k={top_k}",
        files=[("file", (name, content)) for name, content in files],
        headers=headers,
        timeout=60,
    )


def assert_card_shows(card: dict[str, Any], name: str, body: dict[str, Any], index: int = 0) -> None:
    """The card shows exactly /predict's answer for the same file: labels, percentages, model."""
    top_k = body["predictions"][index]["top_k"]
    assert card["filename"] == name and card["state"] == "done"
    assert card["rows"] == len(top_k)
    assert card["labels"] == [score["label"] for score in top_k]
    assert card["probabilities"] == [f"{score['probability'] * 100:.1f}%" for score in top_k]
    assert (card["model"], card["version"]) == (body["model"], body["model_version"])
    assert card["latency"].isdigit() and int(card["latency"]) > 0


def percentages(card: dict[str, Any]) -> list[float]:
    return [float(text.rstrip("%")) for text in card["probabilities"]]


def error_text(page: Page) -> str:
    error = page.get_by_test_id("error")
    expect(error).to_be_visible()
    return error.inner_text().strip()


# ---- the photo flows ----------------------------------------------------------------------


def test_a_photo_from_the_picker_shows_the_top_5_of_predict(
    browser: Browser, photo_server: ServerProcess, tmp_path: Path
) -> None:
    expected = predict(photo_server.base_url, [("chelsea.jpg", CHELSEA)]).json()
    with open_page(browser, photo_server.base_url, viewport={"width": 1000, "height": 760}) as watched:
        page = watched.page
        wait_model_info(page)
        assert page.get_by_test_id("model-info").inner_text() == (
            "efficientnet_lite0-imagenet1k version 1 · 1000 classes · up to 4 images per request · CPU · fp32"
        )
        page.get_by_test_id("file-input").set_input_files([payload("chelsea.jpg", CHELSEA)])
        (card,) = wait_results(page, 1)
        screenshot = artifact_dir(tmp_path) / "page-results.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"\nscreenshot of the page with results: {screenshot}")

        assert_card_shows(card, "chelsea.jpg", expected)
        assert card["rows"] == 5
        assert card["labels"][0] == expected["predictions"][0]["top_k"][0]["label"]
        assert card["labels"][0] in {"tabby", "tiger cat", "Egyptian cat"}
        assert percentages(card) == sorted(percentages(card), reverse=True)
        assert card["thumbnail"]["src"].startswith("blob:") and card["thumbnail"]["width"] == 451
        # The bars' lengths are the probabilities.
        widths = page.eval_on_selector_all(
            "[data-testid=result-row] .fill", "fills => fills.map(f => parseFloat(f.style.width))"
        )
        assert widths == [round(s["probability"] * 100, 2) for s in expected["predictions"][0]["top_k"]]
        assert page.get_by_test_id("error").is_hidden()
        assert len(watched.predict_requests()) == 1
        assert watched.errors == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def drop(page: Page, files: list[tuple[str, bytes, str]]) -> list[bool]:
    """A synthetic drag and drop onto the drop zone; the zone's highlight after each event."""
    result: list[bool] = page.evaluate(
        """async files => {
             const transfer = new DataTransfer();
             for (const [name, b64, type] of files) {
               const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
               transfer.items.add(new File([bytes], name, {type}));
             }
             const zone = document.querySelector('[data-testid=dropzone]');
             const highlighted = [];
             for (const type of ['dragenter', 'dragover', 'drop']) {
               const init = {bubbles: true, cancelable: true, dataTransfer: transfer};
               zone.dispatchEvent(new DragEvent(type, init));
               highlighted.push(zone.classList.contains('dragging'));
             }
             return highlighted;
           }""",
        [[name, base64.b64encode(content).decode(), mime] for name, content, mime in files],
    )
    return result


def test_a_dropped_photo_is_classified(browser: Browser, photo_server: ServerProcess) -> None:
    expected = predict(photo_server.base_url, [("coffee.jpg", COFFEE)]).json()
    with open_page(browser, photo_server.base_url) as watched:
        wait_model_info(watched.page)
        assert drop(watched.page, [("coffee.jpg", COFFEE, "image/jpeg")]) == [True, True, False]
        (card,) = wait_results(watched.page, 1)
        assert_card_shows(card, "coffee.jpg", expected)
        assert card["labels"][0] == "espresso"
        assert watched.errors == []


def test_a_pasted_image_is_classified(browser: Browser, photo_server: ServerProcess) -> None:
    image = solid_png((30, 60, 200))
    expected = predict(photo_server.base_url, [("image.png", image)]).json()
    with open_page(browser, photo_server.base_url) as watched:
        wait_model_info(watched.page)
        watched.page.evaluate(
            """b64 => {
                 const transfer = new DataTransfer();
                 const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                 transfer.items.add(new File([bytes], 'image.png', {type: 'image/png'}));
                 const init = {clipboardData: transfer, bubbles: true};
                 document.body.dispatchEvent(new ClipboardEvent('paste', init));
               }""",
            base64.b64encode(image).decode(),
        )
        (card,) = wait_results(watched.page, 1)
        assert_card_shows(card, "image.png", expected)
        assert watched.errors == []


def test_several_photos_go_in_one_request_and_show_as_a_grid(
    browser: Browser, photo_server: ServerProcess
) -> None:
    files = [("chelsea.jpg", CHELSEA), ("coffee.jpg", COFFEE), ("rocket.jpg", ROCKET)]
    expected = predict(photo_server.base_url, files).json()
    with open_page(browser, photo_server.base_url, viewport={"width": 1200, "height": 800}) as watched:
        page = watched.page
        wait_model_info(page)
        page.get_by_test_id("file-input").set_input_files([payload(n, c) for n, c in files])
        cards = wait_results(page, 3)
        for index, (name, _) in enumerate(files):
            assert_card_shows(cards[index], name, expected, index)
        assert len(watched.predict_requests()) == 1
        # A grid: the three cards side by side on a wide screen.
        tops = page.eval_on_selector_all(
            "[data-testid=result]", "cs => cs.map(c => c.getBoundingClientRect().top)"
        )
        assert len(set(tops)) == 1, tops

        # More photos than one request may carry (4 here): split over requests, every card filled.
        five = [*files, ("chelsea-2.jpg", CHELSEA), ("coffee-2.jpg", COFFEE)]
        page.get_by_test_id("file-input").set_input_files([payload(n, c) for n, c in five])
        cards = wait_results(page, 5)
        assert [c["filename"] for c in cards] == [n for n, _ in five]
        assert [c["labels"][0] for c in cards] == [
            *(p["top_k"][0]["label"] for p in expected["predictions"]),
            cards[0]["labels"][0],
            cards[1]["labels"][0],
        ]
        assert all(c["state"] == "done" and c["rows"] == 5 for c in cards)
        assert len(watched.predict_requests()) == 3  # 1, then 4 + 1
        assert watched.errors == []


def test_top_k_is_adjustable(browser: Browser, photo_server: ServerProcess) -> None:
    expected = predict(photo_server.base_url, [("chelsea.jpg", CHELSEA)], top_k=3).json()
    with open_page(browser, photo_server.base_url) as watched:
        page = watched.page
        wait_model_info(page)
        expect(page.get_by_test_id("top-k")).to_have_value("5")
        page.get_by_test_id("file-input").set_input_files([payload("chelsea.jpg", CHELSEA)])
        assert wait_results(page, 1)[0]["rows"] == 5
        page.get_by_test_id("top-k").fill("3")
        page.get_by_test_id("top-k").dispatch_event("change")  # the photo shown is asked again
        page.wait_for_function("() => document.querySelectorAll('[data-testid=result-row]').length === 3")
        (card,) = wait_results(page, 1)
        assert_card_shows(card, "chelsea.jpg", expected)
        assert [urlsplit(r.url).query for r in watched.predict_requests()] == ["top_k=5", "top_k=3"]


# ---- errors in words ----------------------------------------------------------------------

ERROR_CASES = {
    "not-an-image": ("notes.txt", b"shopping list: milk, eggs\n", 422, "Not an image"),
    "unsupported-format": (
        "chelsea.bmp",
        encode(Image.fromarray(data.chelsea()), "BMP"),
        415,
        "Unsupported format",
    ),
    "too-large": ("huge.jpg", b"\xff\xd8" + os.urandom(3_100_000), 413, "Too large"),
}


def same_body_size(message: str) -> str:
    return re.sub(r"request body is \d+ bytes", "request body is N bytes", message)


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_errors_are_shown_in_words_from_the_servers_detail(
    browser: Browser, photo_server: ServerProcess, case: str, tmp_path: Path
) -> None:
    name, content, status, title = ERROR_CASES[case]
    answer = predict(photo_server.base_url, [(name, content)])
    assert answer.status_code == status
    with open_page(browser, photo_server.base_url) as watched:
        page = watched.page
        wait_model_info(page)
        (tmp_path / name).write_bytes(content)  # the browser takes its type from the extension
        page.get_by_test_id("file-input").set_input_files(tmp_path / name)
        (card,) = wait_results(page, 1)
        # A multipart body's size depends on the client's boundary: compare the rest exactly.
        assert same_body_size(error_text(page)) == same_body_size(f"{title}: {answer.json()['detail']}")
        assert (card["state"], card["status"], card["rows"]) == ("failed", "Not classified", 0)
        # The page recovers: the next photo is classified and the message goes away.
        page.get_by_test_id("file-input").set_input_files([payload("chelsea.jpg", CHELSEA)])
        (card,) = wait_results(page, 1)
        assert card["state"] == "done" and page.get_by_test_id("error").is_hidden()


def test_a_network_error_is_shown(browser: Browser, photo_server: ServerProcess) -> None:
    with open_page(browser, photo_server.base_url) as watched:
        page = watched.page
        wait_model_info(page)
        page.route("**/predict*", lambda route: route.abort("connectionrefused"))
        page.get_by_test_id("file-input").set_input_files([payload("chelsea.jpg", CHELSEA)])
        (card,) = wait_results(page, 1)
        assert error_text(page) == "Network error: the server could not be reached (Failed to fetch)"
        assert card["state"] == "failed"


# ---- what the page loads ------------------------------------------------------------------


def test_nothing_outside_127_0_0_1_is_requested_and_the_console_stays_clean(
    browser: Browser, photo_server: ServerProcess
) -> None:
    seen: list[str] = []
    blocked: list[str] = []

    def only_local(route: Route) -> None:
        seen.append(route.request.url)
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("blockedbyclient")

    context = browser.new_context()
    try:
        context.route("**/*", only_local)
        page = context.new_page()
        errors: list[str] = []
        page.on(
            "console",
            lambda m: errors.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.goto(f"{photo_server.base_url}/")
        wait_model_info(page)
        page.get_by_test_id("file-input").set_input_files([payload("chelsea.jpg", CHELSEA)])
        assert wait_results(page, 1)[0]["state"] == "done"
        # The CSP is in force: a foreign image and an inline script are refused by the browser.
        violations = page.evaluate(
            """async () => {
                 const seen = [];
                 document.addEventListener('securitypolicyviolation', e => seen.push(e.violatedDirective));
                 const img = new Image();
                 img.src = 'https://example.com/pixel.png';
                 document.body.append(img);
                 const script = document.createElement('script');
                 script.textContent = 'window.inlineRan = true';
                 document.body.append(script);
                 await new Promise(r => setTimeout(r, 300));
                 return {seen: seen.sort(), inlineRan: window.inlineRan === true};
               }"""
        )
    finally:
        context.close()
    assert violations == {"seen": ["img-src", "script-src-elem"], "inlineRan": False}
    assert blocked == []
    paths = sorted({urlsplit(url).path for url in seen})
    assert paths == ["/", "/page-assets/favicon.svg", "/page-assets/page.css", "/page-assets/page.js",
                     "/predict", "/v1/models"]  # fmt: skip
    # The only console errors are the two the test provoked on purpose, after the page's work.
    assert [e for e in errors if "Content Security Policy" not in e] == []
    assert len(errors) == 2, errors


def test_the_docs_link_to_the_page(browser: Browser, photo_server: ServerProcess) -> None:
    with open_page(browser, photo_server.base_url) as watched:
        watched.page.goto(f"{photo_server.base_url}/docs")
        with watched.context.expect_page() as opened:  # Swagger UI opens description links in a new tab
            watched.page.get_by_role("link", name="the demo page").click()
        page = opened.value
        expect(page.get_by_test_id("dropzone")).to_be_visible()
        assert page.url == f"{photo_server.base_url}/"


# ---- keyboard, phone, camera --------------------------------------------------------------


def test_keyboard_only_the_drop_zone_opens_the_picker(browser: Browser, photo_server: ServerProcess) -> None:
    photos = {"Enter": ("chelsea.jpg", CHELSEA), " ": ("coffee.jpg", COFFEE)}
    with open_page(browser, photo_server.base_url) as watched:
        page = watched.page
        # Playwright turns on file-chooser interception when a listener exists, without waiting
        # for the browser to confirm: listen early, or the first chooser can open before it is on.
        page.on("filechooser", lambda chooser: None)
        wait_model_info(page)
        for _ in range(5):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.dataset.testid") == "dropzone":
                break
        assert page.evaluate("document.activeElement.dataset.testid") == "dropzone"
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline == "solid"  # the focus is visible
        for key, (name, content) in photos.items():
            with page.expect_file_chooser() as chooser:
                page.keyboard.press(key)
            assert chooser.value.is_multiple()
            chooser.value.set_files([payload(name, content)])
            page.wait_for_function(
                "n => document.querySelector('[data-testid=result]').dataset.filename === n", arg=name
            )
            (card,) = wait_results(page, 1)
            assert_card_shows(card, name, predict(photo_server.base_url, [(name, content)]).json())
            assert page.evaluate("document.activeElement.dataset.testid") == "dropzone"  # focus stays


def test_phone_width_nothing_overflows(browser: Browser, photo_server: ServerProcess, tmp_path: Path) -> None:
    phone = {
        "viewport": {"width": 375, "height": 740},
        "is_mobile": True,
        "has_touch": True,
        "device_scale_factor": 2,
    }
    with open_page(browser, photo_server.base_url, **phone) as watched:
        page = watched.page
        wait_model_info(page)
        page.get_by_test_id("file-input").set_input_files(
            [payload("chelsea.jpg", CHELSEA), payload("coffee.jpg", COFFEE)]
        )
        cards = wait_results(page, 2)
        assert [c["state"] for c in cards] == ["done", "done"]
        page.screenshot(path=str(artifact_dir(tmp_path) / "page-phone.png"), full_page=True)
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 375
        boxes = page.eval_on_selector_all(
            "[data-testid=result], [data-testid=result-row] .bar, [data-testid=dropzone]",
            "els => els.map(e => e.getBoundingClientRect()).map(r => [r.left, r.right, r.width])",
        )
        assert all(left >= 0 and right <= 375 and width > 0 for left, right, width in boxes), boxes
        # One column: the second card is below the first.
        tops = page.eval_on_selector_all(
            "[data-testid=result]", "cs => cs.map(c => c.getBoundingClientRect().top)"
        )
        assert tops[1] > tops[0]


def test_a_camera_snapshot_is_classified_where_a_camera_is_offered(
    browser: Browser, photo_server: ServerProcess
) -> None:
    # Chromium's fake camera (FAKE_CAMERA_ARGS) shows a moving test pattern.
    with open_page(browser, photo_server.base_url, permissions=["camera"]) as watched:
        page = watched.page
        wait_model_info(page)
        page.get_by_test_id("camera-button").click()
        expect(page.get_by_test_id("camera")).to_be_visible()
        page.wait_for_function("() => document.getElementById('camera-video').videoWidth > 0")
        page.get_by_test_id("camera-snap").click()
        (card,) = wait_results(page, 1)
        assert re.fullmatch(r"camera-[0-9TZ-]+\.jpg", card["filename"]), card["filename"]
        assert card["state"] == "done" and card["rows"] == 5 and card["thumbnail"]["width"] > 0
        (request,) = watched.predict_requests()
        assert request.response().status == 200  # type: ignore[union-attr]
        page.get_by_role("button", name="Close camera").click()
        expect(page.get_by_test_id("camera")).to_be_hidden()
        assert watched.errors == []

    # Where the browser offers no camera API (plain http on another host), no camera button.
    with open_page(browser, photo_server.base_url) as watched:
        watched.page.add_init_script("Object.defineProperty(navigator, 'mediaDevices', {value: undefined})")
        watched.page.reload()
        wait_model_info(watched.page)
        expect(watched.page.get_by_test_id("camera-button")).to_be_hidden()
        expect(watched.page.get_by_test_id("dropzone")).to_be_visible()


# ---- busy: 503 + Retry-After ---------------------------------------------------------------


@contextmanager
def holding_the_queue(server: ServerProcess) -> Iterator[list[int]]:
    """Another client's image fills the queue of one (the fixed policy holds it 4 s)."""
    statuses: list[int] = []
    thread = threading.Thread(
        target=lambda: statuses.append(
            predict(server.base_url, [("red.png", solid_png((250, 0, 0)))], 1).status_code
        )
    )
    thread.start()
    deadline = time.monotonic() + 10
    while read_metrics(server.base_url)["imgserve_queue_images"] < 1:
        assert time.monotonic() < deadline, "the holding request never reached the queue"
        time.sleep(0.02)
    try:
        yield statuses
    finally:
        thread.join(30)


def test_busy_shows_a_countdown_and_retries_by_itself(browser: Browser, busy_server: ServerProcess) -> None:
    with open_page(browser, busy_server.base_url) as watched:
        page = watched.page
        wait_model_info(page)
        with holding_the_queue(busy_server) as holder:
            page.get_by_test_id("file-input").set_input_files(
                [payload("green.png", solid_png((0, 240, 0)), "image/png")]
            )
            expect(page.get_by_test_id("retry-countdown")).to_have_text("1")
            assert error_text(page) == (
                "Busy: overloaded: 1 images are queued and this request brings 1, over the queue "
                "limit of 1 (max_queue_images); retry after 1 s. "
                "Trying again in 1 s (attempt 2 of 21). Cancel"
            )
            (card,) = wait_results(page, 1)
        assert holder == [200]
        assert card["state"] == "done" and card["labels"][0] == "green"
        assert page.get_by_test_id("error").is_hidden()
        statuses = [r.response().status for r in watched.predict_requests()]  # type: ignore[union-attr]
        assert statuses[-1] == 200 and set(statuses[:-1]) == {503} and len(statuses) >= 2, statuses


def test_busy_retries_can_be_cancelled(browser: Browser, busy_server: ServerProcess) -> None:
    with open_page(browser, busy_server.base_url) as watched:
        page = watched.page
        wait_model_info(page)
        with holding_the_queue(busy_server):
            page.get_by_test_id("file-input").set_input_files(
                [payload("blue.png", solid_png((0, 0, 240)), "image/png")]
            )
            page.get_by_test_id("retry-cancel").click()
            (card,) = wait_results(page, 1)
            assert error_text(page) == "Cancelled: the server was busy; nothing more was sent."
            assert (card["state"], card["status"]) == ("failed", "Cancelled")
            sent = len(watched.predict_requests())
            page.wait_for_timeout(1500)  # longer than Retry-After: no retry comes
            assert len(watched.predict_requests()) == sent


# ---- API keys -----------------------------------------------------------------------------


def test_with_api_keys_the_page_asks_for_one_and_keeps_it_in_memory_only(
    browser: Browser, keyed_server: ServerProcess
) -> None:
    with open_page(browser, keyed_server.base_url) as watched:
        page = watched.page
        # The page and its files load without a key; the API asks for one.
        expect(page.get_by_test_id("key-panel")).to_be_visible()
        assert error_text(page) == (
            "API key needed: missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
        )
        expect(page.get_by_test_id("api-key")).to_be_focused()
        # A photo dropped before the key is kept and sent once a key works.
        page.get_by_test_id("file-input").set_input_files(
            [payload("red.png", solid_png((240, 0, 0)), "image/png")]
        )
        (card,) = wait_results(page, 1)
        assert card["state"] == "failed"
        page.get_by_test_id("api-key").fill("wrong-key")
        page.get_by_test_id("api-key-apply").click()
        expect(page.get_by_test_id("error")).to_have_text("API key needed: invalid API key")
        page.get_by_test_id("api-key").fill(KEY)
        page.get_by_test_id("api-key").press("Enter")
        expect(page.get_by_test_id("model-info")).to_contain_text("tiny-rgb version 1.2.3")
        page.wait_for_function(
            "() => document.querySelector('[data-testid=result]').dataset.state === 'done'"
        )
        (card,) = wait_results(page, 1)
        assert card["labels"][0] == "red" and card["rows"] == 4  # four classes: all of them
        api = [r for r in watched.requests if urlsplit(r.url).path in ("/predict", "/v1/models")]
        assert [r.headers.get("x-api-key") for r in api] == [None, None, "wrong-key", KEY, KEY]
        statuses = [r.response().status for r in api]  # type: ignore[union-attr]
        assert statuses == [401, 401, 401, 200, 200]
        # Page assets went without a key.
        assets = [r for r in watched.requests if urlsplit(r.url).path.startswith("/page-assets/")]
        assert assets and all("x-api-key" not in r.headers for r in assets)
        stored = page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]")
        assert stored == [0, 0, ""] and watched.context.cookies() == []
        # Memory only: a reload forgets it.
        page.reload()
        expect(page.get_by_test_id("key-panel")).to_be_visible()
        expect(page.get_by_test_id("api-key")).to_have_value("")


# ---- through nginx ------------------------------------------------------------------------


@pytest.mark.skipif(find_nginx() is None, reason="nginx not installed (apt-get install nginx-light)")
def test_through_the_shipped_nginx(browser: Browser, photo_server: ServerProcess, tmp_path: Path) -> None:
    expected = predict(photo_server.base_url, [("chelsea.jpg", CHELSEA)]).json()
    with (
        Nginx(tmp_path / "nginx", [photo_server.port]) as nginx,
        open_page(browser, nginx.base_url) as watched,
    ):
        page = watched.page
        wait_model_info(page)
        page.get_by_test_id("file-input").set_input_files([payload("chelsea.jpg", CHELSEA)])
        (card,) = wait_results(page, 1)
        assert_card_shows(card, "chelsea.jpg", expected)
        http = [urlsplit(r.url) for r in watched.requests if r.url.startswith("http")]
        assert {(u.hostname, u.port) for u in http} == {("127.0.0.1", nginx.port)}
        assert watched.errors == []
        # Over nginx's own body limit (20 MiB) nginx answers 413 in HTML: the page says so in words.
        # A path, not a buffer: Playwright would send 21 MB through its pipe (half a minute here).
        huge = tmp_path / "huge.jpg"
        huge.write_bytes(b"\xff\xd8" + bytes(21 * 2**20))
        page.get_by_test_id("file-input").set_input_files(huge)
        (card,) = wait_results(page, 1)
        assert error_text(page) == "Too large: the server answered HTTP 413 Request Entity Too Large"
        assert card["state"] == "failed"


# ---- explanations and the header ----------------------------------------------------------


def quadrant_photo(quadrant: tuple[int, int], size: int = 448) -> bytes:
    """The cat pasted into one quadrant of a neutral grey canvas."""
    canvas = Image.new("RGB", (size, size), (128, 128, 128))
    cat = Image.fromarray(data.chelsea()).resize((size // 2, size // 2))
    canvas.paste(cat, (quadrant[0] * size // 2, quadrant[1] * size // 2))
    return encode(canvas, "JPEG", quality=90)


HOTTEST_PIXEL = """card => {
  const canvas = card.querySelector('[data-testid=cam-overlay]');
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let best = -1, at = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    const heat = pixels[i] - pixels[i + 2];  // red over blue: jet's hot end
    if (pixels[i + 3] > 0 && heat > best) { best = heat; at = i / 4; }
  }
  const img = card.querySelector('[data-testid=thumbnail]');
  return {x: (at % canvas.width) / canvas.width, y: Math.floor(at / canvas.width) / canvas.height,
          heat: best, hidden: canvas.hidden, label: canvas.dataset.label,
          canvasBox: [canvas.offsetLeft, canvas.offsetTop, canvas.offsetWidth, canvas.offsetHeight],
          imgBox: [img.offsetLeft, img.offsetTop, img.offsetWidth, img.offsetHeight]};
}"""


def test_the_toggle_lays_each_photos_map_over_it_where_the_cat_is(
    browser: Browser, photo_server: ServerProcess, tmp_path: Path
) -> None:
    files = [
        payload("cat-top-left.jpg", quadrant_photo((0, 0))),
        payload("cat-bottom-right.jpg", quadrant_photo((1, 1))),
    ]
    with open_page(browser, photo_server.base_url, viewport={"width": 1000, "height": 900}) as watched:
        page = watched.page
        wait_model_info(page)
        toggle = page.get_by_test_id("explain-toggle")
        expect(toggle).to_be_visible()
        page.get_by_test_id("file-input").set_input_files(files)
        wait_results(page, 2)
        expect(page.get_by_test_id("cam-overlay").first).to_be_hidden()
        assert "explain" not in watched.predict_requests()[-1].url

        toggle.check()  # the photos are sent again, this time asking for the maps
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=cam-overlay]')].every(c => !c.hidden)"
        )
        cards = wait_results(page, 2)
        assert "explain=true" in watched.predict_requests()[-1].url
        screenshot = artifact_dir(tmp_path) / "page-explain.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"\nscreenshot of the page with maps: {screenshot}")
        for index, (card, quadrant) in enumerate(zip(cards, [(0, 0), (1, 1)], strict=True)):
            hottest = page.locator("[data-testid=result]").nth(index).evaluate(HOTTEST_PIXEL)
            assert hottest["canvasBox"] == hottest["imgBox"]  # the canvas lies exactly on the photo
            assert hottest["label"] == card["labels"][0] and hottest["heat"] > 100
            assert (int(hottest["x"] * 2), int(hottest["y"] * 2)) == quadrant, (card["filename"], hottest)
        caption = page.get_by_test_id("cam-caption").first
        expect(caption).to_contain_text(cards[0]["labels"][0])

        # Another class's map: click its row; the toggle off hides the maps without a request.
        requests = len(watched.predict_requests())
        first = page.locator("[data-testid=result]").first
        first.get_by_test_id("result-row").nth(1).click()
        expect(caption).to_contain_text(cards[0]["labels"][1])
        toggle.uncheck()
        expect(page.get_by_test_id("cam-overlay").first).to_be_hidden()
        assert len(watched.predict_requests()) == requests
        assert watched.errors == []


def test_a_model_that_does_not_explain_offers_no_toggle(browser: Browser, busy_server: ServerProcess) -> None:
    with open_page(browser, busy_server.base_url) as watched:
        wait_model_info(watched.page)
        expect(watched.page.get_by_test_id("explain-toggle")).to_be_hidden()
    response = predict(busy_server.base_url, [("red.png", solid_png((250, 0, 0)))], top_k=1)
    assert response.status_code == 200
    refused = httpx.post(
        f"{busy_server.base_url}/predict?explain=true",
        files=[("file", ("red.png", solid_png((250, 0, 0))))],
        timeout=30,
    )
    assert refused.status_code == 400 and "does not explain" in refused.json()["detail"]


def test_the_header_describes_the_default_model_not_the_first_listed(
    browser: Browser, start_server: StartServer, tmp_path: Path
) -> None:
    from tests.app.repository_models import write_version

    repository = tmp_path / "repository"
    write_version(repository, "alpha", 1)
    write_version(repository, "zeta", 1)
    zeta = write_version(repository, "zeta", 2)
    server = start_server(zeta, model_repository=repository, default_model="zeta", warmup_batch_sizes="1")
    listed = httpx.get(f"{server.base_url}/v1/models", timeout=10).json()
    assert listed["models"][0]["name"] == "alpha" and listed["default_model"] == "zeta"
    with open_page(browser, server.base_url) as watched:
        wait_model_info(watched.page)
        assert watched.page.get_by_test_id("model-info").inner_text().startswith("zeta version 2 · 4 classes")
