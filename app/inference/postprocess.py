"""Probabilities -> the labelled top-k of one image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field


@dataclass(frozen=True)
class ClassScore:
    """One class of the model's output: its index, its label and its probability (the Field
    metadata is the OpenAPI document's: REST answers carry this class as it is)."""

    index: Annotated[int, Field(description="Class index in the model's output.", examples=[281])]
    label: Annotated[str, Field(examples=["tabby"])]
    probability: Annotated[float, Field(ge=0, le=1, examples=[0.61])]


@dataclass(frozen=True)
class Classification:
    """The answer for one image: the top-k, most probable first, and the whole float32 vector."""

    top_k: list[ClassScore]
    probabilities: np.ndarray


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest entries of a 1-D probability vector, descending (ties: lower index first).

    ``np.argpartition`` selects the k in O(C); only those k are sorted.
    """
    count = probabilities.shape[0]
    if not 1 <= k <= count:
        raise ValueError(f"k must be in 1..{count}, got {k}")
    candidates = np.argpartition(-probabilities, k - 1)[:k] if k < count else np.arange(count)
    order = np.lexsort((candidates, -probabilities[candidates]))
    indices = candidates[order]
    return indices, probabilities[indices]


def classify(probabilities: np.ndarray, labels: Sequence[str], k: int) -> Classification:
    """The labelled top-k of one image's probabilities."""
    indices, values = top_k(probabilities, k)
    # float16 models can round a probability a hair past 1
    scores = [
        ClassScore(index=i, label=labels[i], probability=min(max(p, 0.0), 1.0))
        for i, p in zip(indices.tolist(), values.tolist(), strict=True)
    ]
    return Classification(top_k=scores, probabilities=probabilities)
