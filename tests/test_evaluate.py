"""Evaluation: hand-computed ranks, pessimistic ties, metrics against naive loops, chance level."""

import numpy as np
import pytest

from core.data import ComparativeSets
from core.evaluate import evaluate, format_table, positive_ranks, summarize, top_n_accuracy
from core.rankers import L2Ranker, RandomRanker


def test_positive_ranks_hand_computed():
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # positive best -> 1
            [0.5, 0.6, 0.7, 0.1],  # two negatives above -> 3
            [0.0, 0.1, 0.2, 0.3],  # worst -> 4
            [0.5, 0.5, 0.1, 0.5],  # two ties count against the positive -> 3
        ]
    )
    assert positive_ranks(scores).tolist() == [1, 3, 4, 3]


def test_top_n_accuracy_and_summary_match_naive():
    ranks = np.array([1, 1, 2, 5, 6, 30, 3, 1])
    labels = np.array(["a", "a", "a", "b", "b", "b", "c", "c"])
    assert top_n_accuracy(ranks, 1) == 3 / 8
    assert top_n_accuracy(ranks, 5) == 6 / 8
    result = summarize("x", ranks, labels, n_negatives=31, rng=np.random.default_rng(0), n_resamples=200)
    assert result.mean_rank.value == pytest.approx(sum(ranks) / len(ranks))
    assert result.median_rank.value == 2.5
    assert result.mean_rank.low <= result.mean_rank.value <= result.mean_rank.high
    assert result.mean_rank.low < result.mean_rank.high
    for n in range(1, 33):
        assert result.top_n[n - 1] == pytest.approx(sum(r <= n for r in ranks) / len(ranks))
    by_label = {c.label: c for c in result.per_category}
    assert by_label["b"].n_queries == 3 and by_label["b"].mean_rank == pytest.approx(41 / 3)
    assert by_label["c"].top1 == 0.5 and by_label["a"].median_rank == 1
    assert result.chance_mean_rank == 16.5
    assert "mean rank" in format_table([result])


def test_evaluate_uses_comparative_sets_and_embeddings():
    # 1-D embeddings make the expected ranks easy to work out by hand.
    embeddings = np.array([[0.0], [0.1], [1.0], [2.0], [0.05], [5.0]], np.float32)
    labels = np.array(["a", "a", "b", "b", "c", "c"])
    sets = ComparativeSets(
        queries=np.array([0, 2]),
        references=np.array([[1, 4, 3], [3, 4, 0]]),  # column 0 is the positive
    )
    result = evaluate(L2Ranker(), embeddings, labels, sets, np.random.default_rng(0), n_resamples=10)
    # query 0 at 0.0: positive at 0.1, negative at 0.05 is closer -> rank 2
    # query 2 at 1.0: positive at 2.0 (dist 1), negatives at 0.05 (0.95) and 0.0 (1.0, tie) -> rank 3
    assert result.ranks.tolist() == [2, 3]
    assert result.query_labels.tolist() == ["a", "b"]
    assert result.n_negatives == 2


def test_random_ranker_sits_at_chance():
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(400, 4)).astype(np.float32)
    sets = ComparativeSets(np.arange(300), rng.integers(0, 400, size=(300, 40)))
    result = evaluate(RandomRanker(rng), embeddings, np.zeros(400, str), sets, rng, n_resamples=100)
    assert abs(result.mean_rank.value - result.chance_mean_rank) < 2.5  # chance is 20.5, sd of mean ~0.7


def test_empty_or_malformed_input():
    with pytest.raises(ValueError, match="no queries"):
        summarize("x", np.array([], int), np.array([], str), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        positive_ranks(np.zeros(4))


def test_evaluate_records_best_reference_per_query():
    embeddings = np.array([[0.0], [0.1], [1.0], [2.0], [0.05], [5.0]], np.float32)
    labels = np.array(["a", "a", "b", "b", "c", "c"])
    sets = ComparativeSets(queries=np.array([0, 2]), references=np.array([[1, 4, 3], [3, 4, 0]]))
    result = evaluate(L2Ranker(), embeddings, labels, sets, np.random.default_rng(0), n_resamples=10)
    assert result.queries.tolist() == [0, 2] and result.positives.tolist() == [1, 3]
    assert result.best_references.tolist() == [4, 4]  # nearest references: 0.05 for both
