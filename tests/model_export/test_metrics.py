"""Metrics on hand-checked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model_export.metrics import compute_metrics


def test_metrics_by_hand() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    targets = np.array([0, 1, 1, 2])
    metrics = compute_metrics(probabilities, targets, ["a", "b", "c"])
    assert metrics["top1"] == 0.75
    assert metrics["top5"] is None  # fewer than 5 classes
    expected_loss = -(math.log(0.7) + math.log(0.8) + math.log(0.4) + math.log(0.6)) / 4
    assert metrics["log_loss"] == pytest.approx(expected_loss)
    assert metrics["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert metrics["per_class"]["a"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "support": 1,
    }
    assert metrics["per_class"]["b"]["recall"] == 0.5
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_top5_with_enough_classes() -> None:
    probabilities = np.array([[0.05, 0.1, 0.1, 0.1, 0.15, 0.5], [0.5, 0.1, 0.1, 0.1, 0.15, 0.05]])
    metrics = compute_metrics(probabilities, np.array([4, 5]), [str(i) for i in range(6)])
    assert metrics["top1"] == 0.0
    assert metrics["top5"] == 0.5  # class 4 is second in row 0; class 5 is last in row 1


def test_shape_mismatch_error() -> None:
    with pytest.raises(ValueError) as info:
        compute_metrics(np.ones((2, 3)) / 3, np.array([0, 1]), ["a", "b"])
    assert str(info.value) == "probabilities of shape (2, 3) do not fit 2 targets and 2 labels"
