"""The training configuration: the one place every ``train`` and ``lr-find`` default is written.

The command line takes its defaults from these dataclasses (``model_export/cli.py``), and a
checkpoint stores the whole :class:`TrainConfig` so ``--resume`` continues as configured. No
PyTorch here: ``--help`` stays fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class AugmentConfig:
    """Training augmentation; every field is a command-line option of ``train``."""

    min_scale: float = 0.5  # random resized crop ("zoom"): fraction of the image area kept
    shear_deg: float = 10.0
    hflip_prob: float = 0.5
    rotation_deg: float = 0.0
    color_jitter: float = 0.0


@dataclass
class TrainConfig:
    """Everything a ``train`` run needs; stored in every checkpoint so a run can be resumed."""

    data_dir: Path
    output_dir: Path
    arch: str = "efficientnet_lite0"
    weights: str = "default"
    val_ratio: float = 0.2
    seed: int = 0
    crop_size: int | None = None
    resize_size: int | None = None
    batch_size: int = 32
    workers: int = 2
    head_epochs: int = 3
    epochs: int = 10
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1
    unfreeze_blocks: int = 4
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.0
    freeze_bn_stats: bool = True
    patience: int = 3
    min_delta: float = 0.0
    amp: bool = True
    device: str = "auto"
    # None: on when the tensorboard package is installed (model_export/tensorboard.py).
    tensorboard: bool | None = None
    histogram_every: int = 5
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["data_dir"], raw["output_dir"] = str(self.data_dir), str(self.output_dir)
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrainConfig:
        raw = dict(raw)
        raw["augment"] = AugmentConfig(**raw["augment"])
        raw["data_dir"], raw["output_dir"] = Path(raw["data_dir"]), Path(raw["output_dir"])
        return cls(**raw)


TRAIN_DEFAULTS = TrainConfig(data_dir=Path("data"), output_dir=Path("runs/train"))
