"""What decoding a JPEG will cost, from its markers: frame type, components, sampling, scans.

A baseline JPEG has one scan and libjpeg decodes it a row of blocks at a time; in draft mode
it even skips most of each block's inverse DCT. A progressive JPEG (or a sequential one whose
components come in separate scans) is different: libjpeg keeps a coefficient buffer for the
whole image at full size (draft mode only shrinks the final inverse DCT), and every scan walks
the blocks of its components in that buffer, however few bits it carries. A scan that says
"nothing here" for 32,767 blocks at a time takes a few bytes, so a 224 KB file can hold
thousands of scans over a 25-MP buffer: seconds of CPU that no pixel count sees. libjpeg-turbo
only warns about such a progression and decodes every scan; its own advice is a scan limit
(TurboJPEG's ``TJPARAM_SCANLIMIT``, djpeg's ``-maxscans``).

:func:`read_jpeg_layout` walks the markers (no entropy decoding: the compressed data of each
scan is skipped with one regular-expression search for the next marker), and
:func:`decode_work` turns the layout into pixels the decode budget counts.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

# Start-of-frame markers: SOF0-SOF3, SOF5-SOF7, SOF9-SOF11, SOF13-SOF15 (C4, C8 and CC are
# DHT, JPG and DAC). Progressive: SOF2, SOF6, SOF10, SOF14.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOS, _EOI = 0xDA, 0xD9
# Inside a scan's data, 0xFF is followed by 0x00 (a stuffed byte) or RST0-RST7; anything else
# is the next marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# What one scan over every block of the image costs, as a fraction of decoding the image once
# at full size. Measured with Pillow 11-12 / libjpeg-turbo 3 on a 25-MP photo: its 10-scan
# progressive file (scans covering 5.3 images' worth of blocks) took 0.33 CPU-s at full size
# (0.18 s in draft mode), the baseline file 0.13 s: 0.036 s per coverage, ~1/4 of a decode.
SCAN_WORK_PER_COVERAGE = 0.25


@dataclass(frozen=True)
class JpegLayout:
    """A JPEG's frame and scans, as its markers say."""

    width: int
    height: int
    progressive: bool
    # Each component's share of the image's blocks (by sampling factors), in frame order.
    component_shares: dict[int, float]
    # Per scan: the share of the image's blocks it walks (its components' shares summed).
    scan_coverages: tuple[float, ...]

    @property
    def scans(self) -> int:
        return len(self.scan_coverages)

    @property
    def buffered(self) -> bool:
        """True when libjpeg holds the whole image's coefficients (progressive, or several scans)."""
        return self.progressive or self.scans > 1


class JpegLayoutError(ValueError):
    """The markers are malformed; the decoder will say what exactly."""


class TooManyScansError(ValueError):
    """More scans than the limit; the walk stopped there."""

    def __init__(self, scans: int) -> None:
        super().__init__(f"more than {scans} scans")
        self.scans = scans


def read_jpeg_layout(data: bytes, max_scans: int) -> JpegLayout:
    """Walk the markers of ``data`` from SOI to EOI (or the end), skipping stray bytes between
    segments as libjpeg does; raise ``TooManyScansError`` as soon as a scan past ``max_scans``
    starts, ``JpegLayoutError`` where libjpeg would stop too (no frame, a bad length)."""
    if data[:2] != b"\xff\xd8":
        raise JpegLayoutError("no SOI marker")
    frame: tuple[int, int, bool, dict[int, float]] | None = None
    coverages: list[float] = []
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:  # libjpeg skips extraneous bytes before a marker, with a warning
            found = _NEXT_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == _EOI:
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        segment = data[position + 4 : position + 2 + length]
        if length < 2:
            raise JpegLayoutError(f"segment at byte {position} has a length of {length}")
        if len(segment) < length - 2:
            break  # truncated: the decoder refuses it or decodes what came
        position += 2 + length
        if marker in _SOF_MARKERS and frame is None:
            frame = _read_frame(marker, segment)
        elif marker == _SOS:
            if frame is None:
                raise JpegLayoutError("a scan before the frame header")
            if len(coverages) == max_scans:
                raise TooManyScansError(max_scans)
            coverages.append(_scan_coverage(segment, frame[3]))
            found = _NEXT_MARKER.search(data, position)
            position = found.start() if found else len(data)
    if frame is None:
        raise JpegLayoutError("no frame header")
    width, height, progressive, shares = frame
    return JpegLayout(width, height, progressive, shares, tuple(coverages))


def _read_frame(marker: int, segment: bytes) -> tuple[int, int, bool, dict[int, float]]:
    if len(segment) < 6:
        raise JpegLayoutError("short frame header")
    height, width, count = struct.unpack_from(">HHB", segment, 1)
    if len(segment) < 6 + 3 * count or count == 0:
        raise JpegLayoutError("short frame header")
    sampling = {
        segment[6 + 3 * i]: (segment[7 + 3 * i] >> 4) * (segment[7 + 3 * i] & 0x0F) for i in range(count)
    }
    total = sum(sampling.values()) or 1
    shares = {component: factor / total for component, factor in sampling.items()}
    return width, height, marker in _PROGRESSIVE_SOF, shares


def _scan_coverage(segment: bytes, shares: dict[int, float]) -> float:
    if not segment:
        raise JpegLayoutError("empty scan header")
    components = segment[1 : 1 + 2 * segment[0] : 2]
    return sum(shares.get(component, 0.0) for component in components)


def decode_work(layout: JpegLayout, output_pixels: int) -> int:
    """Pixels the decode budget counts for this JPEG: ``output_pixels`` (draft scaling applied)
    for a one-scan JPEG; for a buffered one, the full-size image (its coefficient buffer, which
    draft mode does not shrink) plus the work of its scans."""
    if not layout.buffered:
        return output_pixels
    full = layout.width * layout.height
    scan_work = SCAN_WORK_PER_COVERAGE * sum(layout.scan_coverages)
    return max(output_pixels, round(full * (1.0 + scan_work)))
