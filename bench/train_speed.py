"""Training speed of the export stage on this machine: images/s for one training step loop.

    python bench/train_speed.py [--threads N] [--seconds S]

Measures simple_cnn from scratch (32 px) and efficientnet_lite0 fine-tuning (stage 2: last 4
blocks + head, 224 px and 64 px) on synthetic uint8 batches, so the figure is the model's
forward+backward+step cost, not image decoding. Prints one line per case and a summary table.
Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from model_export.config import TrainConfig
from model_export.data import mean_std_tensors, normalize_uint8
from model_export.models import create_model
from model_export.train import StagePlan, apply_stage, plan_stages, set_train_mode


@dataclass
class Case:
    name: str
    arch: str
    crop_size_px: int
    batch_size: int
    stage: str  # "full" (from scratch) or "finetune" (stage 2) or "head" (stage 1)


CASES = [
    Case("simple_cnn 32px from scratch", "simple_cnn", 32, 64, "full"),
    Case("efficientnet_lite0 64px head only", "efficientnet_lite0", 64, 32, "head"),
    Case("efficientnet_lite0 64px fine-tune", "efficientnet_lite0", 64, 32, "finetune"),
    Case("efficientnet_lite0 224px fine-tune", "efficientnet_lite0", 224, 16, "finetune"),
]


def measure_images_per_s(case: Case, seconds: float, num_classes: int = 10) -> float:
    created = create_model(case.arch, num_classes, crop_size=case.crop_size_px, resize_size=case.crop_size_px)
    stages = {s.name: s for s in plan_stages(created, _config())}
    stage = stages.get(case.stage) or StagePlan("full", 1, 1e-3, 1e-3, list(created.blocks))
    optimizer = torch.optim.AdamW(apply_stage(created, stage))
    set_train_mode(created)
    mean, std = mean_std_tensors(created.preprocessing)
    pixels = torch.randint(
        0, 256, (case.batch_size, 3, case.crop_size_px, case.crop_size_px), dtype=torch.uint8
    )
    targets = torch.randint(0, num_classes, (case.batch_size,))
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        loss = criterion(created.model(normalize_uint8(pixels, mean, std)), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
        step()
    images, started_s = 0, time.perf_counter()
    with tqdm(desc=case.name, unit="img", leave=False) as progress:
        while time.perf_counter() - started_s < seconds:
            step()
            images += case.batch_size
            progress.update(case.batch_size)
    return images / (time.perf_counter() - started_s)


def _config() -> TrainConfig:
    # Only the stage plan is used: defaults for lr, backbone lr scale and unfrozen blocks.
    return TrainConfig(data_dir=Path("."), output_dir=Path("."), head_epochs=1, epochs=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per case")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for case in CASES:
        images_per_s = measure_images_per_s(case, args.seconds)
        results.append((case, images_per_s))
        print(f"{case.name:40s} batch {case.batch_size:3d}: {images_per_s:8.1f} images/s")
    print(f"\nsummary (CPU, {args.threads} threads, torch {torch.__version__}):")
    for case, images_per_s in results:
        print(f"  {case.name:40s} {images_per_s:8.1f} images/s")


if __name__ == "__main__":
    main()
