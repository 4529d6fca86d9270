"""Fusion in probability space: the worked example where raw-score averaging picks the wrong image."""

import numpy as np
import pytest

from core.fusion import FusionRanker, fuse_probabilities
from core.svm import SVMRanker


def platt(a: float, score: float, b: float = 0.0) -> float:
    return 1.0 / (1.0 + np.exp(a * score + b))


def test_probability_fusion_ranks_the_right_image_first_where_raw_scores_do_not():
    # One query, two candidates; image A truly matches (texture, neck style and sleeve), image B does not.
    # Each attribute's SVM has its own score scale, hence its own Platt parameters.
    attributes = {
        #          Platt a   score A  score B
        "texture": (-0.5, -1.0, 4.0),  # wide scale: B's big raw score is only moderately likely "same"
        "neck": (-8.0, 0.9, -0.9),  # narrow scale: small raw gap, decisive probabilities
        "sleeve": (-6.0, 0.5, -0.2),
    }
    raw = {image: np.mean([values[1 + image] for values in attributes.values()]) for image in (0, 1)}
    assert raw[1] > raw[0]  # averaging raw scores: B (0.97) above A (0.13), wrong

    probabilities = [np.array([platt(a, score_a), platt(a, score_b)]) for a, score_a, score_b in attributes.values()]
    fused = fuse_probabilities(probabilities)
    # hand-computed: A = (0.3775 + 0.9993 + 0.9526) / 3, B = (0.8808 + 0.0007 + 0.2315) / 3
    np.testing.assert_allclose(fused, [0.7765, 0.3710], atol=1e-3)
    assert fused.argmax() == 0  # averaging probabilities: A first, right


def test_weights_and_validation():
    np.testing.assert_allclose(fuse_probabilities([np.array([0.2]), np.array([0.8])], [3, 1]), [0.35])
    for bad in ([1.0], [-1.0, 2.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match="non-negative weights"):
            fuse_probabilities([np.array([0.2]), np.array([0.8])], bad)
    with pytest.raises(ValueError, match="nothing"):
        fuse_probabilities([])


def test_fusion_ranker_matches_fused_probabilities():
    rng = np.random.default_rng(0)
    first = SVMRanker(weights=-np.ones(3, np.float32), bias=1.0, platt=(-2.0, 0.0))
    second = SVMRanker(weights=-np.array([1, 0, 0], np.float32), bias=0.5, platt=(-5.0, 1.0))
    query, gallery = rng.normal(size=(2, 3)), rng.normal(size=(5, 3))
    fusion = FusionRanker([first, second], [1.0, 2.0])
    expected = (
        first.probability(first.score(query, gallery)) + 2 * second.probability(second.score(query, gallery))
    ) / 3
    np.testing.assert_allclose(fusion.score(query, gallery), expected, rtol=1e-5)
    np.testing.assert_allclose(fusion.score_pairs(query, gallery[:2]), np.diag(expected[:, :2]), rtol=1e-5)
