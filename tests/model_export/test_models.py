"""The offline EfficientNet-Lite0 weights: key mapping and real photos classified as expected."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from model_card import Preprocessing
from model_export.data import create_eval_transform, mean_std_tensors, normalize_uint8
from model_export.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelError,
    create_lite0_imagenet,
    create_model,
    imagenet_labels,
    lite0_preprocessing,
    lite0_weights_path,
    map_lite0_state_dict,
)

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO, CUP = 967, 968


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return create_lite0_imagenet()


def _probabilities(model: torch.nn.Module, image: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    pixels = create_eval_transform(preprocessing)(image).unsqueeze(0)
    mean, std = mean_std_tensors(preprocessing)
    with torch.inference_mode():
        return model(normalize_uint8(pixels, mean, std)).softmax(-1)[0]


def test_key_mapping_uses_every_key_with_matching_shapes() -> None:
    import timm

    source = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = map_lite0_state_dict(source, model)
    assert len(mapped) == len(source) == len(model.state_dict()) == 296
    assert mapped["blocks.0.0.conv_pw.weight"].shape == (16, 32, 1, 1)  # block 0: no expansion conv
    assert torch.equal(mapped["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    assert torch.equal(mapped["bn2.running_var"], source["_bn1.running_var"])


def test_key_mapping_rejects_a_state_dict_that_does_not_fit() -> None:
    import timm

    source = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    source["_fc.weight"] = source["_fc.weight"][:10]
    with pytest.raises(ModelError) as info:
        map_lite0_state_dict(source, timm.create_model("tf_efficientnet_lite0", pretrained=False))
    assert str(info.value) == (
        "weight _fc.weight has shape (10, 1280) but "
        "classifier.weight in tf_efficientnet_lite0 has (1000, 1280)"
    )


def test_chelsea_is_a_cat(lite0: torch.nn.Module, photos: dict[str, Image.Image]) -> None:
    probabilities = _probabilities(lite0, photos["chelsea"], lite0_preprocessing())
    top5 = probabilities.topk(5).indices.tolist()
    assert top5[0] in CAT_CLASSES
    assert set(top5) >= CAT_CLASSES
    assert float(probabilities[list(CAT_CLASSES)].sum()) > 0.9


def test_coffee_is_an_espresso(lite0: torch.nn.Module, photos: dict[str, Image.Image]) -> None:
    probabilities = _probabilities(lite0, photos["coffee"], lite0_preprocessing())
    assert int(probabilities.argmax()) == ESPRESSO
    assert float(probabilities[ESPRESSO]) > 0.9
    assert CUP in probabilities.topk(3).indices.tolist()


def test_tf_scaling_is_more_confident_than_torchvision_mean_std(
    lite0: torch.nn.Module, photos: dict[str, Image.Image]
) -> None:
    tf_style = lite0_preprocessing()
    torchvision_style = tf_style.model_copy(update={"mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    for name, expected in (("chelsea", sorted(CAT_CLASSES)), ("coffee", [ESPRESSO])):
        tf_mass = float(_probabilities(lite0, photos[name], tf_style)[expected].sum())
        tv_mass = float(_probabilities(lite0, photos[name], torchvision_style)[expected].sum())
        assert tf_mass > tv_mass, name


def test_labels_are_imagenet_1k() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert (labels[281], labels[967]) == ("tabby", "espresso")


def test_new_head_for_n_classes_keeps_pretrained_backbone(lite0: torch.nn.Module) -> None:
    created = create_model("efficientnet_lite0", num_classes=3)
    assert created.pretrained
    assert created.head.out_features == 3
    assert torch.equal(created.model.conv_stem.weight, lite0.conv_stem.weight)
    assert len(created.blocks) == 18  # stem, 16 blocks, head conv


def test_simple_cnn_shape() -> None:
    created = create_model("simple_cnn", num_classes=4, crop_size=32)
    assert created.model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert not created.pretrained


def test_unknown_architecture_error() -> None:
    with pytest.raises(ModelError) as info:
        create_model("resnet19", num_classes=2)
    assert str(info.value) == (
        "unknown architecture 'resnet19'; use simple_cnn, efficientnet_lite0 or a torchvision classifier"
    )


def test_missing_local_weights_error() -> None:
    with pytest.raises(ModelError) as info:
        create_model("resnet18", num_classes=2, weights="/nonexistent/weights.pth")
    assert str(info.value) == (
        "--weights /nonexistent/weights.pth does not exist "
        "(expected a .pt/.pth state dict, 'default' or 'none')"
    )


@pytest.mark.parametrize(
    ("arch", "head_in_features"), [("resnet18", 512), ("mobilenet_v3_large", 1280), ("convnext_tiny", 768)]
)
def test_torchvision_model_gets_a_new_head(arch: str, head_in_features: int) -> None:
    created = create_model(arch, num_classes=3, weights="none", crop_size=64)
    assert (created.head.in_features, created.head.out_features) == (head_in_features, 3)
    assert created.model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    assert len(created.blocks) >= 4
    head_ids = {id(p) for p in created.head.parameters()}
    assert all(id(p) not in head_ids for block in created.blocks for p in block.parameters())
    assert (created.preprocessing.crop_size, created.preprocessing.resize_size) == (64, 73)


def test_torchvision_weights_unavailable_offline_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.error import URLError

    from torchvision.models._api import WeightsEnum

    def offline(self: WeightsEnum, *args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/cache/torch/hub")
    with pytest.raises(ModelError) as info:
        create_model("resnet18", num_classes=2)
    assert str(info.value) == (
        "pretrained weights ResNet18_Weights.IMAGENET1K_V1 for 'resnet18' are not in the torch hub cache "
        "(/cache/torch/hub) and could not be downloaded (URLError: <urlopen error no network>); "
        "pass --weights PATH to a local state dict, or --weights none to train from scratch"
    )
