"""Sample datasets written as ImageFolder trees, from packages already installed (nothing downloads).

``digits``: scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels) as RGB PNGs
``DIR/0/0000.png`` ... ``DIR/9/1796.png``, upscaled to ``side_px`` with bilinear resampling, dark
ink on white like a scanned page. The README's worked fine-tuning example trains on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

SAMPLE_DATASETS = ("digits",)


def write_digits_image_folder(root: Path, side_px: int = 64, limit_per_class: int | None = None) -> Path:
    """Write the digits under ``root`` (one folder per class); returns ``root``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts: dict[int, int] = {}
    pairs = list(zip(digits.images, digits.target, strict=True))
    for index, (image, target) in enumerate(tqdm(pairs, desc="digits", unit="image", leave=False)):
        label = int(target)
        if limit_per_class is not None and counts.get(label, 0) >= limit_per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        # Values are 0..16 ink; white background, dark ink.
        gray = (255 - image * (255 / 16)).astype(np.uint8)
        pil = Image.fromarray(gray, mode="L").resize((side_px, side_px), Image.Resampling.BILINEAR)
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pil.convert("RGB").save(folder / f"{index:04d}.png")
    return root
