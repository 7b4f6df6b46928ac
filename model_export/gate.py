"""The accuracy gate: a reduced-precision variant against its fp32 model on held-out images.

Pure numpy over two probability matrices (fp32's and the variant's, same images, same order):
top-1 agreement on the images where fp32's top-1 leads its runner-up by at least
``confident_margin`` (near-ties that any change of arithmetic may flip are left out there, and
counted in the agreement on all images), top-5 overlap, the largest change of any probability
and, where the images have labels, both accuracies and their paired difference with a 95%
confidence interval. The variant passes when every threshold holds; each miss is named.

A variant whose weights were trained again (quantization-aware training) is another model, not
an approximation of the fp32 one: where it is more accurate it disagrees with fp32 wherever it
corrects it. Its agreement is measured and recorded, but it is judged on the labels alone
(``judge_agreement=False``): its accuracy may not drop more than ``max_accuracy_drop``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model_card import AccuracyGate, GateFigures

CONFIDENT_MARGIN = 0.02
Z_95 = 1.959964


@dataclass(frozen=True)
class GateThresholds:
    """What a variant must keep; ``max_accuracy_drop`` applies where labels exist."""

    top1_agreement_confident: float = 0.995
    top1_agreement_all: float = 0.97
    top5_overlap: float = 0.96
    max_accuracy_drop: float = 0.005
    confident_margin: float = CONFIDENT_MARGIN
    judge_agreement: bool = True  # False: a retrained variant, judged on its accuracy only

    def as_dict(self) -> dict[str, float]:
        agreement = {
            "top1_agreement_confident_min": self.top1_agreement_confident,
            "top1_agreement_all_min": self.top1_agreement_all,
            "top5_overlap_min": self.top5_overlap,
        }
        return {
            **(agreement if self.judge_agreement else {}),
            "accuracy_drop_max": self.max_accuracy_drop,
            "confident_margin": self.confident_margin,
        }


def _top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]


def compare(
    reference: np.ndarray,
    variant: np.ndarray,
    labels: np.ndarray | None = None,
    confident_margin: float = CONFIDENT_MARGIN,
) -> GateFigures:
    """The gate's figures for ``variant`` against ``reference`` ([N, C] probabilities each)."""
    if reference.shape != variant.shape or reference.ndim != 2 or len(reference) == 0:
        raise ValueError(
            f"need two [N, C] probability arrays of one shape, got {reference.shape} and {variant.shape}"
        )
    if not np.isfinite(variant).all():
        raise ValueError(
            f"the variant's probabilities hold {int((~np.isfinite(variant)).sum())} non-finite values"
        )
    ordered = np.sort(reference, axis=1)
    confident = (ordered[:, -1] - ordered[:, -2]) >= confident_margin
    same_top1 = reference.argmax(1) == variant.argmax(1)
    k = min(5, reference.shape[1])
    reference_top, variant_top = _top_k(reference, k), _top_k(variant, k)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(reference_top, variant_top, strict=True)])
    figures = GateFigures(
        images=len(reference),
        confident_images=int(confident.sum()),
        confident_margin=confident_margin,
        top1_agreement_confident=float(same_top1[confident].mean()) if confident.any() else 1.0,
        top1_agreement_all=float(same_top1.mean()),
        top5_overlap=float(overlap),
        max_abs_prob_diff=float(np.abs(reference.astype(np.float64) - variant).max()),
    )
    if labels is None:
        return figures
    return figures.model_copy(update=_accuracy_difference(reference, variant, labels))


def _accuracy_difference(reference: np.ndarray, variant: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """Both accuracies and the paired difference (variant - fp32) with a normal 95% interval."""
    reference_right = (reference.argmax(1) == labels).astype(np.float64)
    variant_right = (variant.argmax(1) == labels).astype(np.float64)
    differences = variant_right - reference_right
    mean = float(differences.mean())
    half_width = (
        Z_95 * float(differences.std(ddof=1)) / math.sqrt(len(differences)) if len(differences) > 1 else 1.0
    )
    return {
        "accuracy_fp32": float(reference_right.mean()),
        "accuracy_variant": float(variant_right.mean()),
        "accuracy_difference": mean,
        "accuracy_difference_ci95": (mean - half_width, mean + half_width),
    }


def judge(
    figures: GateFigures,
    thresholds: GateThresholds,
    *,
    images: dict[str, object],
    measured_with: str,
) -> AccuracyGate:
    """Pass or fail ``figures`` against ``thresholds``, naming each miss."""
    failures: list[str] = []
    checks = (
        (
            "top-1 agreement on confident images",
            figures.top1_agreement_confident,
            thresholds.top1_agreement_confident,
        ),
        ("top-1 agreement on all images", figures.top1_agreement_all, thresholds.top1_agreement_all),
        ("top-5 overlap", figures.top5_overlap, thresholds.top5_overlap),
    )
    for what, value, minimum in checks if thresholds.judge_agreement else ():
        if value < minimum:
            failures.append(f"{what} {value:.4f} < {minimum}")
    if not thresholds.judge_agreement and figures.accuracy_difference is None:
        failures.append("a retrained variant is judged on labelled images, and these have no labels")
    if (
        figures.accuracy_difference is not None
        and -figures.accuracy_difference > thresholds.max_accuracy_drop
    ):
        failures.append(
            f"accuracy {figures.accuracy_variant:.4f} vs fp32 {figures.accuracy_fp32:.4f}: a drop of "
            f"{-figures.accuracy_difference:.4f} > {thresholds.max_accuracy_drop}"
        )
    return AccuracyGate(
        passed=not failures,
        thresholds=thresholds.as_dict(),
        failures=failures,
        figures=figures,
        images=dict(images),
        measured_with=measured_with,
    )
