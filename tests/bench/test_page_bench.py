"""The page benchmark (``python -m bench.page``) on a tiny model, so that it cannot rot.

It asserts the figures are there and sane, nothing about speed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from bench import page
from harness.browser import find_chromium
from harness.tiny_model import tiny_card, write_model

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="Debian's chromium package is not installed (scripts/test.sh installs it as root: "
    "apt-get install chromium)",
)


def test_page_bench_prints_weight_and_drop_to_bars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_model(tmp_path / "tiny", tiny_card())
    screenshot = tmp_path / "page.png"
    page.main(["--model", str(model), "--rounds", "2", "--warmup", "1", "--screenshot", str(screenshot)])
    out = capsys.readouterr().out

    served = {m[0]: int(m[1].replace(",", "")) for m in re.findall(r"^  (/\S*) +([\d,]+) bytes", out, re.M)}
    web = Path(page.__file__).resolve().parents[1] / "app" / "web"
    assert served == {
        "/": (web / "index.html").stat().st_size,
        "/page-assets/favicon.svg": (web / "favicon.svg").stat().st_size,
        "/page-assets/page.css": (web / "page.css").stat().st_size,
        "/page-assets/page.js": (web / "page.js").stat().st_size,
    }
    total = re.search(r"^  total +([\d,]+) bytes +gzip -6 +([\d,]+)", out, re.M)
    assert total and int(total[1].replace(",", "")) == sum(served.values()) > int(total[2].replace(",", ""))
    assert "model: tiny-rgb version 1.2.3 · 4 classes" in out
    for photo in ("chelsea-500x375.jpg", "chelsea-4000x3000.jpg"):
        assert f"{photo} (2 drops)" in out
    medians = [float(m) for m in re.findall(r"median +([\d.]+)", out)]
    assert len(medians) == 6 and all(m > 0 for m in medians), out
    with Image.open(screenshot) as shot:
        assert shot.format == "PNG" and shot.width == 1100
