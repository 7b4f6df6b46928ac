"""The demo page's weight and its time from drop to bars, measured in a real browser.

    python -m bench.page                                  # default model, 20 rounds per photo
    python -m bench.page --rounds 5 --screenshot docs/img/page.png

Starts the server (default settings, the given model) on 127.0.0.1 and Debian's Chromium
(headless, Playwright), then:

- weight: the bytes of ``GET /`` and of every file the page loads, as served, and what gzip
  would make of them (the app and the shipped nginx configuration do not compress);
- drop to bars: in the page, ``performance.now()`` just before a synthetic drop event on the
  drop zone, and again when the photo's card holds its bars (the DOM is updated) and after
  the next frame has been rendered (a task queued from ``requestAnimationFrame``). Also the
  page's own round trip of the ``POST /predict``. Two photos, interleaved round by round:
  scikit-image's chelsea at 500x375 (a typical web image) and the same photo upscaled to
  4000x3000 (12 megapixels, a phone photo's size).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import os
import re
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from playwright.sync_api import Page

from bench.workloads import encode, resize_crop
from harness.browser import launch_chromium
from harness.server import ServerProcess

# Drop one file; resolve when its card is done (bars in the DOM) and once that frame is rendered.
DROP_AND_TIME = """async ({b64, name}) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const file = new File([bytes], name, {type: 'image/jpeg'});
  const results = document.querySelector('[data-testid=results]');
  const zone = document.querySelector('[data-testid=dropzone]');
  return await new Promise((resolve, reject) => {
    let start = 0;
    const observer = new MutationObserver(() => {
      const card = results.querySelector('[data-testid=result]');
      if (!card || card.dataset.state === 'pending') return;
      const inDom = performance.now();
      observer.disconnect();
      if (card.dataset.state !== 'done') {
        reject(new Error(document.querySelector('[data-testid=error]').textContent));
        return;
      }
      // rAF runs just before the next frame is rendered; a task queued from it runs after.
      requestAnimationFrame(() => setTimeout(() => resolve({
        dom_ms: inDom - start,
        frame_ms: performance.now() - start,
        fetch_ms: Number(card.querySelector('[data-testid=latency-ms]').textContent),
        rows: card.querySelectorAll('[data-testid=result-row]').length,
      }), 0));
    });
    const watch = {subtree: true, childList: true, attributes: true, attributeFilter: ['data-state']};
    observer.observe(results, watch);
    const transfer = new DataTransfer();
    transfer.items.add(file);
    start = performance.now();
    zone.dispatchEvent(new DragEvent('drop', {bubbles: true, cancelable: true, dataTransfer: transfer}));
  });
}"""


def page_weight(base_url: str) -> list[tuple[str, int, int]]:
    """(path, bytes as served, bytes gzip -6) for the page and each file it references."""
    with httpx.Client(base_url=base_url, headers={"Accept-Encoding": "gzip"}) as client:
        page = client.get("/")
        page.raise_for_status()
        paths = ["/", *(f"/{p}" for p in re.findall(r'(?:href|src)="(page-assets/[^"]+)"', page.text))]
        sizes = []
        for path in paths:
            response = client.get(path)
            response.raise_for_status()
            if response.headers.get("content-encoding"):
                raise RuntimeError(f"{path} came compressed ({response.headers['content-encoding']})")
            sizes.append((path, len(response.content), len(gzip.compress(response.content, 6))))
    return sizes


def photos() -> dict[str, bytes]:
    from skimage import data

    chelsea = Image.fromarray(data.chelsea())
    return {
        "chelsea-500x375.jpg": encode(resize_crop(chelsea, 500, 375), "JPEG"),
        "chelsea-4000x3000.jpg": encode(resize_crop(chelsea, 4000, 3000), "JPEG"),
    }


def time_drops(
    page: Page, images: dict[str, bytes], rounds: int, warmup: int
) -> dict[str, list[dict[str, Any]]]:
    encoded = {name: base64.b64encode(content).decode() for name, content in images.items()}
    timings: dict[str, list[dict[str, Any]]] = {name: [] for name in images}
    for round_index in range(warmup + rounds):
        for name, b64 in encoded.items():  # interleaved: both photos see the same machine state
            timing = page.evaluate(DROP_AND_TIME, {"b64": b64, "name": name})
            if round_index >= warmup:
                timings[name].append(timing)
    return timings


def save_screenshot(page: Page, images: dict[str, bytes], path: Path) -> None:
    """The page with three photos classified, as a small PNG (palette) for the README."""
    page.set_viewport_size({"width": 1100, "height": 700})
    page.get_by_test_id("file-input").set_input_files(
        [{"name": name, "mimeType": "image/jpeg", "buffer": content} for name, content in images.items()]
    )
    page.wait_for_function(
        "n => [...document.querySelectorAll('[data-testid=result]')].filter(c => c.dataset.state === 'done')"
        ".length === n",
        arg=len(images),
        timeout=60_000,
    )
    raw = page.screenshot(full_page=True)
    shot = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    path.parent.mkdir(parents=True, exist_ok=True)
    shot.save(path, optimize=True)
    print(f"screenshot: {path} ({path.stat().st_size:,} bytes)")


def screenshot_photos() -> dict[str, bytes]:
    import matplotlib.cbook
    from skimage import data

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = Image.open(f).convert("RGB")
    return {
        "chelsea.jpg": encode(Image.fromarray(data.chelsea()), "JPEG"),
        "coffee.jpg": encode(Image.fromarray(data.coffee()), "JPEG"),
        "grace_hopper.jpg": encode(hopper, "JPEG"),
    }


def summarize(name: str, runs: list[dict[str, Any]]) -> str:
    def stats(key: str) -> str:
        values = sorted(run[key] for run in runs)
        return f"median {statistics.median(values):7.1f}  min {values[0]:7.1f}  max {values[-1]:7.1f}"

    return (
        f"{name} ({len(runs)} drops)\n"
        f"  drop -> bars in the DOM  {stats('dom_ms')} ms\n"
        f"  drop -> frame painted    {stats('frame_ms')} ms\n"
        f"  POST /predict round trip {stats('fetch_ms')} ms (the page's latency-ms)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.page", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/default/model.onnx"))
    parser.add_argument("--rounds", type=int, default=20, help="measured drops per photo")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured drops per photo first")
    parser.add_argument("--screenshot", type=Path, help="also save a screenshot of the page with results")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"no model at {args.model}: python -m model_export default --output-dir models/default")

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min) at start")
    env = {"IMGSERVE_MODEL_PATH": str(args.model.resolve())}
    with (
        tempfile.TemporaryDirectory() as log_dir,
        ServerProcess(env, Path(log_dir) / "server.log", inherit_settings=False) as server,
    ):
        weights = page_weight(server.base_url)
        print("\npage weight (as served; the app and the shipped nginx send it uncompressed)")
        for path, size, gzipped in weights:
            print(f"  {path:28s} {size:7,d} bytes   gzip -6 {gzipped:6,d}")
        total, total_gz = sum(w[1] for w in weights), sum(w[2] for w in weights)
        print(f"  {'total':28s} {total:7,d} bytes   gzip -6 {total_gz:6,d}")

        with launch_chromium() as browser:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.goto(f"{server.base_url}/")
            page.get_by_test_id("model-info").filter(has_text=" version ").wait_for()
            print(f"\nmodel: {page.get_by_test_id('model-info').inner_text()}")
            timings = time_drops(page, photos(), args.rounds, args.warmup)
            print(
                f"\ndrop to bars, {args.warmup} warm-up + {args.rounds} measured drops per photo, interleaved"
            )
            for name, runs in timings.items():
                print(summarize(name, runs))
            if args.screenshot:
                save_screenshot(page, screenshot_photos(), args.screenshot)
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min) at the end")


if __name__ == "__main__":
    main()
