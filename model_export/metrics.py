"""Classification metrics from predicted probabilities: one function, used for PyTorch and ONNX alike."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

TOP5_MIN_CLASSES = 5


def top_k_accuracy(probabilities: np.ndarray, targets: np.ndarray, k: int) -> float:
    top_k = np.argsort(-probabilities, axis=1)[:, :k]
    return float((top_k == targets[:, None]).any(axis=1).mean())


def compute_metrics(probabilities: np.ndarray, targets: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Top-1, top-5 (with at least 5 classes), log loss, macro F1, per-class P/R/F1, confusion matrix."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels) or len(probabilities) != len(targets):
        raise ValueError(
            f"probabilities of shape {probabilities.shape} do not "
            f"fit {len(targets)} targets and {len(labels)} labels"
        )
    if len(targets) == 0:
        raise ValueError("cannot compute metrics over 0 images")
    class_ids = list(range(len(labels)))
    predictions = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=class_ids, zero_division=0
    )
    metrics: dict[str, Any] = {
        "num_images": len(targets),
        "top1": float((predictions == targets).mean()),
        "top5": top_k_accuracy(probabilities, targets, 5) if len(labels) >= TOP5_MIN_CLASSES else None,
        # Renormalise: fp16 softmax outputs may sum to 1 +- 1e-3.
        "log_loss": float(
            log_loss(targets, probabilities / probabilities.sum(1, keepdims=True), labels=class_ids)
        ),
        "macro_f1": float(f1_score(targets, predictions, labels=class_ids, average="macro", zero_division=0)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(targets, predictions, labels=class_ids).tolist(),
        "labels": list(labels),
    }
    return metrics


def headline(metrics: dict[str, Any]) -> str:
    """One line for summaries: top-1, top-5, log loss, macro F1."""
    top5 = f", top-5 {metrics['top5']:.4f}" if metrics.get("top5") is not None else ""
    return (
        f"top-1 {metrics['top1']:.4f}{top5}, log loss {metrics['log_loss']:.4f}, "
        f"macro F1 {metrics['macro_f1']:.4f} on {metrics['num_images']} images"
    )


def summary_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics, for the model card (per-class tables stay in metrics.json)."""
    return {k: metrics[k] for k in ("num_images", "top1", "top5", "log_loss", "macro_f1") if k in metrics}
