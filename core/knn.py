"""The k-nearest-neighbour graph of a set of embeddings: computed once, cached on disk, shared by every consumer.

Each row's ``k`` most similar other rows by a ranker (self excluded, higher score = more similar, ties to the lower
index). Label errors use it; so can the near-duplicate search and the 2-D map.

Two ways to build it, both scoring with the ranker itself:

* ``exact``: one blockwise search of every row against every row (:func:`core.rankers.top_k`), ``O(N^2 D)``.
  Used up to :data:`EXACT_MAX_ROWS` rows (at 10,000 x 1280-d, a few seconds).
* ``clustered``: rows are grouped by k-means (faiss, on a PCA of a sample, in the ranker's vector space where it
  has one: :func:`core.index.space_for`), about :attr:`KnnConfig.cluster_size` rows per cluster. Each cluster's
  rows search, exactly, the rows of the clusters whose centres are nearest to their own centre, as many as fit in
  ``probe * cluster_size`` candidate rows (their own cluster always; k-means clusters are uneven, so the budget is
  in rows). Cost ``O(N * probe * cluster_size * D)``: linear in ``N``. A neighbour in a cluster that was not
  probed is missed, so it is approximate; ``benchmarks/scale.py`` measures its recall against the exact graph.
  (Shortlisting each row's candidates in the PCA first and scoring only those in full width was tried: at 20k
  photos it was no faster on 2 busy cores, and its recall@10 fell from 0.995 to 0.984.)

The cache file (``.npz``, no pickle) is keyed by the featurizer fingerprint, the ranker (its name and fitted state)
and a signature of the rows; a file that fails validation (shape, dtype, range, finite scores) is rebuilt with a
logged warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import UNREADABLE_NPZ, atomic_save_npz
from core.rankers import CosineRanker, Ranker, top_k

log = logging.getLogger(__name__)

#: Up to this many rows the graph is exact; above, ``method="auto"`` builds it by clusters.
EXACT_MAX_ROWS = 10_000
KNN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class KnnConfig:
    """How an approximate (clustered) graph is built.

    Attributes:
        cluster_size: Rows per k-means cluster, on average (the number of clusters is ``N / cluster_size``).
        probe: Each cluster's rows search about ``probe * cluster_size`` candidate rows: their own cluster and the
            nearest others, by centre.
        pca_dims: Dimensions the clustering works in (a PCA of the ranker's vector space).
        sample_rows: Rows the PCA and k-means are fitted on (a seeded sample).
        seed: Seeds the sample and k-means.
    """

    cluster_size: int = 1_000
    probe: int = 8
    pca_dims: int = 64
    sample_rows: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("cluster_size", "probe", "pca_dims", "sample_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"KnnConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class KnnGraph:
    """Each row's nearest other rows.

    Attributes:
        indices: ``int64[N, k]`` neighbour rows, best first (never the row itself).
        scores: ``float32[N, k]`` the ranker's scores of those neighbours, higher = more similar.
        ranker: The ranker's name.
        method: ``"exact"`` or ``"clustered"`` (approximate).
    """

    indices: np.ndarray
    scores: np.ndarray
    ranker: str
    method: str

    @property
    def k(self) -> int:
        """Neighbours per row."""
        return int(self.indices.shape[1])

    @property
    def exact(self) -> bool:
        """Whether every row's list is its true top ``k``."""
        return self.method == "exact"

    def first(self, k: int) -> KnnGraph:
        """The graph of the first ``k`` neighbours of each row (``k <= self.k``)."""
        if not 1 <= k <= self.k:
            raise ValueError(f"k must be in [1, {self.k}], got {k}")
        return dataclasses.replace(self, indices=self.indices[:, :k], scores=self.scores[:, :k])


def _drop_self(found: np.ndarray, scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row itself from its ``k + 1`` results; where a tie pushed it out, drop the last result."""
    is_self = found == rows[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return found[keep].reshape(len(rows), k), scores[keep].reshape(len(rows), k)


def knn_graph(
    embeddings: np.ndarray,
    k: int,
    ranker: Ranker | None = None,
    method: str = "auto",
    config: KnnConfig | None = None,
) -> KnnGraph:
    """Each row's ``k`` most similar other rows.

    Args:
        embeddings: ``(N, D)`` rows.
        k: Neighbours per row (capped at ``N - 1``).
        ranker: Fitted ranker (default cosine).
        method: ``"exact"``, ``"clustered"`` or ``"auto"`` (exact up to :data:`EXACT_MAX_ROWS` rows).
        config: Settings of the clustered build.

    Raises:
        ValueError: Fewer than two rows, ``k < 1``, not a 2-D array, or an unknown method.
    """
    embeddings = np.asarray(embeddings, np.float32)
    ranker = ranker or CosineRanker()
    if embeddings.ndim != 2 or len(embeddings) < 2:
        raise ValueError(f"k-NN graph needs (N >= 2, D) embeddings, got shape {embeddings.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if method not in ("auto", "exact", "clustered"):
        raise ValueError(f"unknown k-NN method {method!r}; choose auto, exact or clustered")
    config = config or KnnConfig()
    k = min(k, len(embeddings) - 1)
    if method == "auto":
        method = "exact" if len(embeddings) <= EXACT_MAX_ROWS else "clustered"
    rows = np.arange(len(embeddings))
    if method == "exact":
        found, scores = top_k(ranker, embeddings, embeddings, k + 1)
        indices, scores = _drop_self(found, scores, rows, k)
    else:
        indices, scores = _clustered(embeddings, k, ranker, config)
    log.info("k-NN graph: %d rows, k=%d, %s, %s", len(embeddings), k, ranker.name, method)
    return KnnGraph(indices, scores.astype(np.float32, copy=False), ranker.name, method)


def _space_rows(ranker: Ranker) -> Any:
    """A function mapping embeddings into the ranker's vector space (identity when it has none)."""
    from core.index import UnsupportedRankerError, space_for

    try:
        return space_for(ranker).transform
    except UnsupportedRankerError:
        return lambda rows: np.asarray(rows, np.float32)


def _reduce(embeddings: np.ndarray, ranker: Ranker, config: KnnConfig) -> np.ndarray:
    """``float32[N, pca_dims]``: the rows in the ranker's space, through a PCA fitted on a seeded sample."""
    to_space = _space_rows(ranker)
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(len(embeddings), min(len(embeddings), config.sample_rows), replace=False))
    fitted = to_space(embeddings[sample]).astype(np.float64)
    mean = fitted.mean(axis=0)
    fitted -= mean
    _, vectors = np.linalg.eigh(fitted.T @ fitted)  # covariance eigenvectors, ascending: cheaper than an SVD
    basis = vectors[:, ::-1][:, : config.pca_dims].astype(np.float32)
    reduced = np.empty((len(embeddings), basis.shape[1]), np.float32)
    step = max(1, 16_000_000 // max(1, embeddings.shape[1]))
    for start in range(0, len(embeddings), step):
        block = slice(start, start + step)
        reduced[block] = (to_space(embeddings[block]) - mean.astype(np.float32)) @ basis
    return reduced


def _clustered(embeddings: np.ndarray, k: int, ranker: Ranker, config: KnnConfig) -> tuple[np.ndarray, np.ndarray]:
    """The clustered build (see the module docstring)."""
    import faiss

    reduced = _reduce(embeddings, ranker, config)
    n_clusters = max(1, min(len(embeddings) // config.cluster_size, len(embeddings) // 40))
    rng = np.random.default_rng(config.seed)
    train = reduced[np.sort(rng.choice(len(reduced), min(len(reduced), n_clusters * 64), replace=False))]
    kmeans = faiss.Kmeans(reduced.shape[1], n_clusters, niter=10, seed=config.seed, verbose=False)
    kmeans.train(np.ascontiguousarray(train))
    _, assigned = kmeans.index.search(reduced, 1)
    assigned = assigned[:, 0]
    centroids = np.asarray(kmeans.centroids, np.float32)
    order = np.argsort(assigned, kind="stable")
    bounds = np.searchsorted(assigned[order], np.arange(n_clusters + 1))
    members = [order[bounds[c] : bounds[c + 1]] for c in range(n_clusters)]  # ascending rows
    sizes = np.diff(bounds)
    centre_norms = np.einsum("ij,ij->i", centroids, centroids)
    centre_distance = centre_norms[:, None] + centre_norms[None, :] - 2.0 * centroids @ centroids.T
    np.fill_diagonal(centre_distance, -np.inf)  # a cluster always searches its own rows first
    indices = np.zeros((len(embeddings), k), np.int64)
    scores = np.zeros((len(embeddings), k), np.float32)
    budget = config.probe * config.cluster_size
    for cluster in range(n_clusters):
        rows = members[cluster]
        if not len(rows):
            continue
        nearest = np.argsort(centre_distance[cluster], kind="stable")
        reached = np.cumsum(sizes[nearest])
        within_budget = int(np.searchsorted(reached, budget, side="right"))  # clusters of a skewed k-means vary
        enough = int(np.searchsorted(reached, k + 1)) + 1  # at least k + 1 candidates
        probed = nearest[: max(1, within_budget, enough)]
        candidates = np.sort(np.concatenate([members[c] for c in probed]))
        found, found_scores = top_k(ranker, embeddings[rows], embeddings[candidates], k + 1)
        found = candidates[found]
        indices[rows], scores[rows] = _drop_self(found, found_scores, rows, k)
    return indices, scores


def rows_signature(embeddings: np.ndarray) -> str:
    """A hash of the rows themselves (shape and bytes): changes when any row is added, removed or changed."""
    embeddings = np.ascontiguousarray(embeddings, np.float32)
    digest = hashlib.blake2b(str(embeddings.shape).encode(), digest_size=16)
    digest.update(embeddings.data)
    return digest.hexdigest()


def ranker_signature(ranker: Ranker) -> str:
    """A hash of a ranker's name and fitted state (its arrays and settings), so a refit ranker gets a new graph."""
    digest = hashlib.blake2b(ranker.name.encode(), digest_size=16)

    def feed(value: Any) -> None:
        if isinstance(value, np.ndarray):
            digest.update(f"{value.dtype}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for field in dataclasses.fields(value):
                digest.update(field.name.encode())
                feed(getattr(value, field.name))
        elif isinstance(value, np.random.Generator):
            digest.update(b"rng")
        else:
            digest.update(repr(value).encode())

    for name, value in sorted(vars(ranker).items()):
        digest.update(name.encode())
        feed(value)
    return digest.hexdigest()


def cache_path(folder: Path, fingerprint: str, ranker: Ranker, signature: str, method: str = "auto") -> Path:
    """Where the graph of these rows, featurizer and ranker is cached under ``folder``."""
    key = hashlib.blake2b(f"{ranker_signature(ranker)}|{signature}|{method}".encode(), digest_size=8).hexdigest()
    return Path(folder) / f"knn-{fingerprint}-{ranker.name}-{key}.npz"


def _read_cached(path: Path, n_rows: int, k: int) -> KnnGraph | None:
    """The graph saved at ``path`` when it is valid and holds at least ``k`` neighbours; None when absent.

    Raises:
        ValueError: The file is damaged (one line naming the file and the problem).
    """
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            header = json.loads(str(archive["header"]))
            indices, scores = archive["indices"], archive["scores"]
    except UNREADABLE_NPZ as err:
        raise ValueError(f"{path}: unreadable k-NN graph ({err})") from err
    if header.get("schema_version") != KNN_SCHEMA_VERSION:
        raise ValueError(f"{path}: k-NN graph schema {header.get('schema_version')}, expected {KNN_SCHEMA_VERSION}")
    if indices.dtype != np.int64 or scores.dtype != np.float32:
        raise ValueError(f"{path}: expected int64 indices and float32 scores, got {indices.dtype} and {scores.dtype}")
    if indices.ndim != 2 or indices.shape != scores.shape or indices.shape[0] != n_rows:
        raise ValueError(f"{path}: shapes {indices.shape} and {scores.shape}, expected ({n_rows}, k) for both")
    if indices.size and (indices.min() < 0 or indices.max() >= n_rows):
        raise ValueError(f"{path}: neighbour indices outside [0, {n_rows})")
    if (indices == np.arange(n_rows)[:, None]).any():
        raise ValueError(f"{path}: a row lists itself as its neighbour")
    if not np.isfinite(scores).all():
        raise ValueError(f"{path}: non-finite neighbour scores")
    if indices.shape[1] < min(k, n_rows - 1):
        return None  # fewer neighbours than asked: build again with more
    graph = KnnGraph(indices, scores, str(header["ranker"]), str(header["method"]))
    return graph.first(min(k, graph.k))


def cached_knn_graph(
    embeddings: np.ndarray,
    k: int,
    folder: Path,
    fingerprint: str,
    ranker: Ranker | None = None,
    signature: str | None = None,
    method: str = "auto",
    config: KnnConfig | None = None,
) -> KnnGraph:
    """:func:`knn_graph`, read from ``folder`` when built before for the same rows, featurizer and ranker.

    A cached graph of more neighbours serves a smaller ``k``. A damaged file is rebuilt (with a warning).

    Args:
        embeddings: ``(N, D)`` rows.
        k: Neighbours per row.
        folder: Cache folder (created when missing).
        fingerprint: The featurizer's fingerprint.
        ranker: Fitted ranker (default cosine).
        signature: A signature of the rows (default :func:`rows_signature` of ``embeddings``).
        method: As in :func:`knn_graph`.
        config: As in :func:`knn_graph`.
    """
    ranker = ranker or CosineRanker()
    embeddings = np.asarray(embeddings, np.float32)
    path = cache_path(folder, fingerprint, ranker, signature or rows_signature(embeddings), method)
    try:
        cached = _read_cached(path, len(embeddings), k)
    except ValueError as err:
        log.warning("%s; building the k-NN graph again", err)
        cached = None
    if cached is not None:
        return cached
    graph = knn_graph(embeddings, k, ranker, method, config)
    header = {
        "schema_version": KNN_SCHEMA_VERSION,
        "ranker": graph.ranker,
        "method": graph.method,
        "fingerprint": fingerprint,
        "k": graph.k,
        "n_rows": len(embeddings),
        "config": dataclasses.asdict(config or KnnConfig()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(path, header=np.array(json.dumps(header)), indices=graph.indices, scores=graph.scores)
    return graph
