"""Near-duplicate distances are exact: L2 scores, top-k and the exact index against a naive float64 loop."""

import numpy as np
import pytest

from core.index.exact import ExactConfig, ExactIndex
from core.rankers import L2Ranker, top_k

DIM = 1280
TRUE_DISTANCES = np.geomspace(1e-3, 1e-2, 12)


def naive_l2(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Distances by a plain loop over coordinates, in float64."""
    out = np.zeros((len(query), len(gallery)))
    for i, q in enumerate(query.astype(np.float64)):
        for j, g in enumerate(gallery.astype(np.float64)):
            out[i, j] = sum((a - b) * (a - b) for a, b in zip(q.tolist(), g.tolist(), strict=True)) ** 0.5
    return out


@pytest.fixture(scope="module")
def near_set():
    """Unit queries, and a shuffled gallery holding copies of each query at 1e-3 ... 1e-2 plus random unit rows."""
    rng = np.random.default_rng(7)
    query = rng.normal(size=(3, DIM))
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    near = []
    for row in query:
        direction = rng.normal(size=(len(TRUE_DISTANCES), DIM))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        near.append(row + TRUE_DISTANCES[:, None] * direction)
    far = rng.normal(size=(20, DIM))
    far /= np.linalg.norm(far, axis=1, keepdims=True)
    gallery = np.concatenate([*near, far])[rng.permutation(3 * len(TRUE_DISTANCES) + 20)]
    query, gallery = query.astype(np.float32), gallery.astype(np.float32)
    return query, gallery, naive_l2(query, gallery)


def assert_exact_and_ordered(indices: np.ndarray, distances: np.ndarray, reference: np.ndarray) -> None:
    for row, (order, got) in enumerate(zip(indices, distances, strict=True)):
        expected = reference[row, order]
        near = expected < 0.02
        assert near.sum() == len(TRUE_DISTANCES)  # every near copy of this query is among the results
        np.testing.assert_allclose(got[near], expected[near], rtol=1e-3)
        assert list(order[near]) == list(np.argsort(reference[row], kind="stable")[: near.sum()])


def test_l2_score_is_exact_for_near_vectors(near_set):
    query, gallery, reference = near_set
    distances = -L2Ranker().score(query, gallery).astype(np.float64)
    near = reference < 0.02
    assert near.sum() == 3 * len(TRUE_DISTANCES)
    np.testing.assert_allclose(distances[near], reference[near], rtol=1e-3)
    np.testing.assert_allclose(distances[~near], reference[~near], rtol=1e-5)  # far pairs keep the fast form's accuracy
    for row in range(len(query)):  # the order of the near copies is the true one
        assert list(np.argsort(distances[row])[: len(TRUE_DISTANCES)]) == list(
            np.argsort(reference[row])[: len(TRUE_DISTANCES)]
        )


def test_l2_score_equals_pairs_form(near_set):
    query, gallery, _ = near_set
    full = L2Ranker().score(query, gallery)
    pairs = L2Ranker().score_pairs(np.repeat(query, len(gallery), axis=0), np.tile(gallery, (len(query), 1)))
    np.testing.assert_allclose(full.reshape(-1), pairs, rtol=1e-5)


@pytest.mark.parametrize("block_rows", [5, None])
def test_top_k_orders_near_duplicates_exactly(near_set, block_rows):
    query, gallery, reference = near_set
    indices, scores = top_k(L2Ranker(), query, gallery, k=len(TRUE_DISTANCES) + 2, block_rows=block_rows)
    assert_exact_and_ordered(indices, -scores.astype(np.float64), reference)


@pytest.mark.parametrize("block_rows", [7, 0])
def test_exact_index_orders_near_duplicates_exactly(near_set, block_rows):
    query, gallery, reference = near_set
    index = ExactIndex("fp", DIM, ExactConfig(block_rows=block_rows))
    index.add(np.arange(len(gallery)) * 10, gallery)
    hits = index.search(query, len(TRUE_DISTANCES) + 2, L2Ranker())
    assert_exact_and_ordered(hits.ids // 10, -hits.scores.astype(np.float64), reference)


def test_exact_index_float16_near_duplicates_are_recomputed_from_stored_values(near_set):
    query, gallery, _ = near_set
    index = ExactIndex("fp", DIM, ExactConfig(dtype="float16"))
    index.add(np.arange(len(gallery)), gallery)
    hits = index.search(query[:1], 3, L2Ranker())
    stored = gallery.astype(np.float16)[hits.ids[0]]
    np.testing.assert_allclose(-hits.scores[0], naive_l2(query[:1], stored)[0], rtol=1e-3)
