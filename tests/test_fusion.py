"""Fusion in probability space: the worked example where raw-score averaging picks the wrong image."""

import numpy as np
import pytest

from core.errors import ArtifactError
from core.fusion import FusionRanker, ValueAgreementRanker, fuse_probabilities
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


def clustered(rng, centres, per_value: int = 20, spread: float = 0.3):
    """Unit embeddings around one centre per value, with the value of each row."""
    rows = np.concatenate([centre + spread * rng.normal(size=(per_value, len(centre))) for centre in centres])
    labels = np.repeat([f"v{i}" for i in range(len(centres))], per_value)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.mark.parametrize("n_values", [2, 3])
def test_value_agreement_is_the_chance_that_two_photos_share_a_value(n_values):
    rng = np.random.default_rng(1)
    centres = 3 * np.eye(n_values, 6)
    embeddings, labels = clustered(rng, centres)
    ranker = ValueAgreementRanker().fit(embeddings, labels)
    assert ranker.values == tuple(f"v{i}" for i in range(n_values))
    beliefs = ranker.value_probabilities(embeddings)
    np.testing.assert_allclose(beliefs.sum(axis=1), 1, rtol=1e-5)
    assert (beliefs.argmax(axis=1) == np.repeat(np.arange(n_values), 20)).mean() > 0.9
    query, gallery = embeddings[:3], embeddings[10:40]
    loop = np.array(
        [[sum(beliefs[q, v] * beliefs[10 + g, v] for v in range(n_values)) for g in range(30)] for q in range(3)]
    )
    scores = ranker.score(query, gallery)
    np.testing.assert_allclose(scores, loop, rtol=1e-5)
    np.testing.assert_allclose(ranker.score_pairs(query, gallery[:3]), np.diag(loop[:, :3]), rtol=1e-5)
    assert ((scores >= 0) & (scores <= 1)).all() and np.array_equal(ranker.probability(scores), scores)
    assert scores[0, :10].min() > 0.5 > scores[0, 10:].max()  # the same value first, every other value below


def test_fusion_mixes_an_svm_and_an_agreement_ranker_and_the_weights_move_the_order():
    rng = np.random.default_rng(2)
    embeddings, colours = clustered(rng, 3 * np.eye(2, 4))
    agreement = ValueAgreementRanker().fit(embeddings, colours)
    svm = SVMRanker(weights=-np.ones(4, np.float32), bias=1.0, platt=(-4.0, 0.0))
    query, gallery = embeddings[:1], embeddings[1:]
    by_look = FusionRanker([svm, agreement], [1.0, 0.0]).score(query, gallery)
    by_colour = FusionRanker([svm, agreement], [0.0, 1.0]).score(query, gallery)
    np.testing.assert_allclose(by_look, svm.probability(svm.score(query, gallery)), rtol=1e-5)
    assert not np.array_equal(np.argsort(-by_look[0]), np.argsort(-by_colour[0]))


def test_value_agreement_round_trips_and_refuses_bad_files(tmp_path):
    rng = np.random.default_rng(3)
    embeddings, labels = clustered(rng, 3 * np.eye(3, 5))
    ranker = ValueAgreementRanker(regularisation=0.5).fit(embeddings, labels)
    path = tmp_path / "agreement.npz"
    ranker.save(path, {"condition": "colour"})
    loaded = ValueAgreementRanker.load(path)
    assert loaded.values == ranker.values and loaded.regularisation == 0.5 and loaded.input_dim == 5
    np.testing.assert_allclose(loaded.score(embeddings[:4], embeddings), ranker.score(embeddings[:4], embeddings))
    with pytest.raises(ValueError, match="at least 2 values"):
        ValueAgreementRanker().fit(embeddings, np.array(["same"] * len(embeddings)))
    from core.artifacts import save_npz_with_header

    header = {"schema_version": 1, "values": ["a", "b"], "regularisation": 1.0}
    save_npz_with_header(path, header, coefficients=np.zeros((3, 5), np.float32), intercepts=np.zeros(2, np.float32))
    with pytest.raises(ArtifactError, match=r"agreement.npz: 2 values, coefficients \(3, 5\) and intercepts"):
        ValueAgreementRanker.load(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="agreement.npz: unreadable value-agreement ranker"):
        ValueAgreementRanker.load(path)
