"""Plots: training curves, the confusion matrix, the learning-rate sweep (PNG files), and the
figures TensorBoard shows (confusion matrix, augmented samples)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never open a window on a training box

import itertools

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def plot_history(history: list[dict[str, Any]], path: Path) -> Path:
    """Training and validation loss and top-1 per epoch; a dashed line where fine-tuning starts."""
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    acc_ax.plot(epochs, [h["train_top1"] for h in history], "o-", label="train")
    acc_ax.plot(epochs, [h["val_top1"] for h in history], "o-", label="validation")
    stage_changes = [h["epoch"] for prev, h in itertools.pairwise(history) if h["stage"] != prev["stage"]]
    for ax, title in ((loss_ax, "loss"), (acc_ax, "top-1 accuracy")):
        for epoch in stage_changes:
            ax.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path, title: str = "") -> Path:
    fig = confusion_matrix_figure(matrix, labels, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix_figure(matrix: list[list[int]], labels: list[str], title: str = "") -> Figure:
    """Counts, true class by row, predicted by column; the numbers written in for up to 30 classes."""
    counts = np.asarray(matrix)
    size_in = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size_in, size_in))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 6 else 0)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    if len(labels) <= 30:
        threshold = counts.max() / 2 if counts.size else 0
        for (row, col), value in np.ndenumerate(counts):
            ax.text(
                col,
                row,
                str(value),
                ha="center",
                va="center",
                color="white" if value > threshold else "black",
            )
    fig.tight_layout()
    return fig


def samples_figure(images: list[np.ndarray], titles: list[str], columns: int = 4) -> Figure:
    """A grid of uint8 HWC images, each titled (with its label)."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_lr_sweep(lrs: list[float], losses: list[float], suggested_lr: float | None, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    if suggested_lr is not None:
        ax.axvline(suggested_lr, color="red", linestyle="--", label=f"suggested {suggested_lr:.2g}")
        ax.legend()
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("learning-rate sweep")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
