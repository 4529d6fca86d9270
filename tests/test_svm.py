"""SVM-weighted L2 ranker: naive-loop parity, learning hidden informative dimensions, calibration, storage."""

import json

import numpy as np
import pytest

from core.config import SVMConfig
from core.data import ComparativeSets, make_comparative_sets
from core.errors import ArtifactError
from core.evaluate import evaluate, mean_proportion_interval, proportion_interval
from core.index import space_for
from core.rankers import L2Ranker
from core.svm import SVMRanker, pair_features


def test_weighted_distance_equals_naive_loop_over_dimensions():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=6).astype(np.float32)
    ranker = SVMRanker(weights=weights, bias=0.3)
    query, gallery = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    expected = np.zeros((3, 4))
    for i in range(3):
        for j in range(4):
            expected[i, j] = 0.3 + sum(weights[d] * (query[i, d] - gallery[j, d]) ** 2 for d in range(6))
    np.testing.assert_allclose(ranker.score(query, gallery), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ranker.score_pairs(query, gallery[:3]), np.diag(expected[:, :3]), rtol=1e-4, atol=1e-4)


def hidden_signal_data(rng, n_per_label=30, n_labels=6, informative=4, noise=60):
    """Labels are told apart by a few dimensions; many louder noise dimensions drown them for plain L2."""
    centres = rng.normal(scale=1.0, size=(n_labels, informative))
    labels = np.repeat(np.arange(n_labels), n_per_label).astype(str)
    signal = centres[labels.astype(int)] + rng.normal(scale=0.15, size=(len(labels), informative))
    embeddings = np.hstack([signal, rng.normal(scale=1.0, size=(len(labels), noise))])
    return embeddings.astype(np.float32), labels


def test_svm_finds_informative_dimensions_hidden_in_noise_and_beats_l2():
    rng = np.random.default_rng(0)
    embeddings, labels = hidden_signal_data(rng)
    train_sets = make_comparative_sets(labels, 20, 40, rng)
    ranker = SVMRanker(SVMConfig(C=1.0)).fit(embeddings, labels, train_sets)
    # weights on the 4 informative dimensions are much more negative (distance there matters) than on noise
    assert ranker.weights[:4].max() < ranker.weights[4:].min()
    test_embeddings, test_labels = hidden_signal_data(np.random.default_rng(1))
    test_sets = make_comparative_sets(test_labels, 10, 40, np.random.default_rng(2))
    svm_result = evaluate(ranker, test_embeddings, test_labels, test_sets, np.random.default_rng(0), 100)
    l2_result = evaluate(L2Ranker(), test_embeddings, test_labels, test_sets, np.random.default_rng(0), 100)
    assert svm_result.mean_rank.value < l2_result.mean_rank.value / 2
    assert svm_result.top1.value > l2_result.top1.value + 0.3
    accuracy = ranker.pair_accuracy(test_embeddings, test_sets)
    assert accuracy.balanced_accuracy.value > 0.8 and accuracy.n_pairs == len(test_sets) * 41
    assert accuracy.n_same == len(test_sets)


def test_pair_accuracy_comes_with_wilson_intervals():
    # a hand-made SVM: weight -1 on the one dimension, bias 0.5, so a pair is called "same" when |u - v| < 0.71
    ranker = SVMRanker(weights=np.array([-1.0], np.float32), bias=0.5)
    embeddings = np.array([[0.0], [0.1], [0.2], [0.3], [5.0], [6.0], [0.15]], np.float32)
    # 3 sets of 1 positive + 2 negatives; the last negative (0.15) is close: called "same" wrongly, twice
    sets = ComparativeSets(np.array([0, 2, 4]), np.array([[1, 4, 6], [3, 5, 6], [5, 0, 2]]))
    accuracy = ranker.pair_accuracy(embeddings, sets)
    # same pairs: 0-1, 2-3 right, 4-5 (distance 1) wrong -> 2/3; different pairs: 4, 5 right (far), 6 wrong twice,
    # 0 and 2 from 5.0 right -> 4/6; all: 6/9
    assert (accuracy.n_pairs, accuracy.n_same) == (9, 3)
    assert accuracy.accuracy == proportion_interval(6, 9)
    assert accuracy.balanced_accuracy == mean_proportion_interval([2, 4], [3, 6])
    assert accuracy.balanced_accuracy.value == pytest.approx((2 / 3 + 4 / 6) / 2)
    assert accuracy.balanced_accuracy.low < accuracy.balanced_accuracy.value < accuracy.balanced_accuracy.high
    perfect = SVMRanker(weights=np.array([-1.0], np.float32), bias=0.5).pair_accuracy(
        embeddings, ComparativeSets(np.array([0]), np.array([[1, 4, 5]]))
    )
    assert perfect.accuracy.value == 1.0 and perfect.accuracy.low < 1.0  # 3 of 3 right is no certainty


def test_calibration_is_monotone_and_informative():
    rng = np.random.default_rng(0)
    embeddings, labels = hidden_signal_data(rng)
    sets = make_comparative_sets(labels, 20, 40, rng)
    ranker = SVMRanker(SVMConfig(C=1.0, hard_negative_rounds=0)).fit(embeddings, labels, sets)
    grid = np.linspace(-10, 10, 101)
    probabilities = ranker.probability(grid)
    assert np.all(np.diff(probabilities) >= 0) and probabilities[-1] > probabilities[0]
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    same = ranker.probability(ranker.score_pairs(embeddings[sets.queries], embeddings[sets.references[:, 0]]))
    different = ranker.probability(ranker.score_pairs(embeddings[sets.queries], embeddings[sets.references[:, 1]]))
    assert same.mean() > 0.5 > different.mean()


def test_hard_negative_mining_adds_the_closest_other_label_images():
    embeddings = np.array([[0.0], [0.1], [0.2], [5.0], [5.2], [9.0]], np.float32)
    labels = np.array(["a", "a", "b", "b", "c", "c"], dtype=object)
    ranker = SVMRanker(SVMConfig(hard_negatives_per_query=1), weights=np.array([-1.0], np.float32))
    left, right = ranker._hard_negatives(embeddings, labels, np.array([0, 3]), np.arange(6))
    assert left.tolist() == [0, 3] and right.tolist() == [2, 4]  # nearest image of another label


def test_save_and_load_round_trip_without_pickle(tmp_path):
    ranker = SVMRanker(SVMConfig(C=0.5), weights=-np.arange(4, dtype=np.float32), bias=-1.5, platt=(-2.0, 0.25))
    path = tmp_path / "svm.npz"
    ranker.save(path, {"featurizer": "x"})
    with np.load(path, allow_pickle=False) as archive:
        assert json.loads(str(archive["header"]))["metadata"] == {"featurizer": "x"}
    loaded = SVMRanker.load(path)
    np.testing.assert_array_equal(loaded.weights, ranker.weights)
    assert (loaded.bias, loaded.platt, loaded.config) == (-1.5, (-2.0, 0.25), SVMConfig(C=0.5))


def test_bad_ranker_files_are_named(tmp_path):
    with pytest.raises(ArtifactError, match="missing.npz: no SVM ranker"):
        SVMRanker.load(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="junk.npz: unreadable SVM ranker"):
        SVMRanker.load(junk)
    positive = tmp_path / "positive.npz"
    SVMRanker(weights=np.array([-1.0, 0.5], np.float32)).save(positive)
    with pytest.raises(ArtifactError, match="positive.npz: SVM weights must be <= 0"):
        SVMRanker.load(positive)
    with pytest.raises(ArtifactError, match="not fitted"):
        SVMRanker().score(np.zeros((1, 2)), np.zeros((1, 2)))


def test_pair_features_are_squared_differences():
    np.testing.assert_array_equal(pair_features(np.array([[1.0, 2.0]]), np.array([[3.0, 2.5]])), [[4.0, 0.25]])


def test_fitted_weights_never_reward_distance_and_an_index_can_serve_them():
    rng = np.random.default_rng(0)
    embeddings, labels = hidden_signal_data(rng)
    ranker = SVMRanker(SVMConfig(C=1.0)).fit(embeddings, labels, make_comparative_sets(labels, 20, 40, rng))
    assert (ranker.weights <= 0).all() and (ranker.weights < 0).any()
    space = space_for(ranker)
    np.testing.assert_allclose(space.scale, np.sqrt(-ranker.weights), rtol=1e-6)


def test_a_query_far_outside_the_gallery_gets_its_nearest_items_not_the_far_extremes():
    rng = np.random.default_rng(0)
    embeddings, labels = hidden_signal_data(rng)
    ranker = SVMRanker(SVMConfig(C=1.0)).fit(embeddings, labels, make_comparative_sets(labels, 20, 40, rng))
    gallery = embeddings
    for dim in np.flatnonzero(np.abs(ranker.weights) > 1e-2 * np.abs(ranker.weights).max()):
        query = gallery.mean(axis=0, keepdims=True)
        query[0, dim] = gallery[:, dim].max() + 1e4  # far beyond the gallery along one dimension
        best = int(np.argmax(ranker.score(query, gallery)[0]))
        # an unconstrained weight > 0 on `dim` would rank the item with the lowest value there first
        assert best != int(np.argmin(gallery[:, dim]))
        assert gallery[best, dim] >= np.quantile(gallery[:, dim], 0.9)


def test_regularisation_pulls_towards_plain_l2_not_towards_zero():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 12))
    labels = np.repeat(np.arange(4), 20).astype(str)
    embeddings = centres[np.repeat(np.arange(4), 20)] + 0.6 * rng.normal(size=(80, 12))
    embeddings[:, -3:] = 0.0  # three dimensions no training pair ever exercises
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    sets = make_comparative_sets(labels, 10, 20, np.random.default_rng(0))
    weak = SVMRanker(SVMConfig(C=1e-6, hard_negative_rounds=0)).fit(embeddings, labels, sets)
    # almost no evidence: one weight for every dimension, i.e. plain L2 (same order as L2 for any query)
    assert np.ptp(weak.weights) < 1e-3 * abs(weak.weights.mean()) and weak.weights.mean() < 0
    queries, gallery = rng.normal(size=(5, 12)), rng.normal(size=(30, 12))
    np.testing.assert_array_equal(
        np.argsort(-weak.score(queries, gallery), axis=1), np.argsort(-L2Ranker().score(queries, gallery), axis=1)
    )
    strong = SVMRanker(SVMConfig(C=10.0, hard_negative_rounds=0)).fit(embeddings, labels, sets)
    assert np.ptp(strong.weights[:-3]) > 10 * np.ptp(weak.weights)  # evidence moves the exercised dimensions
    # the unexercised dimensions keep the plain-L2 weight instead of collapsing to 0 (which would make them free)
    assert np.all(strong.weights[-3:] < 0.5 * strong.weights[:-3].mean())
