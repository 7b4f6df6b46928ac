"""Evaluate an exported ONNX file with ONNX Runtime: what ships is what is measured.

Preprocessing comes from the model card, read by ``model_card.load_card`` exactly as the server reads it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from model_card import ModelCard, load_card

from .data import (
    DatasetError,
    ImageListDataset,
    create_eval_transform,
    load_split,
    mean_std_tensors,
    normalize_uint8,
)
from .data import scan_image_folder as scan_folder
from .metrics import compute_metrics
from .plots import plot_confusion_matrix

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    metrics_path: Path
    card: ModelCard
    skipped_files: int


def _samples(
    card: ModelCard, data_dir: Path | None, split_path: Path | None, subset: str
) -> tuple[list[tuple[Path, int]], int]:
    """Samples indexed by the card's labels: an ImageFolder tree, or one subset of a saved split."""
    if split_path is not None:
        split = load_split(split_path)
        samples, classes, skipped = (split.val if subset == "val" else split.train), split.classes, 0
    elif data_dir is not None:
        scan = scan_folder(data_dir, classes=None)
        samples, classes, skipped = scan.samples, scan.classes, len(scan.skipped)
    else:
        raise DatasetError("evaluate needs --data DIR or --split split.json")
    unknown = sorted(set(classes) - set(card.labels))
    if unknown:
        raise DatasetError(
            f"classes {unknown} of the dataset are not labels of the model ({card.labels[:10]}...)"
        )
    index = {label: i for i, label in enumerate(card.labels)}
    return [(path, index[classes[target]]) for path, target in samples], skipped


def evaluate_onnx(
    model_path: Path,
    *,
    data_dir: Path | None = None,
    split_path: Path | None = None,
    subset: str = "val",
    batch_size: int = 32,
    workers: int = 0,
    output_dir: Path | None = None,
    threads: int = 0,
    log_dir: Path | None = None,
) -> EvaluationResult:
    """Run ``model_path`` over the images; write metrics.json and a confusion-matrix PNG, and with
    ``log_dir`` the same to TensorBoard (``model_export/tensorboard_log.py``)."""
    import onnxruntime as ort

    card = load_card(model_path)
    samples, skipped = _samples(card, data_dir, split_path, subset)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    loader = DataLoader(
        ImageListDataset(samples, create_eval_transform(card.preprocessing)),
        batch_size=batch_size,
        num_workers=workers,
    )
    mean, std = mean_std_tensors(card.preprocessing)
    input_dtype = np.float16 if card.input.dtype == "float16" else np.float32
    probabilities: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for pixels, batch_targets in tqdm(
        loader, desc=f"evaluate {model_path.name}", unit="batch", dynamic_ncols=True
    ):
        if card.input.layout == "NHWC":
            feed = pixels.permute(0, 2, 3, 1).contiguous().numpy()
        else:
            # --float-input graphs leave normalisation to the caller, as the card says.
            feed = normalize_uint8(pixels, mean, std).numpy().astype(input_dtype)
        probabilities.append(session.run(None, {card.input.name: feed})[0].astype(np.float32))
        targets.append(batch_targets.numpy())
    all_probabilities, all_targets = np.concatenate(probabilities), np.concatenate(targets)
    metrics = compute_metrics(all_probabilities, all_targets, card.labels)
    metrics["model"] = str(model_path)
    metrics["skipped_files"] = skipped
    output_dir = output_dir or model_path.parent / "evaluation"
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = output_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=1) + "\n")
    if card.num_classes <= 100:
        plot_confusion_matrix(
            metrics["confusion_matrix"],
            card.labels,
            output_dir / "confusion_matrix.png",
            f"{card.name} ({card.precision}), top-1 {metrics['top1']:.3f}",
        )
    if log_dir is not None:
        from .tensorboard_log import log_evaluation

        log_evaluation(log_dir, card.name, metrics, all_probabilities, all_targets)
    return EvaluationResult(metrics, metrics_path, card, skipped)
