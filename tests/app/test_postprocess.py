from __future__ import annotations

import numpy as np
import pytest

from app.inference.postprocess import top_k


def test_top_k_is_sorted_descending() -> None:
    probabilities = np.array([0.05, 0.4, 0.1, 0.3, 0.15], dtype=np.float32)
    indices, values = top_k(probabilities, 3)
    assert indices.tolist() == [1, 3, 4]
    assert values.tolist() == pytest.approx([0.4, 0.3, 0.15])


def test_top_k_of_all_classes_is_a_full_sort_with_ties_by_index() -> None:
    indices, _ = top_k(np.array([0.2, 0.3, 0.2, 0.3], dtype=np.float32), 4)
    assert indices.tolist() == [1, 3, 0, 2]


def test_top_k_matches_a_full_sort_on_many_classes() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.random(1000).astype(np.float32)
    indices, values = top_k(probabilities, 5)
    assert indices.tolist() == np.argsort(-probabilities)[:5].tolist()
    assert values.tolist() == probabilities[indices].tolist()


@pytest.mark.parametrize("k", [0, 6])
def test_k_out_of_range_is_an_error(k: int) -> None:
    with pytest.raises(ValueError, match=r"k must be in 1\.\.5"):
        top_k(np.zeros(5, dtype=np.float32), k)
