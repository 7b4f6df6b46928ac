"""Training on real data (scikit-learn's handwritten digits), export, and ONNX evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from model_card import load_card
from model_export import train as train_module
from model_export.cli import _train_config, get_args_parser, main
from model_export.config import TrainConfig
from model_export.models import create_lite0_imagenet
from model_export.train import load_checkpoint

from .conftest import DIGITS_TRAIN_ARGS, write_digits_image_folder


def _cli(*args: str) -> None:
    assert main(["--threads", "1", *args]) == 0


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def digits64_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_image_folder(tmp_path_factory.mktemp("digits64") / "digits64", side_px=64)


@pytest.fixture(scope="session")
def lite0_run(digits64_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("lite0_run")
    _cli(
        "train", "--data", str(digits64_dir), "--arch", "efficientnet_lite0", "--crop-size", "64",
        "--resize-size", "64", "--head-epochs", "1", "--epochs",
        "2", "--lr", "3e-3", "--unfreeze-blocks", "4",
        "--output-dir", str(run), *DIGITS_TRAIN_ARGS,
    )  # fmt: skip
    return run


def test_simple_cnn_reaches_90_percent_on_digits(cnn_run: Path) -> None:
    metrics = _json(cnn_run / "metrics.json")
    assert metrics["top1"] >= 0.90
    assert metrics["top5"] >= metrics["top1"]
    assert metrics["num_images"] == 359 == int(np.sum(metrics["confusion_matrix"]))
    assert metrics["macro_f1"] >= 0.88
    assert set(metrics["per_class"]) == {str(d) for d in range(10)}
    history = _json(cnn_run / "history.json")
    assert len(history) == 8 and {h["stage"] for h in history} == {"full"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("best.pt", "last.pt", "split.json", "history.png", "confusion_matrix.png"):
        assert (cnn_run / name).stat().st_size > 0, name


def test_checkpoint_carries_what_export_needs(cnn_run: Path) -> None:
    payload = load_checkpoint(cnn_run / "best.pt")
    assert payload["arch"] == "simple_cnn" and payload["labels"] == [str(d) for d in range(10)]
    assert (payload["preprocessing"]["crop_size"], payload["preprocessing"]["resize_size"]) == (32, 32)
    assert payload["metrics"]["top1"] == _json(cnn_run / "metrics.json")["top1"]
    assert payload["dataset"]["train_images"] + payload["dataset"]["val_images"] == 1797


@pytest.mark.parametrize("variant", ["fp32", "fp16", "float-input", "fp16-float-input"])
def test_export_then_evaluate_agrees_with_pytorch(cnn_run: Path, tmp_path: Path, variant: str) -> None:
    flags = {
        "fp32": [],
        "fp16": ["--fp16"],
        "float-input": ["--float-input"],
        "fp16-float-input": ["--fp16", "--float-input"],
    }[variant]
    _cli("export", "--checkpoint", str(cnn_run / "best.pt"), "--output-dir", str(tmp_path / "m"), *flags)
    _cli("evaluate", "--model", str(tmp_path / "m" / "model.onnx"), "--split", str(cnn_run / "split.json"))
    torch_metrics = _json(cnn_run / "metrics.json")
    onnx_metrics = _json(tmp_path / "m" / "evaluation" / "metrics.json")
    assert onnx_metrics["num_images"] == torch_metrics["num_images"]
    if variant.startswith("fp16"):
        # Half precision may flip a near-tie; it must not move the headline figures.
        assert abs(onnx_metrics["top1"] - torch_metrics["top1"]) <= 2 / 359
        assert onnx_metrics["log_loss"] == pytest.approx(torch_metrics["log_loss"], abs=1e-2)
    else:
        assert onnx_metrics["top1"] == torch_metrics["top1"]
        assert onnx_metrics["confusion_matrix"] == torch_metrics["confusion_matrix"]
        assert onnx_metrics["log_loss"] == pytest.approx(torch_metrics["log_loss"], abs=1e-5)
    card = load_card(tmp_path / "m" / "model.onnx")
    assert card.metrics["validation"]["top1"] == torch_metrics["top1"]
    assert card.dataset["val_images"] == 359 and card.labels == [str(d) for d in range(10)]
    graph_input = onnx.load(str(tmp_path / "m" / "model.onnx")).graph.input[0]
    if variant.endswith("float-input"):
        # The float input stays float32 even in an fp16 graph (docs/ARCHITECTURE.md).
        assert card.input.dtype == "float32"
        assert (card.input.name, card.input.layout, card.preprocessing.normalization_in_graph) == (
            "input", "NCHW", False,
        )  # fmt: skip
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    else:
        assert (card.input.name, card.input.layout, card.input.dtype) == ("pixels", "NHWC", "uint8")


@pytest.mark.slow
def test_fine_tuning_lite0_end_to_end(lite0_run: Path, tmp_path: Path) -> None:
    history = _json(lite0_run / "history.json")
    assert [h["stage"] for h in history] == ["head", "finetune", "finetune"]
    head_lr, backbone_lr = history[1]["lr"]
    assert backbone_lr == pytest.approx(head_lr * 0.1)
    metrics = _json(lite0_run / "metrics.json")
    assert metrics["top1"] >= 0.85
    assert min(h["val_loss"] for h in history[1:]) < history[0]["val_loss"]  # stage 2 helps

    # Stage 2 unfroze only the last blocks: the stem is still ImageNet's.
    tuned = load_checkpoint(lite0_run / "best.pt")["model_state"]
    pretrained = create_lite0_imagenet().state_dict()
    assert torch.equal(tuned["conv_stem.weight"], pretrained["conv_stem.weight"])
    assert torch.equal(tuned["bn1.running_mean"], pretrained["bn1.running_mean"])
    assert not torch.equal(tuned["conv_head.weight"], pretrained["conv_head.weight"])

    _cli("export", "--checkpoint", str(lite0_run / "best.pt"), "--output-dir", str(tmp_path / "m"))
    _cli("evaluate", "--model", str(tmp_path / "m" / "model.onnx"), "--split", str(lite0_run / "split.json"))
    onnx_metrics = _json(tmp_path / "m" / "evaluation" / "metrics.json")
    assert onnx_metrics["top1"] == metrics["top1"]
    assert onnx_metrics["log_loss"] == pytest.approx(metrics["log_loss"], abs=1e-4)
    card = load_card(tmp_path / "m" / "model.onnx")
    assert card.weights.startswith("fine-tuned from ImageNet-1k")
    assert card.preprocessing.mean == pytest.approx((127 / 255,) * 3)


def test_resume_continues_exactly(digits_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = [
        "train", "--data", str(digits_dir), "--arch", "simple_cnn",
        "--crop-size", "16", "--resize-size", "16",
        "--epochs", "3", "--patience", "0", *DIGITS_TRAIN_ARGS,
    ]  # fmt: skip
    _cli(*args, "--output-dir", str(tmp_path / "straight"))

    real_train_one_epoch = train_module.train_one_epoch
    calls = {"n": 0}

    def interrupted(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_train_one_epoch(*a, **k)

    monkeypatch.setattr(train_module, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["--threads", "1", *args, "--output-dir", str(tmp_path / "resumed")])
    assert len(_json(tmp_path / "resumed" / "history.json")) == 1
    monkeypatch.setattr(train_module, "train_one_epoch", real_train_one_epoch)
    _cli("train", "--data", str(digits_dir), "--output-dir", str(tmp_path / "resumed"), "--resume")

    straight = _json(tmp_path / "straight" / "history.json")
    resumed = _json(tmp_path / "resumed" / "history.json")
    assert len(resumed) == 3
    for a, b in zip(straight, resumed, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_lr_find_sweeps_and_suggests(digits_dir: Path, tmp_path: Path) -> None:
    _cli(
        "lr-find", "--data", str(digits_dir), "--arch",
        "simple_cnn", "--crop-size", "16", "--resize-size", "16",
        "--num-steps", "100", "--min-lr", "1e-4", "--max-lr",
        "1", "--workers", "0", "--output-dir", str(tmp_path),
    )  # fmt: skip
    sweep = _json(tmp_path / "lr_find.json")
    assert sweep["lrs"][0] == pytest.approx(1e-4) and len(sweep["lrs"]) == 100
    assert all(b > a for a, b in zip(sweep["lrs"], sweep["lrs"][1:], strict=False))
    assert min(sweep["losses"]) < sweep["losses"][0] - 0.15  # the loss does fall somewhere in the sweep
    assert sweep["losses"][-1] > min(sweep["losses"]) + 0.15  # and rises again at rates too large
    assert 1e-3 < sweep["suggested_lr"] < 0.1
    assert (tmp_path / "lr_find.png").stat().st_size > 0


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--lr LR learning rate of the head (of everything from scratch) (default: 0.001)" in out
    assert "(default: efficientnet_lite0)" in out


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_every_default_comes_from_train_config(command: str) -> None:
    args = get_args_parser().parse_args([command, "--data", "d", "--output-dir", "o"])
    assert _train_config(args) == TrainConfig(data_dir=Path("d"), output_dir=Path("o"))
    changed = get_args_parser().parse_args(["train", "--data", "d", "--head-epochs", "1", "--shear-deg", "0"])
    config = _train_config(changed)
    assert (config.head_epochs, config.augment.shear_deg, config.epochs) == (1, 0.0, 10)
