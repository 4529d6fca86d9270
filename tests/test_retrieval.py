"""Full-gallery retrieval metrics and likely label errors: hand-computed values, a naive loop, and parity with
pytorch-metric-learning's AccuracyCalculator."""

import numpy as np
import pytest

from core.evaluate import evaluate_retrieval, retrieval_metrics
from core.label_errors import likely_label_errors
from core.rankers import CosineRanker, L2Ranker


def test_hand_computed_ranking_t_f_t_f():
    # ranking [T, F, T, F, T] with R = 4 relevant items in the gallery
    relevant = np.array([[True, False, True, False, True]])
    metrics = retrieval_metrics(relevant, np.array([4]), ks=(1, 2, 5))
    # MAP@R = (1/R) * sum over relevant i <= R of P(i) = (1/4) * (1/1 + 2/3) = 5/12
    assert metrics["map@r"][0] == pytest.approx(5 / 12)
    assert metrics["r_precision"][0] == pytest.approx(2 / 4)  # 2 relevant among the first R = 4
    assert metrics["precision@5"][0] == pytest.approx(3 / 5) and metrics["precision@2"][0] == pytest.approx(1 / 2)
    assert metrics["recall@1"][0] == 1.0 and metrics["mrr"][0] == 1.0
    late = retrieval_metrics(np.array([[False, False, True]]), np.array([1]), ks=(1, 2))
    # first relevant at rank 3: MRR 1/3; R = 1 and position 1 is not relevant: MAP@R = R-precision = 0
    assert late["mrr"][0] == pytest.approx(1 / 3) and late["map@r"][0] == 0.0 and late["r_precision"][0] == 0.0
    assert late["recall@2"][0] == 0.0


def test_one_dimensional_gallery_gives_the_hand_ranking_and_drops_lone_queries():
    # query 0 at x = 0 (label a); by L2 its results are x = 1 (a), 2 (b), 3 (a), 4 (b), 5 (a), 6 (a): T F T F T T
    positions = np.array([0, 1, 2, 3, 4, 5, 6, 9], np.float32)[:, None]
    labels = np.array(["a", "a", "b", "a", "b", "a", "a", "lone"])
    result = evaluate_retrieval(L2Ranker(), positions, labels, np.array([0, 7]), ks=(1, 5))
    assert (result.n_queries, result.n_dropped) == (1, 1)
    assert result.metrics["map@r"] == pytest.approx(5 / 12)  # R = 4: (1 + 2/3) / 4
    assert result.metrics["precision@5"] == pytest.approx(3 / 5)
    assert result.per_category["a"][0] == 1
    assert result.to_dict()["metrics"]["r_precision"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no query has another gallery item"):
        evaluate_retrieval(L2Ranker(), positions, labels, np.array([7]))


def naive_metrics(embeddings, labels, queries, k):
    """Explicit per-query loops over a full cosine ranking."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    rows = []
    for q in queries:
        order = [j for j in np.argsort(-(unit @ unit[q]), kind="stable") if j != q]
        rel = [labels[j] == labels[q] for j in order]
        r = sum(labels[j] == labels[q] for j in range(len(labels)) if j != q)
        if r == 0:
            continue
        ap = sum(sum(rel[: i + 1]) / (i + 1) for i in range(r) if rel[i]) / r
        first = next((i + 1 for i, x in enumerate(rel) if x), None)
        rows.append((float(any(rel[:k])), sum(rel[:k]) / k, sum(rel[:r]) / r, ap, 1 / first, labels[q]))
    return rows


def test_vectorised_metrics_match_a_naive_loop_on_random_data():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(60, 8)).astype(np.float32)
    labels = rng.choice(["a", "b", "c", "d"], size=60)
    queries = np.arange(0, 60, 2)
    result = evaluate_retrieval(CosineRanker(), embeddings, labels, queries, ks=(1, 5), block_rows=7)
    rows = naive_metrics(embeddings, labels, queries, 5)
    for column, name in enumerate(["recall@5", "precision@5", "r_precision", "map@r"]):
        assert result.metrics[name] == pytest.approx(np.mean([row[column] for row in rows]), abs=1e-9)
    per_label = {label: np.mean([row[3] for row in rows if row[5] == label]) for label in sorted(set(labels))}
    assert result.class_averaged["map@r"] == pytest.approx(np.mean(list(per_label.values())))
    # MRR counts only first hits within k_searched results (as pytorch-metric-learning does)
    assert result.metrics["mrr"] == pytest.approx(
        np.mean([row[4] if 1 / row[4] <= result.k_searched else 0.0 for row in rows])
    )


def test_parity_with_pytorch_metric_learning_accuracy_calculator():
    import torch
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(80, 6)).astype(np.float32)
    labels_int = rng.integers(0, 5, size=80)
    calculator = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "mean_reciprocal_rank"),
        knn_func=CustomKNN(CosineSimilarity()),
        k="max_bin_count",
    )
    tensor = torch.from_numpy(embeddings)
    labels_tensor = torch.from_numpy(labels_int)
    expected = calculator.get_accuracy(tensor, labels_tensor, tensor, labels_tensor, ref_includes_query=True)
    result = evaluate_retrieval(CosineRanker(), embeddings, labels_int.astype(str), np.arange(80))
    assert result.metrics["recall@1"] == pytest.approx(expected["precision_at_1"], abs=1e-6)
    assert result.metrics["r_precision"] == pytest.approx(expected["r_precision"], abs=1e-6)
    assert result.metrics["map@r"] == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-6)
    assert result.metrics["mrr"] == pytest.approx(expected["mean_reciprocal_rank"], abs=1e-6)


def test_planted_mislabels_are_found_first():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5.0, size=(4, 5))
    truth = np.repeat(np.arange(4), 25)
    embeddings = (centres[truth] + rng.normal(size=(100, 5))).astype(np.float32)
    labels = np.array(["a", "b", "c", "d"])[truth]
    planted = np.array([3, 30, 77])
    labels[planted] = ["b", "c", "a"]
    suspects = likely_label_errors(L2Ranker(), embeddings, labels, k=8)
    assert sorted(s.index for s in suspects) == planted.tolist()
    first = suspects[0]
    assert first.share >= 0.875 and first.neighbour_label == ["a", "b", "d"][planted.tolist().index(first.index)]
    assert len(first.neighbours) == 8 and first.index not in first.neighbours
    assert [s.share for s in suspects] == sorted((s.share for s in suspects), reverse=True)
    with pytest.raises(ValueError, match="min_share"):
        likely_label_errors(L2Ranker(), embeddings, labels, min_share=0.0)
