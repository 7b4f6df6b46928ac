"""Probabilities -> top-k (index, probability) pairs."""

from __future__ import annotations

import numpy as np


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
