"""The shared k-NN graph: exact build against a naive loop, the clustered build's recall, the disk cache."""

import logging

import numpy as np
import pytest

from core.knn import KnnConfig, cache_path, cached_knn_graph, knn_graph, rows_signature
from core.rankers import CosineRanker, L2Ranker


def naive_graph(scores: np.ndarray, k: int) -> list[list[int]]:
    """Reference: per row, every other row sorted by (score descending, index ascending)."""
    return [
        sorted((j for j in range(len(row)) if j != i), key=lambda j: (-row[j], j))[:k] for i, row in enumerate(scores)
    ]


def clustered_rows(n: int, n_labels: int = 8, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_labels, dim))
    rows = centres[rng.integers(0, n_labels, n)] + 0.3 * rng.normal(size=(n, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("ranker", [CosineRanker(), L2Ranker()])
def test_exact_graph_equals_a_naive_loop_with_ties(ranker):
    rng = np.random.default_rng(1)
    rows = np.round(rng.normal(size=(30, 2)), 0).astype(np.float32)  # coarse grid: many equal scores
    rows[rows.sum(axis=1) == 0] = [1.0, 1.0]  # no zero vectors (cosine of a zero row is undefined)
    graph = knn_graph(rows, 6, ranker, method="exact")
    assert graph.indices.tolist() == naive_graph(ranker.score(rows, rows), 6)
    assert graph.indices.dtype == np.int64 and graph.scores.dtype == np.float32
    assert graph.exact and graph.k == 6 and graph.ranker == ranker.name
    np.testing.assert_allclose(graph.scores, np.take_along_axis(ranker.score(rows, rows), graph.indices, axis=1))


def test_identical_rows_never_list_themselves():
    rows = np.ones((5, 3), np.float32)
    graph = knn_graph(rows, 10, method="exact")
    assert graph.k == 4
    assert graph.indices.tolist() == [[j for j in range(5) if j != i] for i in range(5)]


def test_clustered_graph_probing_every_cluster_is_exact():
    rows = clustered_rows(600)
    config = KnnConfig(cluster_size=50, probe=12, pca_dims=8)  # 12 clusters of 50 rows: every row is a candidate
    clustered = knn_graph(rows, 5, method="clustered", config=config)
    exact = knn_graph(rows, 5, method="exact")
    assert clustered.method == "clustered" and not clustered.exact
    np.testing.assert_array_equal(clustered.indices, exact.indices)
    np.testing.assert_allclose(clustered.scores, exact.scores, rtol=1e-6)


def test_clustered_graph_finds_most_true_neighbours_with_few_probes():
    rows = clustered_rows(3000)
    clustered = knn_graph(rows, 10, method="clustered", config=KnnConfig(cluster_size=100, probe=4, pca_dims=8))
    exact = knn_graph(rows, 10, method="exact")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(clustered.indices, exact.indices, strict=True)])
    assert recall > 0.8
    assert not (clustered.indices == np.arange(len(rows))[:, None]).any()


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="N >= 2"):
        knn_graph(np.zeros((1, 3)), 1)
    with pytest.raises(ValueError, match="k must"):
        knn_graph(np.zeros((3, 3)), 0)
    with pytest.raises(ValueError, match="unknown k-NN method"):
        knn_graph(np.zeros((3, 3)), 1, method="hnsw")


def test_cache_is_read_back_serves_a_smaller_k_and_follows_the_rows(tmp_path, monkeypatch):
    rows = clustered_rows(200)
    first = cached_knn_graph(rows, 8, tmp_path, "fp")
    assert len(list(tmp_path.glob("knn-fp-cosine-*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt instead of read from the cache")

    monkeypatch.setattr("core.knn.knn_graph", fail)
    again = cached_knn_graph(rows, 5, tmp_path, "fp")
    np.testing.assert_array_equal(again.indices, first.indices[:, :5])
    monkeypatch.undo()
    changed = rows.copy()
    changed[0] = changed[1]
    assert rows_signature(changed) != rows_signature(rows)
    cached_knn_graph(changed, 5, tmp_path, "fp")
    assert len(list(tmp_path.glob("knn-fp-cosine-*.npz"))) == 2


@pytest.mark.parametrize(
    "damage",
    [
        lambda path, rows: path.write_bytes(b"not a zip"),
        lambda path, rows: np.savez(
            path,
            header=np.array('{"schema_version": 1}'),
            indices=np.zeros((3, 2)),
            scores=np.zeros((3, 2), np.float32),
        ),
    ],
)
def test_a_damaged_cache_file_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    rows = clustered_rows(50)
    path = cache_path(tmp_path, "fp", CosineRanker(), rows_signature(rows))
    expected = cached_knn_graph(rows, 4, tmp_path, "fp")
    damage(path, rows)
    with caplog.at_level(logging.WARNING, logger="core.knn"):
        graph = cached_knn_graph(rows, 4, tmp_path, "fp")
    assert str(path) in caplog.text and "building the k-NN graph again" in caplog.text
    np.testing.assert_array_equal(graph.indices, expected.indices)
    np.testing.assert_array_equal(cached_knn_graph(rows, 4, tmp_path, "fp").indices, expected.indices)  # rewritten


def test_a_cached_graph_with_a_self_loop_or_nan_is_rejected(tmp_path, caplog):
    rows = clustered_rows(40)
    path = cache_path(tmp_path, "fp", CosineRanker(), rows_signature(rows))
    good = cached_knn_graph(rows, 3, tmp_path, "fp")
    with np.load(path) as archive:
        header = archive["header"]
    for indices, scores, problem in [
        (np.tile(np.arange(40)[:, None], (1, 3)), good.scores, "lists itself"),
        (good.indices, np.full_like(good.scores, np.nan), "non-finite"),
    ]:
        np.savez(path, header=header, indices=indices.astype(np.int64), scores=scores)
        with caplog.at_level(logging.WARNING, logger="core.knn"):
            graph = cached_knn_graph(rows, 3, tmp_path, "fp")
        assert problem in caplog.text
        np.testing.assert_array_equal(graph.indices, good.indices)


def test_auto_switches_to_the_clustered_build_above_the_exact_limit(monkeypatch):
    rows = clustered_rows(400)
    assert knn_graph(rows, 5).method == "exact"
    monkeypatch.setattr("core.knn.EXACT_MAX_ROWS", 300)
    graph = knn_graph(rows, 5, config=KnnConfig(cluster_size=50, probe=3, pca_dims=8))
    assert graph.method == "clustered" and graph.indices.shape == (400, 5)


def test_uneven_clusters_keep_the_candidate_budget_and_still_find_k_neighbours():
    """One dense blob of 500 rows beside 20 spread rows: every row still gets k distinct other rows."""
    rng = np.random.default_rng(2)
    blob = rng.normal(size=(500, 16)) * 0.01 + 5.0
    spread = rng.normal(size=(20, 16)) * 3.0
    rows = np.vstack([blob, spread]).astype(np.float32)
    graph = knn_graph(rows, 30, L2Ranker(), method="clustered", config=KnnConfig(cluster_size=10, probe=2, pca_dims=8))
    assert graph.indices.shape == (520, 30)
    assert all(len(set(row)) == 30 for row in graph.indices.tolist())
    assert not (graph.indices == np.arange(520)[:, None]).any()
    np.testing.assert_allclose(graph.scores, np.take_along_axis(L2Ranker().score(rows, rows), graph.indices, axis=1))
