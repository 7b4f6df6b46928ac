"""Class activation maps laid over the photo they explain, as image files (needs Pillow).

The map covers the crop the model saw (:class:`~imgserve_client.types.CropBox`, in the
original's pixels); it is stretched over that box with bilinear smoothing, coloured with the
jet scale CAM figures use (blue: nothing, red: what the class was seen in), and blended over
the photo, more opaque where hotter. The box's outline shows what the model was shown.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from imgserve_client.types import ClassMap, Explanation

MIN_ALPHA = 0.2
MAX_ALPHA = 0.7


def _pil() -> Any:
    try:
        from PIL import Image, ImageDraw, ImageOps
    except ImportError as exc:
        raise RuntimeError(
            "overlay images need Pillow: pip install 'imgserve-client[cli]' (or Pillow)"
        ) from exc
    return Image, ImageDraw, ImageOps


def heat_colour(value: float) -> tuple[int, int, int, int]:
    """Jet between its bright ends: 0 blue, 0.5 green, 1 red; alpha from ``MIN_ALPHA`` (cold)
    to ``MAX_ALPHA`` (hot)."""
    value = min(1.0, max(0.0, value))
    v = 0.125 + 0.75 * value  # jet's dark-blue and dark-red ends left out

    def channel(centre: float) -> int:
        return round(255 * min(1.0, max(0.0, 1.5 - abs(4 * v - centre))))

    return channel(3), channel(2), channel(1), round(255 * (MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * value))


def overlay(image_bytes: bytes, explanation: Explanation, class_map: ClassMap | None = None) -> Any:
    """The photo (EXIF orientation applied) with ``class_map`` (default: the top class's) over
    its crop box, as an RGB PIL image."""
    image_module, draw_module, ops = _pil()
    photo = ops.exif_transpose(image_module.open(io.BytesIO(image_bytes))).convert("RGBA")
    shown = class_map or explanation.maps[0]
    rows, cols = len(shown.heatmap), len(shown.heatmap[0])
    grid = image_module.new("RGBA", (cols, rows))
    grid.putdata([heat_colour(v) for row in shown.heatmap for v in row])
    box = explanation.box
    left, top = round(box.left), round(box.top)
    width, height = max(1, round(box.width)), max(1, round(box.height))
    heat = grid.resize((width, height), image_module.Resampling.BILINEAR)
    layer = image_module.new("RGBA", photo.size, (0, 0, 0, 0))
    layer.paste(heat, (left, top))
    draw_module.Draw(layer).rectangle(
        (left, top, left + width - 1, top + height - 1), outline=(255, 255, 255, 230)
    )
    return image_module.alpha_composite(photo, layer).convert("RGB")


def write_overlay(image_bytes: bytes, explanation: Explanation, path: Path) -> Path:
    """Write the top class's overlay to ``path`` (the format follows its suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(image_bytes, explanation).save(path)
    return path
