"""The index contract: exact index vs explicit loops, persistence, model ids, SVM scaling, faiss and Milvus Lite."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import ArtifactError
from core.index import (
    ModelMismatchError,
    UnsupportedRankerError,
    content_ids,
    create_index,
    current_version,
    load_index,
    space_for,
)
from core.index.exact import ExactConfig, ExactIndex
from core.rankers import CosineRanker, L2Ranker, make_ranker
from core.svm import SVMRanker

MODEL = "efficientnet_lite0-abc123"


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, dim: int, n_clusters: int = 20) -> np.ndarray:
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    rows = centres[rng.integers(0, n_clusters, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def naive_top_k(
    score_fn, query: np.ndarray, gallery: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reference: score every pair in a Python loop, full sort."""
    scores = np.array([[score_fn(q, g) for g in gallery] for q in query], np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def svm_with(weights: np.ndarray, bias: float = 0.3) -> SVMRanker:
    return SVMRanker(weights=weights, bias=bias)


LOOPS = {
    "cosine": lambda q, g: float(q @ g / (np.linalg.norm(q) * np.linalg.norm(g))),
    "l2": lambda q, g: -float(np.sqrt(((q.astype(np.float64) - g) ** 2).sum())),
    "l1": lambda q, g: -float(np.abs(q.astype(np.float64) - g).sum()),
}


def assert_same_hits(hits, expected_ids, expected_scores, atol=1e-4) -> None:
    """Same scores; ids equal except where neighbouring scores tie within ``atol``."""
    np.testing.assert_allclose(hits.scores, expected_scores, atol=atol, rtol=1e-4)
    differ = hits.ids != expected_ids
    if differ.any():
        gaps = np.abs(np.diff(expected_scores, axis=1)).min(axis=1)
        assert (gaps[differ.any(axis=1)] < atol).all(), "different ids without a near-tie"


@pytest.mark.parametrize("name", ["cosine", "l2", "l1"])
@pytest.mark.parametrize("block_rows", [7, 0])
def test_exact_index_equals_explicit_loop(name: str, block_rows: int) -> None:
    rng = np.random.default_rng(0)
    gallery, query = rng.standard_normal((60, 12)).astype(np.float32), rng.standard_normal((5, 12)).astype(np.float32)
    ids = rng.permutation(1000)[:60].astype(np.int64)
    index = ExactIndex(MODEL, 12, ExactConfig(block_rows=block_rows))
    index.add(ids, gallery)
    hits = index.search(query, 8, make_ranker(name))
    expected_ids, expected_scores = naive_top_k(LOOPS[name], query, gallery, ids, 8)
    assert hits.ids.shape == (5, 8) and hits.ids.dtype == np.int64 and hits.scores.dtype == np.float32
    assert_same_hits(hits, expected_ids, expected_scores)


def test_exact_index_svm_equals_explicit_weighted_loop() -> None:
    rng = np.random.default_rng(1)
    gallery, query = rng.standard_normal((50, 10)).astype(np.float32), rng.standard_normal((4, 10)).astype(np.float32)
    weights = rng.normal(size=10).astype(np.float32)  # mixed signs: the exact index uses the ranker's own score
    ranker = svm_with(weights)
    index = ExactIndex(MODEL, 10, ExactConfig(block_rows=16))
    index.add(np.arange(50), gallery)

    def loop(q, g):
        return float(sum(w * (a - b) ** 2 for w, a, b in zip(weights, q, g, strict=True)) + 0.3)

    expected_ids, expected_scores = naive_top_k(loop, query, gallery, np.arange(50), 6)
    assert_same_hits(index.search(query, 6, ranker), expected_ids, expected_scores)


def test_random_ranker_matches_its_own_scores_in_one_block() -> None:
    rng = np.random.default_rng(2)
    gallery = unit(rng, 30, 4)
    index = ExactIndex(MODEL, 4)
    index.add(np.arange(30), gallery)
    hits = index.search(gallery[:3], 5, make_ranker("random", np.random.default_rng(7)))
    scores = make_ranker("random", np.random.default_rng(7)).score(gallery[:3], gallery)
    np.testing.assert_array_equal(hits.ids, np.argsort(-scores, axis=1)[:, :5])


def test_float16_storage_has_full_recall_against_float32() -> None:
    rng = np.random.default_rng(3)
    gallery, query = unit(rng, 2000, 64), unit(rng, 20, 64)
    full, half = ExactIndex(MODEL, 64), ExactIndex(MODEL, 64, ExactConfig(dtype="float16"))
    for index in (full, half):
        index.add(np.arange(2000), gallery)
    for queries in (query, query[:1]):  # batch path and the few-query half-precision path
        for ranker in (CosineRanker(), L2Ranker()):
            a, b = full.search(queries, 10, ranker), half.search(queries, 10, ranker)
            recall = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a.ids, b.ids, strict=True)])
            assert recall >= 0.95
            np.testing.assert_allclose(a.scores, b.scores, atol=3e-3)
    assert half.nbytes < 0.6 * full.nbytes


def test_add_remove_search_consistency_and_compaction() -> None:
    rng = np.random.default_rng(4)
    gallery = unit(rng, 400, 16)
    index = ExactIndex(MODEL, 16)
    index.add(np.arange(400), gallery)
    removed = rng.choice(400, 150, replace=False)
    assert index.remove(removed[:50]) == 50
    assert index.remove(removed[:50]) == 0  # already gone
    assert index.remove(removed) == 100  # crosses the compaction threshold
    assert len(index) == 250 and index._n_dead == 0
    hits = index.search(gallery[removed[:20]], 250, CosineRanker())
    assert not np.isin(hits.ids, removed).any()
    keep = np.setdiff1d(np.arange(400), removed)
    expected_ids, expected_scores = naive_top_k(LOOPS["cosine"], gallery[:3], gallery[keep], keep, 10)
    assert_same_hits(index.search(gallery[:3], 10, CosineRanker()), expected_ids, expected_scores)
    with pytest.raises(ValueError, match="already in the index"):
        index.add([int(keep[0])], gallery[:1])
    index.add(removed[:5], gallery[removed[:5]])  # a removed id can come back
    assert len(index) == 255


def test_incremental_add_keeps_old_results_and_finds_new_rows() -> None:
    rng = np.random.default_rng(5)
    gallery, extra, query = unit(rng, 500, 16), unit(rng, 100, 16), unit(rng, 8, 16)
    index = ExactIndex(MODEL, 16)
    index.add(np.arange(500), gallery)
    before = index.search(query, 5, CosineRanker())
    vectors_before = index._vectors
    index.add(np.arange(500, 600), extra)
    assert len(index) == 600
    both = np.vstack([gallery, extra])
    expected_ids, expected_scores = naive_top_k(LOOPS["cosine"], query, both, np.arange(600), 5)
    assert_same_hits(index.search(query, 5, CosineRanker()), expected_ids, expected_scores)
    # results restricted to the old rows are unchanged
    old_only = ExactIndex(MODEL, 16)
    stored_ids, stored_vectors = index.vectors()
    old_only.add(stored_ids[:500], stored_vectors[:500])
    np.testing.assert_array_equal(old_only.search(query, 5, CosineRanker()).ids, before.ids)
    assert index._vectors is vectors_before or len(index._vectors) >= 600  # capacity grows by doubling


def test_search_edge_cases() -> None:
    index = ExactIndex(MODEL, 3)
    assert index.search(np.ones((2, 3), np.float32), 5, CosineRanker()).ids.shape == (2, 0)
    index.add([3, 9], np.eye(3, dtype=np.float32)[:2])
    assert index.search(np.ones((1, 3), np.float32), 5, CosineRanker()).ids.shape == (1, 2)
    with pytest.raises(ValueError, match=r"expected \(N, 3\)"):
        index.search(np.ones((1, 4), np.float32), 1, CosineRanker())
    with pytest.raises(ValueError, match="non-negative"):
        index.add([-1], np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="duplicate"):
        index.add([5, 5], np.ones((2, 3), np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_load_round_trip(tmp_path, dtype: str) -> None:
    rng = np.random.default_rng(6)
    gallery, query = unit(rng, 300, 8), unit(rng, 4, 8)
    index = ExactIndex(MODEL, 8, ExactConfig(dtype=dtype))
    index.add(np.arange(300) * 3, gallery)
    index.remove([0, 3, 6])
    index.save(tmp_path / "index")
    manifest = json.loads((current_version(tmp_path / "index") / "manifest.json").read_text())
    assert manifest["fingerprint"] == MODEL and manifest["count"] == 297 and manifest["backend"] == "exact"
    loaded = load_index(tmp_path / "index", fingerprint=MODEL)
    assert isinstance(loaded, ExactIndex) and loaded.config == index.config
    for ranker in (CosineRanker(), L2Ranker()):
        a, b = index.search(query, 7, ranker), loaded.search(query, 7, ranker)
        np.testing.assert_array_equal(a.ids, b.ids)
        # same vectors, same order; the BLAS kernel may differ with the reloaded array's memory alignment, so a
        # score may move by an ulp or so (seen on some machines of this kind): float32 tolerance, not bit identity
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    assert loaded.manifest()["data_hash"] == manifest["data_hash"]


def test_refuses_another_model(tmp_path) -> None:
    index = ExactIndex(MODEL, 4)
    index.add([1], np.ones((1, 4), np.float32))
    index.save(tmp_path)
    with pytest.raises(ModelMismatchError, match="resnet50"):
        load_index(tmp_path, fingerprint="resnet50-xyz")
    with pytest.raises(ModelMismatchError):
        index.add([2], np.ones((1, 4), np.float32), fingerprint="resnet50-xyz")
    with pytest.raises(ModelMismatchError):
        index.search(np.ones((1, 4), np.float32), 1, CosineRanker(), fingerprint="resnet50-xyz")
    index.add([2], np.ones((1, 4), np.float32), fingerprint=MODEL)


def test_load_reports_missing_and_corrupt(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="no index saved"):
        load_index(tmp_path)
    index = ExactIndex(MODEL, 4)
    index.add([1, 2], np.ones((2, 4), np.float32))
    index.save(tmp_path)
    (current_version(tmp_path) / "ids.npy").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="damaged index .*ids.npy"):
        load_index(tmp_path)
    with pytest.raises(ArtifactError, match="damaged index .*unreadable exact files"):
        load_index(tmp_path, verify=False)


def test_content_ids_are_stable_non_negative_int64() -> None:
    digests = ["f" * 64, "0" * 63 + "1", "a1b2" + "0" * 60]
    ids = content_ids(digests)
    assert ids.dtype == np.int64 and (ids >= 0).all() and ids[0] == 2**60 - 1
    np.testing.assert_array_equal(ids, content_ids(digests))


def test_svm_sqrt_w_scaling_equals_weighted_loop() -> None:
    """With every weight <= 0, ``w . (u - v)**2 + b == b - ||sqrt(-w) * (u - v)||**2``."""
    rng = np.random.default_rng(8)
    weights = -rng.random(6).astype(np.float32)
    weights[2] = 0.0
    ranker = svm_with(weights)
    space = space_for(ranker)
    u, v = rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal((7, 6)).astype(np.float32)
    scaled_sq = ((space.transform(u)[:, None, :] - space.transform(v)[None, :, :]) ** 2).sum(2)
    loop = np.array(
        [[sum(w * (a - b) ** 2 for w, a, b in zip(weights, x, y, strict=True)) + 0.3 for y in v] for x in u]
    )
    np.testing.assert_allclose(space.scores_from_distances(scaled_sq), loop, atol=1e-5)
    np.testing.assert_allclose(ranker.score(u, v), loop, atol=1e-5)


def test_space_for_refuses_what_ann_cannot_serve() -> None:
    with pytest.raises(UnsupportedRankerError, match="positive weight"):
        space_for(svm_with(np.array([-1.0, 0.5], np.float32)))
    for name in ("l1", "random"):
        with pytest.raises(UnsupportedRankerError, match="exact index"):
            space_for(make_ranker(name))
    assert space_for(CosineRanker()).metric == "cosine" and space_for(L2Ranker()).metric == "l2"


# -- faiss --------------------------------------------------------------------------------------------------------


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(a.tolist()) & set(b.tolist())) / truth.shape[1] for a, b in zip(found, truth, strict=True)])
    )


@pytest.mark.parametrize("ranker_name", ["cosine", "l2", "svm"])
def test_faiss_flat_equals_exact(ranker_name: str) -> None:
    pytest.importorskip("faiss")
    from core.index.faiss_backend import FaissConfig

    rng = np.random.default_rng(9)
    gallery, query = unit(rng, 500, 16), unit(rng, 10, 16)
    ranker = svm_with(-rng.random(16).astype(np.float32)) if ranker_name == "svm" else make_ranker(ranker_name)
    exact, flat = ExactIndex(MODEL, 16), create_index(FaissConfig(kind="flat"), MODEL, 16, ranker)
    ids = rng.permutation(10_000)[:500]
    for index in (exact, flat):
        index.add(ids, gallery)
    truth = exact.search(query, 10, ranker)
    assert_same_hits(flat.search(query, 10, ranker), truth.ids, truth.scores, atol=2e-4)
    with pytest.raises(UnsupportedRankerError):
        flat.search(query, 10, make_ranker("l1"))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_remove_save_load_and_model_check(tmp_path, kind: str) -> None:
    pytest.importorskip("faiss")
    from core.index.faiss_backend import FaissConfig, FaissIndex

    rng = np.random.default_rng(10)
    gallery = clustered(rng, 2000, 16)
    index = create_index(FaissConfig(kind=kind, nprobe=64, ef_search=200), MODEL, 16, CosineRanker())
    index.add(np.arange(2000), gallery)
    removed = np.arange(0, 2000, 7)
    assert index.remove(removed) == len(removed) and len(index) == 2000 - len(removed)
    hits = index.search(gallery[removed[:30]], 20, CosineRanker())
    assert not np.isin(hits.ids, removed).any()
    index.add(np.arange(2000, 2100), unit(rng, 100, 16))  # incremental, IVF reuses its trained lists
    index.save(tmp_path / kind)
    loaded = load_index(tmp_path / kind, fingerprint=MODEL)
    assert isinstance(loaded, FaissIndex) and len(loaded) == len(index)
    query = gallery[1:6]
    np.testing.assert_array_equal(
        loaded.search(query, 10, CosineRanker()).ids, index.search(query, 10, CosineRanker()).ids
    )
    with pytest.raises(ModelMismatchError):
        load_index(tmp_path / kind, fingerprint="other-model")
    with pytest.raises(UnsupportedRankerError, match="serves cosine"):
        loaded.search(query, 10, L2Ranker())


@pytest.mark.parametrize("dims", [8, 4])
def test_faiss_serves_the_projection_and_its_neighbour_labels_as_a_loop_computes_them(tmp_path, dims: int) -> None:
    """Score = 0.4 [0.25 cos(xM, yM) + 0.75 cos(p(x), p(y))] + 0.6 cos(x, y), p a softmax vote of labelled voters,
    naive loops."""
    pytest.importorskip("faiss")
    from core.index.faiss_backend import FaissConfig
    from core.metric_learning import NeighbourLabels, ProjectionConfig, ProjectionRanker

    rng = np.random.default_rng(12)
    gallery, query, voters = unit(rng, 300, 8), unit(rng, 6, 8), unit(rng, 20, 8)
    matrix = rng.standard_normal((8, dims)).astype(np.float32)
    voter_labels = rng.integers(0, 3, 20)
    votes = NeighbourLabels("input", voters, voter_labels, 3, temperature=0.1, weight=0.75)
    ranker = ProjectionRanker(ProjectionConfig(label_weight=0.75, temperature=0.1), matrix, 0.0, votes)
    ids = np.arange(300) * 3

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    def soft_label(x: np.ndarray) -> np.ndarray:
        return np.array(
            [
                sum(np.exp(cosine(x, v) / 0.1) for v, label in zip(voters, voter_labels, strict=True) if label == c)
                for c in range(3)
            ]
        )

    def expected_score(q: np.ndarray, g: np.ndarray) -> float:
        q, g = q.astype(np.float64), g.astype(np.float64)
        agreement = 0.25 * cosine(q @ matrix, g @ matrix) + 0.75 * cosine(soft_label(q), soft_label(g))
        return 0.4 * agreement + 0.6 * cosine(q, g)  # the default look weight, 0.6

    expected_ids, expected_scores = naive_top_k(expected_score, query, gallery, ids, 10)
    index = create_index(FaissConfig(kind="flat"), MODEL, 8, ranker)
    index.add(ids, gallery)
    assert_same_hits(index.search(query, 10, ranker), expected_ids, expected_scores)
    index.save(tmp_path / "projection")
    loaded = load_index(tmp_path / "projection", fingerprint=MODEL)
    assert_same_hits(loaded.search(query, 10, ranker), expected_ids, expected_scores)
    other_votes = NeighbourLabels("input", voters, (voter_labels + 1) % 3, 3, temperature=0.1, weight=0.75)
    for other in (ProjectionRanker(matrix=matrix), ProjectionRanker(ranker.config, matrix, 0.0, other_votes)):
        with pytest.raises(UnsupportedRankerError, match="serves projection"):
            loaded.search(query, 10, other)


@pytest.mark.parametrize("kind, threshold", [("ivf", 0.9), ("hnsw", 0.9)])
def test_faiss_ann_recall_at_10_is_measured(kind: str, threshold: float) -> None:
    """Recall@10 vs the exact index on 5,000 clustered vectors (D = 32), 50 held-out queries.

    Settings are faiss-typical (IVF: nlist = 4 sqrt(N) = 283, nprobe = 32; HNSW: M = 32, efSearch = 128).
    Measured here: both about 0.99-1.0; the 0.9 threshold leaves room for platform differences in faiss's
    k-means and graph construction while still failing on a broken id mapping or metric (recall ~0.002).
    """
    pytest.importorskip("faiss")
    from core.index.faiss_backend import FaissConfig

    rng = np.random.default_rng(11)
    data = clustered(rng, 5050, 32, n_clusters=50)
    gallery, query = data[:5000], data[5000:]
    exact = ExactIndex(MODEL, 32)
    ann = create_index(FaissConfig(kind=kind), MODEL, 32, CosineRanker())
    for index in (exact, ann):
        index.add(np.arange(5000), gallery)
    recall = recall_at(ann.search(query, 10, CosineRanker()).ids, exact.search(query, 10, CosineRanker()).ids)
    assert recall >= threshold, f"{kind} recall@10 = {recall:.3f}"


def test_faiss_svm_with_positive_weights_is_refused() -> None:
    pytest.importorskip("faiss")
    from core.index.faiss_backend import FaissConfig

    with pytest.raises(UnsupportedRankerError, match="exact index"):
        create_index(FaissConfig(kind="flat"), MODEL, 2, svm_with(np.array([-1.0, 1.0], np.float32)))


# -- Milvus Lite ------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # long (real training, export or server): `make test-slow` runs it in CI
def test_milvus_lite_round_trip(tmp_path) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from core.index.milvus_backend import MilvusConfig, MilvusIndex

    rng = np.random.default_rng(12)
    gallery, query = unit(rng, 300, 16), unit(rng, 5, 16)
    config = MilvusConfig(uri=str(tmp_path / "milvus.db"), collection="test")
    for ranker in (CosineRanker(), L2Ranker()):
        name = f"test_{ranker.name}"
        index = create_index(MilvusConfig(uri=config.uri, collection=name), MODEL, 16, ranker)
        index.add(np.arange(300) + 10, gallery)
        exact = ExactIndex(MODEL, 16)
        exact.add(np.arange(300) + 10, gallery)
        truth = exact.search(query, 10, ranker)
        assert_same_hits(index.search(query, 10, ranker), truth.ids, truth.scores, atol=2e-4)
        assert index.remove([10, 11, 12, 99_999]) == 3 and len(index) == 297
        assert not np.isin(index.search(gallery[:3], 10, ranker).ids, [10, 11, 12]).any()
        with pytest.raises(ValueError, match="already in the index"):
            index.add([13], gallery[:1])
        index.save(tmp_path / name)
        index.close()
        loaded = load_index(tmp_path / name, fingerprint=MODEL)
        assert isinstance(loaded, MilvusIndex) and len(loaded) == 297
        np.testing.assert_array_equal(np.sort(loaded.ids()), np.arange(13, 310))
        with pytest.raises(ModelMismatchError):
            loaded.search(query, 3, ranker, fingerprint="another")
        loaded.close()


def test_a_manifest_written_before_neighbour_labels_still_loads_its_matrix() -> None:
    """Indexes saved with the matrix alone read back as that projection; a ranker with a vote is another space."""
    import base64

    from core.index import VectorSpace
    from core.metric_learning import ProjectionRanker

    matrix = np.arange(4, dtype="<f4").reshape(2, 2)
    old = {"metric": "projection", "scale": None, "bias": 0.0}
    old["matrix"] = {"shape": [2, 2], "float32_base64": base64.b64encode(matrix.tobytes()).decode()}
    space = VectorSpace.from_json(old)
    assert space.projection is not None and space.projection.label_space == "none"
    np.testing.assert_array_equal(space.projection.matrix, matrix)
    assert space.same_as(space_for(ProjectionRanker(matrix=matrix)))
    assert VectorSpace.from_json(space.to_json()).same_as(space)


@pytest.mark.parametrize("kind", ["ivf", "flat"])
def test_adding_in_blocks_builds_the_same_index_as_one_add(monkeypatch, kind) -> None:
    """A gallery is transformed and added a block at a time (no second copy of it); same ids, same hits."""
    pytest.importorskip("faiss")
    from core.index import faiss_backend
    from core.index.faiss_backend import FaissConfig

    rng = np.random.default_rng(3)
    gallery, query = clustered(rng, 500, 16), clustered(rng, 5, 16)
    ids = np.arange(500) * 7
    whole = create_index(FaissConfig(kind=kind, nlist=8, nprobe=8), MODEL, 16, CosineRanker())
    whole.add(ids, gallery)
    monkeypatch.setattr(faiss_backend, "ADD_BLOCK", 64)
    blocks = create_index(FaissConfig(kind=kind, nlist=8, nprobe=8), MODEL, 16, CosineRanker())
    blocks.add(ids, gallery)
    np.testing.assert_array_equal(np.sort(blocks.ids()), ids)
    expected, found = whole.search(query, 10, CosineRanker()), blocks.search(query, 10, CosineRanker())
    np.testing.assert_array_equal(found.ids, expected.ids)
    np.testing.assert_allclose(found.scores, expected.scores, atol=1e-6)
    bad = gallery.copy()
    bad[300, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        create_index(FaissConfig(kind=kind, nlist=8), MODEL, 16, CosineRanker()).add(ids, bad)


@pytest.mark.parametrize("dtype, score_atol, min_recall", [("float16", 2e-3, 0.99), ("int8", 2e-2, 0.9)])
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_quantised_storage_keeps_recall_and_scores_and_survives_save_remove_compact(
    tmp_path, kind: str, dtype: str, score_atol: float, min_recall: float
) -> None:
    """float16 / int8 storage against float32 storage of the same index kind on 3,000 clustered vectors (D = 32).

    Tolerances: float16 keeps 11 significant bits, so a cosine of unit vectors moves by ~1e-3 at most; int8
    spends 256 levels on each dimension's range (width ~0.5 here), ~2e-3 per dimension, ~1e-2 in a score. A wrong
    quantiser type or metric fails by far more (recall ~0.003, scores off by ~0.5).
    """
    pytest.importorskip("faiss")
    from core.index.faiss_backend import FaissConfig, FaissIndex

    rng = np.random.default_rng(14)
    data = clustered(rng, 3030, 32, n_clusters=30)
    gallery, query = data[:3000], data[3000:]
    ids = np.arange(3000) * 2
    reference = create_index(FaissConfig(kind=kind, nprobe=64, ef_search=200), MODEL, 32, CosineRanker())
    index = create_index(FaissConfig(kind=kind, nprobe=64, ef_search=200, dtype=dtype), MODEL, 32, CosineRanker())
    for built in (reference, index):
        built.add(ids, gallery)
    truth, hits = reference.search(query, 10, CosineRanker()), index.search(query, 10, CosineRanker())
    assert recall_at(hits.ids, truth.ids) >= min_recall
    same = hits.ids == truth.ids
    np.testing.assert_allclose(hits.scores[same], truth.scores[same], atol=score_atol)
    assert np.abs(hits.scores[same] - truth.scores[same]).max() > 0  # really stored reduced, not float32

    removed = ids[::5]  # HNSW: 20 % tombstones; then below the automatic compaction, compacted by hand
    assert index.remove(removed) == len(removed)
    assert isinstance(index, FaissIndex)
    index.compact()
    assert len(index) == 3000 - len(removed)
    index.save(tmp_path / dtype)
    loaded = load_index(tmp_path / dtype, fingerprint=MODEL)
    assert isinstance(loaded, FaissIndex) and loaded.config.dtype == dtype and len(loaded) == len(index)
    after = loaded.search(query, 10, CosineRanker())
    assert not np.isin(after.ids, removed).any()
    np.testing.assert_array_equal(after.ids, index.search(query, 10, CosineRanker()).ids)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_faiss_index_file_shrinks_by_the_bytes_per_dimension(tmp_path, kind: str) -> None:
    """Saved size at D = 256, 2,000 vectors: float32 stores 1,024 bytes a vector, float16 512, int8 256 (plus the
    same ids and, for HNSW, the same graph), so the vector part halves and quarters."""
    pytest.importorskip("faiss")
    from core.index.faiss_backend import FaissConfig

    rng = np.random.default_rng(15)
    gallery = unit(rng, 2000, 256)
    sizes = {}
    for dtype in ("float32", "float16", "int8"):
        index = create_index(FaissConfig(kind=kind, dtype=dtype), MODEL, 256, CosineRanker())
        index.add(np.arange(2000), gallery)
        index.save(tmp_path / dtype)
        (saved,) = (tmp_path / dtype).glob("*/index.faiss")  # inside the live version folder
        sizes[dtype] = saved.stat().st_size
    vectors = 2000 * 256 * 4
    assert sizes["float32"] - sizes["float16"] == pytest.approx(vectors / 2, rel=0.01)
    assert sizes["float32"] - sizes["int8"] == pytest.approx(3 * vectors / 4, rel=0.01)


def test_faiss_refuses_an_unknown_dtype() -> None:
    from core.index.faiss_backend import FaissConfig

    with pytest.raises(ValueError, match="faiss dtype must be one of float32, float16, int8, got 'int4'"):
        FaissConfig(kind="ivf", dtype="int4")
