"""The hostile-input corpus, generated in memory (nothing binary is committed).

Each function returns the bytes of one file. ``bomb_png`` writes a PNG header that claims a
huge image over a tiny, highly compressed IDAT stream, the way decompression bombs are made.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib

import numpy as np
from PIL import Image


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


@functools.cache
def photo() -> Image.Image:
    """A real photo (scikit-image's astronaut, 512x512 RGB)."""
    from skimage import data

    return Image.fromarray(data.astronaut())


def jpeg(image: Image.Image | None = None, quality: int = 90) -> bytes:
    return _save(image or photo(), "JPEG", quality=quality)


def png(image: Image.Image | None = None) -> bytes:
    return _save(image or photo(), "PNG")


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (48, 48), fmt: str = "PNG") -> bytes:
    return _save(Image.new("RGB", size, colour), fmt)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@functools.cache
def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A 1-bit PNG of width x height zeros: ~110 KB on the wire, 900 Mpixels decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    data = jpeg()
    return data[: len(data) // 2]


def header_only_jpeg() -> bytes:
    """SOI and the JFIF APP0 segment, then nothing."""
    data = jpeg()
    app0_len = struct.unpack(">H", data[4:6])[0]
    return data[: 4 + app0_len]


def random_bytes(n: int = 4096, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


def jpeg_magic_then_garbage() -> bytes:
    return b"\xff\xd8\xff\xe0" + random_bytes(2048)


def png_polyglot_html() -> bytes:
    """A valid PNG with an HTML document (and a zip-like tail) appended: decodes as the PNG."""
    return png(photo().resize((64, 64))) + b"<html><script>alert(1)</script></html>PK\x05\x06" + bytes(18)


def gif_js_polyglot() -> bytes:
    """The classic GIF/JavaScript polyglot header: not a decodable image."""
    return b"GIF89a/*\x00\x00\x00\x00\x00*/=alert(document.domain);//" + bytes(32)


def svg() -> bytes:
    return (
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>&xxe;</text>'
        b'<image href="http://127.0.0.1:9/x.png"/></svg>'
    )


def pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )


def eps() -> bytes:
    """EPS makes Pillow run Ghostscript: it must be refused before any decoding."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(/etc/passwd) (r) file\nshowpage\n"


def tiff() -> bytes:
    return _save(photo().resize((64, 64)), "TIFF")


def aspect(width: int, height: int) -> bytes:
    return _save(Image.new("RGB", (width, height), (200, 10, 10)), "PNG")


def sixteen_bit_png() -> bytes:
    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    return _save(Image.fromarray(arr), "PNG")


def palette_png() -> bytes:
    image = photo().resize((64, 64)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 0
    return _save(image, "PNG", transparency=0)


def cmyk_jpeg() -> bytes:
    return _save(photo().resize((64, 64)).convert("CMYK"), "JPEG")


def rgba_png() -> bytes:
    return _save(photo().resize((64, 64)).convert("RGBA"), "PNG")


def grey_webp() -> bytes:
    return _save(photo().resize((64, 64)).convert("L"), "WEBP")


def animated_gif(frames: int = 60, size: int = 400) -> bytes:
    images = [Image.new("P", (size, size), i % 256) for i in range(frames)]
    return _save(images[0], "GIF", save_all=True, append_images=images[1:])


def png_text_bomb() -> bytes:
    """A small image with a zTXt chunk that inflates to 50 MB (Pillow caps text chunks)."""
    small = png(photo().resize((16, 16)))
    ztxt = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * 50_000_000, 9))
    iend = small.rindex(b"IEND") - 4
    return small[:iend] + ztxt + small[iend:]
