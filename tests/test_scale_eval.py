"""Bounded full-gallery evaluation and label errors: the k cap (hand-computed and against a naive loop), the
stratified query sample, label errors served by the shared k-NN graph."""

import numpy as np
import pytest

from core.evaluate import evaluate_retrieval, sample_queries
from core.knn import knn_graph
from core.label_errors import likely_label_errors
from core.rankers import CosineRanker, L2Ranker


def test_a_capped_search_gives_hand_computed_lower_bounds():
    # query 0 at x = 0 (label a); by L2 its results are x = 1 (a), 2 (b), 3 (a), 4 (b), 5 (a), 6 (a): T F T F T T
    positions = np.array([0, 1, 2, 3, 4, 5, 6], np.float32)[:, None]
    labels = np.array(["a", "a", "b", "a", "b", "a", "a"])
    full = evaluate_retrieval(L2Ranker(), positions, labels, np.array([0]), ks=(1, 2), max_k=None)
    assert full.metrics["map@r"] == pytest.approx((1 + 2 / 3) / 4) and full.n_truncated == 0 and full.note == ""
    capped = evaluate_retrieval(L2Ranker(), positions, labels, np.array([0]), ks=(1, 2), max_k=2)
    # R = 4 but only [T, F] retrieved: MAP@R = (1/1) / 4, R-precision = 1 / 4 (lower bounds), recall@1 unchanged
    assert capped.k_searched == 2 and capped.k_cap == 2 and capped.n_truncated == 1
    assert capped.metrics["map@r"] == pytest.approx(1 / 4) and capped.metrics["r_precision"] == pytest.approx(1 / 4)
    assert capped.metrics["recall@1"] == 1.0 and capped.metrics["precision@2"] == pytest.approx(1 / 2)
    assert "1 queries have more same-label images (R) than the 2 results" in capped.note
    assert capped.to_dict()["n_truncated"] == 1 and "lower bounds" in capped.to_dict()["note"]
    with pytest.raises(ValueError, match="max_k 1 is below the largest cut-off 2"):
        evaluate_retrieval(L2Ranker(), positions, labels, np.array([0]), ks=(1, 2), max_k=1)


def naive_capped(embeddings, labels, queries, cap):
    """Per-query loops: MAP@R and R-precision over the first min(R, cap) results, divided by R."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    maps, r_precisions = [], []
    for q in queries:
        order = [j for j in sorted(range(len(labels)), key=lambda j: (-float(unit[j] @ unit[q]), j)) if j != q][:cap]
        rel = [labels[j] == labels[q] for j in order]
        r = sum(labels[j] == labels[q] for j in range(len(labels)) if j != q)
        maps.append(sum(sum(rel[: i + 1]) / (i + 1) for i in range(min(r, cap)) if rel[i]) / r)
        r_precisions.append(sum(rel[: min(r, cap)]) / r)
    return np.mean(maps), np.mean(r_precisions)


@pytest.mark.parametrize("cap", [3, 8, 100])
def test_capped_metrics_match_a_naive_loop(cap):
    rng = np.random.default_rng(5)
    embeddings = rng.normal(size=(50, 4)).astype(np.float32)
    labels = rng.choice(["a", "b", "c"], size=50)
    queries = np.arange(0, 50, 3)
    result = evaluate_retrieval(CosineRanker(), embeddings, labels, queries, ks=(1, 3), max_k=cap)
    expected_map, expected_r_precision = naive_capped(embeddings, labels, queries, cap)
    assert result.metrics["map@r"] == pytest.approx(expected_map, abs=1e-9)
    assert result.metrics["r_precision"] == pytest.approx(expected_r_precision, abs=1e-9)
    counts = {label: int((labels == label).sum()) - 1 for label in "abc"}
    assert result.n_truncated == sum(counts[labels[q]] > cap for q in queries)


def test_sample_queries_is_stratified_seeded_and_a_subset():
    labels = np.array(["a"] * 600 + ["b"] * 300 + ["c"] * 95 + ["d"] * 5)
    pool = np.arange(1000)
    sample = sample_queries(pool, labels, 100, np.random.default_rng(0))
    assert len(sample) == 100 and len(set(sample.tolist())) == 100 and np.all(np.diff(sample) > 0)
    counts = {label: int((labels[sample] == label).sum()) for label in "abcd"}
    assert counts == {"a": 60, "b": 30, "c": 9, "d": 1}  # 9.5 and 0.5: largest remainders, ties to the earlier
    np.testing.assert_array_equal(sample, sample_queries(pool, labels, 100, np.random.default_rng(0)))
    assert not np.array_equal(sample, sample_queries(pool, labels, 100, np.random.default_rng(1)))
    rare = sample_queries(pool, labels, 10, np.random.default_rng(0))  # d's 0.05 share still gets one query
    assert len(rare) == 10 and set(labels[rare]) == {"a", "b", "c", "d"}
    np.testing.assert_array_equal(sample_queries(pool[::-1][:50], labels, 100, np.random.default_rng(0)), pool[950:])
    with pytest.raises(ValueError, match="n >= 1"):
        sample_queries(pool, labels, 0, np.random.default_rng(0))


def test_label_errors_from_a_given_graph_equal_the_built_one():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5.0, size=(4, 5))
    truth = np.repeat(np.arange(4), 25)
    embeddings = (centres[truth] + rng.normal(size=(100, 5))).astype(np.float32)
    labels = np.array(["a", "b", "c", "d"])[truth]
    labels[[3, 30, 77]] = ["b", "c", "a"]
    graph = knn_graph(embeddings, 12, L2Ranker())
    assert likely_label_errors(L2Ranker(), embeddings, labels, k=8, graph=graph) == likely_label_errors(
        L2Ranker(), embeddings, labels, k=8
    )
    with pytest.raises(ValueError, match="does not serve"):
        likely_label_errors(L2Ranker(), embeddings, labels, k=8, graph=graph.first(5))


def test_intervals_come_with_a_generator_and_bracket_each_metric():
    rng = np.random.default_rng(7)
    embeddings = rng.normal(size=(80, 4)).astype(np.float32)
    labels = rng.choice(["a", "b"], size=80)
    plain = evaluate_retrieval(CosineRanker(), embeddings, labels, np.arange(40), ks=(1, 5))
    assert plain.intervals == {} and plain.to_dict()["intervals"] == {}
    result = evaluate_retrieval(
        CosineRanker(), embeddings, labels, np.arange(40), ks=(1, 5), rng=np.random.default_rng(0)
    )
    assert result.intervals.keys() == result.metrics.keys()
    for name, estimate in result.intervals.items():
        assert estimate.value == pytest.approx(result.metrics[name])
        assert estimate.low <= estimate.value <= estimate.high
    assert result.intervals["map@r"].low < result.intervals["map@r"].high  # 40 different queries: a real spread
    assert result.to_dict()["intervals"]["map@r"]["low"] == result.intervals["map@r"].low
