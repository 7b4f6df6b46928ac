"""TensorBoard logs of a real two-stage run on the digits, read back with tensorboard's own reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from model_export.cli import main

from .conftest import DIGITS_TRAIN_ARGS

LABELS = [str(d) for d in range(10)]
EPOCH_TAGS = ["loss/train", "loss/val", "top1/train", "top1/val", "top5/val", "macro_f1/val"]
EPOCH_TAGS += ["images_per_s/train", "stage/index", "lr/head"]


def _cli(*args: str) -> None:
    assert main(["--threads", "1", *args]) == 0


def _events(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def _values(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


@pytest.fixture(scope="module")
def two_stage_run(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """efficientnet_lite0 (pretrained, so two stages) at 32 px: one head epoch, one fine-tuning epoch."""
    run = tmp_path_factory.mktemp("runs") / "lite0-digits"
    _cli(
        "train", "--data", str(digits_dir), "--arch", "efficientnet_lite0", "--crop-size", "32",
        "--resize-size", "32", "--head-epochs", "1", "--epochs", "1", "--lr", "3e-3",
        "--histogram-every", "1", "--output-dir", str(run), *DIGITS_TRAIN_ARGS,
    )  # fmt: skip
    return run


def test_epoch_scalars_have_one_value_per_epoch(two_stage_run: Path) -> None:
    events = _events(two_stage_run)
    history = json.loads((two_stage_run / "history.json").read_text())
    assert [h["stage"] for h in history] == ["head", "finetune"]
    for tag in EPOCH_TAGS:
        assert [step for step, _ in _values(events, tag)] == [1, 2], tag
    for (_, logged), epoch in zip(_values(events, "loss/val"), history, strict=True):
        assert logged == pytest.approx(epoch["val_loss"], rel=1e-6)
    for (_, logged), epoch in zip(_values(events, "top1/train"), history, strict=True):
        assert logged == pytest.approx(epoch["train_top1"], rel=1e-6)
    assert [value for _, value in _values(events, "stage/index")] == [0.0, 1.0]  # the stage marker
    texts = events.Tensors("stage/text_summary")
    assert [t.step for t in texts] == [1, 2]
    assert b"stage **finetune** starts" in texts[1].tensor_proto.string_val[0]


def test_learning_rate_shows_the_stage_two_drop(two_stage_run: Path) -> None:
    events = _events(two_stage_run)
    head = dict(_values(events, "lr/head"))
    backbone = dict(_values(events, "lr/backbone"))
    # Stage 1 trains the head alone; stage 2 adds the backbone's blocks at lr x 0.1.
    assert list(backbone) == [2]
    assert backbone[2] == pytest.approx(head[2] * 0.1, rel=1e-5)
    assert backbone[2] < head[1] / 5
    # Per step: warm-up then cosine decay within each stage, the backbone group only in stage 2.
    steps_per_epoch = len(_values(events, "step/lr/head")) // 2
    head_steps = [value for _, value in _values(events, "step/lr/head")]
    backbone_steps = _values(events, "step/lr/backbone")
    assert len(backbone_steps) == steps_per_epoch
    assert backbone_steps[0][0] == steps_per_epoch + 1
    assert max(head_steps) == pytest.approx(3e-3, rel=1e-5)
    assert head_steps[steps_per_epoch - 1] < head_steps[steps_per_epoch // 2]
    assert len(_values(events, "step/train_loss")) == 2 * steps_per_epoch
    assert all(value > 0 for _, value in _values(events, "step/images_per_s"))


def test_images_pr_curves_histograms_and_graph(two_stage_run: Path) -> None:
    events = _events(two_stage_run)
    tags: dict[str, Any] = events.Tags()
    assert len(events.Images("samples/augmented_train")) == 1
    assert [image.step for image in events.Images("confusion_matrix/val")] == [1, 2]
    assert all(image.width > 100 and image.height > 100 for image in events.Images("confusion_matrix/val"))
    best_epoch = json.loads((two_stage_run / "metrics.json").read_text())["best_epoch"]
    for label in LABELS:
        (curve,) = events.Tensors(f"pr_curve/{label}")
        assert curve.step == best_epoch
    # Histograms: stage 1 trains only the classifier, stage 2 also the last blocks.
    assert {"weights/classifier.weight", "grads/classifier.weight"} <= set(tags["histograms"])
    assert any(tag.startswith("weights/blocks.") for tag in tags["histograms"])
    assert not any(tag.startswith("weights/conv_stem") for tag in tags["histograms"])  # frozen: not logged
    assert tags["graph"] is True


def test_hparams_hold_the_final_metrics(two_stage_run: Path) -> None:
    events = _events(two_stage_run)
    metrics = json.loads((two_stage_run / "metrics.json").read_text())
    ((_, top1),) = _values(events, "hparam/top1")
    assert top1 == pytest.approx(metrics["top1"], rel=1e-6)
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {info.name.tag for info in experiment.metric_infos} >= {"hparam/top1", "hparam/log_loss"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["arch"].string_value == "efficientnet_lite0"
    assert hparams["lr"].number_value == pytest.approx(3e-3)
    assert hparams["crop_size"].number_value == 32 and hparams["augment.hflip_prob"].number_value == 0


def test_evaluate_logs_into_the_training_run(digits_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "cnn"
    _cli(
        "train", "--data", str(digits_dir), "--arch", "simple_cnn", "--crop-size", "16",
        "--resize-size", "16", "--epochs", "1", "--output-dir", str(run),
        "--export", str(tmp_path / "model"), *DIGITS_TRAIN_ARGS,
    )  # fmt: skip
    model = tmp_path / "model" / "model.onnx"
    _cli("evaluate", "--model", str(model), "--split", str(run / "split.json"), "--log-dir", str(run))
    events = _events(run)
    evaluation = json.loads((tmp_path / "model" / "evaluation" / "metrics.json").read_text())
    name = "simple_cnn-digits"
    ((_, top1),) = _values(events, f"evaluate/{name}/top1")
    assert top1 == pytest.approx(evaluation["top1"], rel=1e-6)
    assert len(events.Images(f"evaluate/{name}/confusion_matrix")) == 1
    assert len(events.Tensors(f"evaluate/{name}/pr_curve/7")) == 1
    assert _values(events, "loss/val")  # the training's own scalars are still there, one run


def test_no_tensorboard_writes_no_event_files(digits_dir: Path, tmp_path: Path) -> None:
    _cli(
        "train", "--data", str(digits_dir), "--arch", "simple_cnn", "--crop-size", "8",
        "--resize-size", "8", "--epochs", "1", "--output-dir", str(tmp_path), "--no-tensorboard",
        *DIGITS_TRAIN_ARGS,
    )  # fmt: skip
    assert (tmp_path / "metrics.json").is_file()
    assert not list(tmp_path.glob("events.out.tfevents.*"))
