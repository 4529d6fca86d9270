"""Rankers: vectorised scores against naive loops, one score direction, blockwise top-k."""

import numpy as np
import pytest

from core.rankers import CosineRanker, L1Ranker, L2Ranker, RandomRanker, make_ranker, top_k


def naive_score(name: str, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    out = np.zeros((len(query), len(gallery)))
    for i, q in enumerate(query.astype(np.float64)):
        for j, g in enumerate(gallery.astype(np.float64)):
            if name == "l2":
                out[i, j] = -(sum((a - b) ** 2 for a, b in zip(q, g, strict=True)) ** 0.5)
            elif name == "l1":
                out[i, j] = -sum(abs(a - b) for a, b in zip(q, g, strict=True))
            else:
                dot = sum(a * b for a, b in zip(q, g, strict=True))
                out[i, j] = dot / (sum(a * a for a in q) ** 0.5 * sum(b * b for b in g) ** 0.5)
    return out


@pytest.fixture
def vectors():
    rng = np.random.default_rng(1)
    return rng.normal(size=(7, 16)).astype(np.float32), rng.normal(size=(11, 16)).astype(np.float32)


@pytest.mark.parametrize("name", ["l1", "l2", "cosine"])
def test_scores_equal_naive_loops(name, vectors):
    query, gallery = vectors
    ranker = make_ranker(name)
    np.testing.assert_allclose(ranker.score(query, gallery), naive_score(name, query, gallery), rtol=1e-4, atol=1e-4)
    pairs = ranker.score_pairs(query, gallery[: len(query)])
    np.testing.assert_allclose(pairs, np.diag(naive_score(name, query, gallery[: len(query)])), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ranker", [L1Ranker(), L2Ranker(), CosineRanker()])
def test_higher_score_means_more_similar(ranker):
    anchor = np.array([[1.0, 0.0, 0.0]], np.float32)
    gallery = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.9, 0.1, 0.0]], np.float32)
    assert list(np.argsort(-ranker.score(anchor, gallery)[0])) == [1, 2, 0]


def test_random_ranker_is_reproducible_for_a_seed(vectors):
    query, gallery = vectors
    first = RandomRanker(np.random.default_rng(5)).score(query, gallery)
    again = RandomRanker(np.random.default_rng(5)).score(query, gallery)
    other = RandomRanker(np.random.default_rng(6)).score(query, gallery)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("name", ["l1", "l2", "cosine"])
@pytest.mark.parametrize("block_rows", [1, 3, None])
def test_blockwise_top_k_equals_full_sort(name, block_rows):
    rng = np.random.default_rng(2)
    query, gallery = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    ranker = make_ranker(name)
    indices, scores = top_k(ranker, query, gallery, k=10, block_rows=block_rows)
    full = ranker.score(query, gallery)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-5)


def test_top_k_breaks_ties_by_lower_index_and_caps_k():
    gallery = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]], np.float32)
    indices, scores = top_k(L2Ranker(), np.array([[1.0, 0.0]], np.float32), gallery, k=10, block_rows=2)
    assert indices.tolist() == [[0, 1, 2, 3]]
    assert scores.shape == (1, 4)


def test_bad_shapes_and_names_are_rejected():
    with pytest.raises(ValueError, match="embeddings"):
        L2Ranker().score(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="aligned"):
        L2Ranker().score_pairs(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="unknown ranker"):
        make_ranker("hamming")
    with pytest.raises(ValueError, match="k must"):
        top_k(L2Ranker(), np.zeros((1, 2)), np.zeros((3, 2)), k=0)


@pytest.mark.parametrize("block_rows", [7, None])
def test_top_k_ties_at_the_cut_go_to_the_lower_index(block_rows):
    """Many equal scores straddling the k-th place: the partial selection must still keep the lowest indices."""
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(60, 4)).astype(np.float32) * 10
    tied_rows = np.array([5, 12, 13, 30, 41, 42, 50, 59])
    gallery[tied_rows] = [1.0, 0.0, 0.0, 0.0]
    query = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    for ranker in (L2Ranker(), CosineRanker()):
        indices, _ = top_k(ranker, query, gallery, k=5, block_rows=block_rows)
        assert indices.tolist() == [[5, 12, 13, 30, 41]]
        scores = ranker.score(query, gallery)
        expected = sorted(range(len(gallery)), key=lambda j: (-scores[0, j], j))[:5]  # reference: a plain sort
        assert indices[0].tolist() == expected


def naive_top_k_loop(scores: np.ndarray, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Reference: per query, sort every gallery row by (score descending, index ascending)."""
    indices, values = [], []
    for row in scores:
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        indices.append(order)
        values.append([float(row[j]) for j in order])
    return indices, values


@pytest.mark.parametrize(("query_rows", "block_rows"), [(1, 1), (2, 5), (7, 3), (3, 64), (None, None)])
@pytest.mark.parametrize("k", [1, 6, 25, 40])
def test_top_k_blocked_over_queries_and_gallery_equals_a_naive_loop(query_rows, block_rows, k):
    """Scores rounded to a coarse grid make many ties, across block borders of both dimensions."""
    rng = np.random.default_rng(4)
    query = np.round(rng.normal(size=(9, 3)), 0).astype(np.float32)
    gallery = np.round(rng.normal(size=(40, 3)), 0).astype(np.float32)
    ranker = L2Ranker()
    indices, scores = top_k(ranker, query, gallery, k, block_rows=block_rows, query_rows=query_rows)
    expected_indices, expected_scores = naive_top_k_loop(ranker.score(query, gallery), k)
    assert indices.tolist() == expected_indices
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    assert indices.dtype == np.int64 and scores.dtype == np.float32


def test_block_shape_stays_wide_for_a_large_k_and_keeps_the_budget():
    """MAP@R at 20k photos asks k = 2,000: the old gallery block (budget / (Nq * D)) was 2 rows."""
    from core.rankers import BLOCK_ELEMENTS, MIN_QUERY_BLOCK, block_shape

    for n_query, n_gallery, k in [(20_000, 20_000, 2_000), (2_000, 1_000_000, 1_000), (1_000_000, 1_000_000, 11)]:
        query_rows, gallery_rows = block_shape(n_query, n_gallery, k)
        assert query_rows >= MIN_QUERY_BLOCK and gallery_rows >= 4 * k
        assert query_rows * (gallery_rows + k) <= BLOCK_ELEMENTS
    assert block_shape(1, 10**6, 10) == (1, min(10**6, BLOCK_ELEMENTS - 10))  # one query: the widest gallery block
    assert block_shape(5, 3, 2) == (5, 3)  # never more rows than there are


def test_random_baseline_is_random_per_query_reproducible_and_blockwise_consistent():
    from core.rankers import RandomRanker, top_k

    rng = np.random.default_rng(5)
    gallery = rng.normal(size=(500, 8)).astype(np.float32)
    queries = gallery[:20]
    ranker = RandomRanker(np.random.default_rng(0))
    found, _ = top_k(ranker, queries, gallery, 12)
    assert len({tuple(row) for row in found.tolist()}) == 20  # every query its own 12 (was: the same 12 for all)
    # two searches as the app and the CLI make them (a ranker built anew per search): other queries, other results
    first = top_k(RandomRanker(np.random.default_rng(0)), queries[:1], gallery, 12)[0]
    second = top_k(RandomRanker(np.random.default_rng(0)), queries[1:2], gallery, 12)[0]
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(found, top_k(RandomRanker(np.random.default_rng(0)), queries, gallery, 12)[0])
    np.testing.assert_array_equal(found, top_k(ranker, queries, gallery, 12, block_rows=7)[0])
    np.testing.assert_array_equal(ranker.score(queries[3:4], gallery), ranker.score(queries, gallery)[3:4])
    assert not np.array_equal(found, top_k(RandomRanker(np.random.default_rng(1)), queries, gallery, 12)[0])
    scores = ranker.score(queries, gallery).ravel()
    counts = np.histogram(scores, bins=10, range=(0.0, 1.0))[0]
    assert scores.min() >= 0.0 and scores.max() < 1.0
    assert np.all(np.abs(counts - len(scores) / 10) < 0.1 * len(scores) / 10)  # uniform within 10 % per decile
