"""Fusion of several rankers in probability space.

Raw scores of different rankers live on different scales (an SVM for texture may spread over [-5, 5],
one for sleeve length over [-0.5, 0.5]), so averaging them lets the widest scale dominate. Calibrated
probabilities of "same" share one scale, so their weighted mean weighs each attribute as intended.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.rankers import Ranker
from core.svm import SVMRanker


def fuse_probabilities(probabilities: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of same-shaped probability arrays.

    Raises:
        ValueError: No inputs, mismatched shapes, or weights that are negative, all zero or of another count.
    """
    if not probabilities:
        raise ValueError("nothing to fuse")
    stacked = np.stack([np.asarray(p, np.float64) for p in probabilities])
    weight_array = np.ones(len(stacked)) if weights is None else np.asarray(weights, np.float64)
    if weight_array.shape != (len(stacked),) or (weight_array < 0).any() or weight_array.sum() == 0:
        raise ValueError(f"need {len(stacked)} non-negative weights with a positive sum, got {weight_array.tolist()}")
    return np.tensordot(weight_array / weight_array.sum(), stacked, axes=1)


class FusionRanker(Ranker):
    """Weighted mean of calibrated SVM rankers' probabilities over the same embeddings."""

    name = "fusion"

    def __init__(self, rankers: Sequence[SVMRanker], weights: Sequence[float] | None = None) -> None:
        self.rankers = list(rankers)
        self.weights = weights

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        return fuse_probabilities([r.probability(r.score(query, gallery)) for r in self.rankers], self.weights).astype(
            np.float32
        )

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return fuse_probabilities([r.probability(r.score_pairs(a, b)) for r in self.rankers], self.weights).astype(
            np.float32
        )
