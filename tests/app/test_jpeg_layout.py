"""The JPEG marker walk that admission uses to count a JPEG's decode work."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.inference.jpeg import JpegLayoutError, TooManyScansError, decode_work, read_jpeg_layout


def _jpeg(mode: str = "RGB", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (640, 480), 90).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def test_a_baseline_jpeg_is_one_scan_and_counts_its_output_pixels() -> None:
    layout = read_jpeg_layout(_jpeg(), max_scans=64)
    assert (layout.width, layout.height, layout.progressive, layout.scans) == (640, 480, False, 1)
    assert decode_work(layout, output_pixels=1234) == 1234


def test_a_progressive_jpeg_counts_full_size_times_its_scans() -> None:
    layout = read_jpeg_layout(_jpeg(progressive=True), max_scans=64)
    assert layout.progressive and layout.scans == 10  # what libjpeg writes for 4:2:0 colour
    assert layout.component_shares == pytest.approx({1: 4 / 6, 2: 1 / 6, 3: 1 / 6})
    assert sum(layout.scan_coverages) == pytest.approx(16 / 3)
    # full size (draft mode does not shrink the coefficient buffer) x (1 + 5.33 / 4)
    assert decode_work(layout, output_pixels=100) == round(640 * 480 * (1 + 16 / 3 / 4))
    grey = read_jpeg_layout(_jpeg("L", progressive=True), max_scans=64)
    assert grey.scans == 6 and set(grey.scan_coverages) == {1.0}


def test_the_walk_stops_at_the_scan_limit_and_skips_stray_bytes() -> None:
    data = _jpeg(progressive=True)
    with pytest.raises(TooManyScansError):
        read_jpeg_layout(data, max_scans=9)
    assert read_jpeg_layout(data, max_scans=10).scans == 10
    # Stray bytes before a marker: libjpeg warns and goes on, so the walk must too.
    second = data.index(b"\xff\xdb")
    assert read_jpeg_layout(data[:second] + b"junk" + data[second:], max_scans=10).scans == 10
    with pytest.raises(JpegLayoutError):
        read_jpeg_layout(b"\xff\xd8\xff\xdb\x00\x01", max_scans=10)
