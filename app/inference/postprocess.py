"""Probabilities -> the labelled top-k of one image, with its class activation maps when asked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

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
class CropBox:
    """Where the model's input crop lies in the original image, in the original's pixels
    (after its EXIF orientation, as browsers show it): what a map is laid over."""

    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class ClassMap:
    """One class's activation map: float32 [h, w], normalised to [0, 1], over the crop's box."""

    index: int
    label: str
    heatmap: np.ndarray

    def rounded(self, decimals: int = 4) -> list[list[float]]:
        """The map as rows of floats to ``decimals`` places: what the JSON answers carry."""
        rows: list[list[float]] = np.round(self.heatmap.astype(np.float64), decimals).tolist()
        return rows


@dataclass(frozen=True)
class Explanation:
    """Why the model answered as it did for one image: the maps of the top-k classes that the
    model explains (most probable first; the first is the top class's) and the crop's box."""

    method: Literal["cam", "grad-cam"]
    box: CropBox
    maps: list[ClassMap]


@dataclass(frozen=True)
class Classification:
    """The answer for one image: the top-k, most probable first, and the whole float32 vector;
    its explanation when the request asked for one."""

    top_k: list[ClassScore]
    probabilities: np.ndarray
    explanation: Explanation | None = None


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


def class_maps(scores: Sequence[ClassScore], maps: np.ndarray, map_classes: np.ndarray) -> list[ClassMap]:
    """The maps (float [K, h, w]) of the ``scores``' classes among ``map_classes`` ([K]), in the
    scores' order: the graph explains its own top K, matched here by class index, not position
    (a tie may order two classes differently in the graph and here)."""
    position = {int(index): i for i, index in enumerate(map_classes.tolist())}
    return [
        ClassMap(score.index, score.label, np.asarray(maps[position[score.index]], dtype=np.float32))
        for score in scores
        if score.index in position
    ]
