"""Near-duplicate detection by perceptual hash and by embedding, and the train/test leakage check.

Two kinds of evidence that two photos are copies of one picture:

* ``hash``: the Hamming distance between their difference hashes (``imagehash.dhash``, ``hash_size=16``: 256 bits,
  computed once while a folder is scanned, see ``core.data.scan_folder``), at most ``hash_threshold`` bits.
* ``embedding``: the cosine similarity of their embeddings, at least ``cosine_threshold``, over the shared k-NN graph
  (:func:`core.knn.knn_graph`): finds re-shot, cropped and re-coloured copies that the hash misses.

``method="both"`` takes a pair that either kind of evidence flags. No search compares every pair: each photo looks
at its ``neighbours`` nearest photos only (:func:`hash_neighbours`: an exact blockwise scan for small sets, faiss's
binary IVF index above :data:`EXACT_MAX_PAIRS` comparisons; the embedding graph is :mod:`core.knn`'s), so time and
memory grow with ``N * neighbours``, not ``N ** 2``.

Groups cannot chain (:func:`star_groups`): photos are visited in dataset order (sorted label, then sorted path);
a photo not yet in a group keeps its place and takes every near-duplicate of its own not yet in a group. Every
removed photo is therefore a near-duplicate of the photo kept for it; with A~B, B~C and A not~C, C is never removed
as a copy of A (B goes with A, C stays). Connected components (the previous rule) chained look-alikes into groups of
thousands across labels.

Nothing is deleted here: :func:`find_near_duplicates` returns a report, :func:`apply_refusal` says why moving its
removals would be unsafe (too large a share, or across labels), and :func:`move_duplicates` moves the removed files
into ``<root>/_duplicates/<label>/`` (never scanned as a label), from where a user can move them back.
Measured on planted copies: ``benchmarks/dedup.py`` and docs/dedup.md.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.data import DUPLICATES_DIR, ImageDataset, Split
from core.images import DHASH_SIZE, printable

if TYPE_CHECKING:
    from core.knn import KnnGraph

log = logging.getLogger(__name__)

#: Default Hamming distance (bits out of 256) at or below which two hashes are near-duplicates. Chosen with
#: benchmarks/dedup.py (docs/dedup.md): the loosest threshold whose removals are >= 90 % planted copies on every set
#: measured, Fashion-MNIST at 60k included (look-alike product photos on plain backgrounds: 4 bits gave 77 %,
#: 32 bits 7 %); on the demo photos every threshold up to 40 is 100 % precise, so loosen it there.
DEFAULT_THRESHOLD = 2
#: Default cosine similarity at or above which two embeddings are near-duplicates (same rule: 0.98 gave 94 % at
#: 60k, 0.97 83 %).
DEFAULT_COSINE = 0.98
#: Nearest photos each photo is compared with (its candidate near-duplicates).
DEFAULT_NEIGHBOURS = 10
#: ``--apply`` refuses to move more than this share of the photos unless told otherwise.
DEFAULT_MAX_SHARE = 0.05
#: Leak pairs kept in ``prepared.json`` (the closest ones); the full list is written only when asked.
LEAK_SAMPLE = 20
#: Hash searches of up to this many (query, reference) comparisons are exact; above, faiss's binary IVF index.
EXACT_MAX_PAIRS = 1_000_000_000
#: Rows of the numpy distance matrix computed at once: 1024 x N float32, so 100k images need ~400 MB per block.
BLOCK_ROWS = 1024
METHODS = ("hash", "embedding", "both")
SEARCHES = ("auto", "exact", "ivf")


@dataclass(frozen=True)
class DedupConfig:
    """What counts as a near-duplicate.

    Attributes:
        method: ``"hash"``, ``"embedding"`` or ``"both"`` (a pair flagged by either).
        hash_threshold: Largest dhash Hamming distance, in bits out of 256.
        cosine_threshold: Smallest cosine similarity of the embeddings.
        neighbours: Nearest photos each photo is compared with (caps the copies found per photo).
        search: Hash search: ``"exact"``, ``"ivf"`` (faiss, approximate) or ``"auto"`` (by size).
        faiss_threads: Threads faiss may use for the hash search. One by default: on shared cores, OpenMP's
            spinning threads made a 60k search 10x slower (measured, see docs/dedup.md).
    """

    method: str = "hash"
    hash_threshold: int = DEFAULT_THRESHOLD
    cosine_threshold: float = DEFAULT_COSINE
    neighbours: int = DEFAULT_NEIGHBOURS
    search: str = "auto"
    faiss_threads: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"dedup method {self.method!r}: choose one of {', '.join(METHODS)}")
        if not 0 <= self.hash_threshold <= DHASH_SIZE**2:
            raise ValueError(f"hash threshold must be between 0 and {DHASH_SIZE**2} bits, got {self.hash_threshold}")
        if not -1.0 <= self.cosine_threshold <= 1.0:
            raise ValueError(f"cosine threshold must be between -1 and 1, got {self.cosine_threshold}")
        if self.neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, got {self.neighbours}")
        if self.search not in SEARCHES:
            raise ValueError(f"hash search {self.search!r}: choose one of {', '.join(SEARCHES)}")
        if self.faiss_threads < 1:
            raise ValueError(f"faiss_threads must be at least 1, got {self.faiss_threads}")

    @property
    def uses_hash(self) -> bool:
        return self.method in ("hash", "both")

    @property
    def uses_embedding(self) -> bool:
        return self.method in ("embedding", "both")


@dataclass(frozen=True)
class NearDuplicate:
    """One removed image and the kept image it copies.

    Attributes:
        kept: The photo kept for the group.
        removed: The photo a clean-up moves aside.
        distance: dhash Hamming distance between the two (bits); None without hashes.
        cosine: Cosine similarity of their embeddings; None without embeddings.
        kept_label: Label of ``kept``.
        removed_label: Label of ``removed``.
    """

    kept: Path
    removed: Path
    distance: int | None
    cosine: float | None = None
    kept_label: str = ""
    removed_label: str = ""

    @property
    def crosses_labels(self) -> bool:
        return self.kept_label != self.removed_label


@dataclass(frozen=True)
class DedupReport:
    """Near-duplicate groups of a dataset and which files a clean-up removes.

    Attributes:
        root: The dataset folder.
        config: What counted as a near-duplicate.
        n_images: Photos searched.
        n_groups: Groups of two or more photos.
        largest_group: Photos in the largest group (1 when there is none).
        removed: Every photo a clean-up removes, with the photo it copies, in dataset order.
        hash_search: How the hash neighbours were found (``"exact"``, ``"ivf"``, ``""`` when not used).
        hash_size: The dhash size the hashes were computed with.
    """

    root: Path | None
    config: DedupConfig
    n_images: int
    n_groups: int
    largest_group: int
    removed: tuple[NearDuplicate, ...]
    hash_search: str = ""
    hash_size: int = DHASH_SIZE

    @property
    def threshold(self) -> int:
        """The hash threshold (bits)."""
        return self.config.hash_threshold

    @property
    def n_flagged(self) -> int:
        """Photos in a group of two or more (kept and removed)."""
        return len(self.removed) + self.n_groups

    @property
    def removed_share(self) -> float:
        """Share of the photos a clean-up removes."""
        return len(self.removed) / self.n_images if self.n_images else 0.0

    @property
    def cross_label(self) -> tuple[NearDuplicate, ...]:
        """Removals whose kept photo carries another label."""
        return tuple(item for item in self.removed if item.crosses_labels)

    def to_dict(self, max_removed: int | None = None) -> dict[str, Any]:
        """Plain JSON-ready form (paths relative to ``root`` when possible, always printable).

        Args:
            max_removed: List at most this many removals (all when None); ``n_removed`` counts them all.
        """
        shown = self.removed if max_removed is None else self.removed[:max_removed]
        return {
            "root": printable(str(self.root)) if self.root else None,
            "method": self.config.method,
            "threshold": self.config.hash_threshold,
            "cosine_threshold": self.config.cosine_threshold,
            "neighbours": self.config.neighbours,
            "hash": f"dhash{self.hash_size}",
            "hash_search": self.hash_search,
            "n_images": self.n_images,
            "n_groups": self.n_groups,
            "n_flagged": self.n_flagged,
            "largest_group": self.largest_group,
            "n_removed": len(self.removed),
            "removed_share": self.removed_share,
            "n_cross_label": len(self.cross_label),
            "removed": [
                {
                    "kept": _shown(item.kept, self.root),
                    "removed": _shown(item.removed, self.root),
                    "distance": item.distance,
                    "cosine": None if item.cosine is None else round(item.cosine, 6),
                    "kept_label": printable(item.kept_label),
                    "removed_label": printable(item.removed_label),
                }
                for item in shown
            ],
        }


@dataclass(frozen=True)
class Leak:
    """A near-duplicate pair straddling the split: the same picture would be queried and trained on."""

    train_path: Path
    test_path: Path
    distance: int


@dataclass(frozen=True)
class LeakReport:
    """Near-duplicate pairs across the split: how many, and the closest few.

    Attributes:
        count: Pairs found (each test photo against its ``neighbours`` closest training photos).
        threshold: Hash threshold (bits) of the check.
        sample: The closest pairs, at most :data:`LEAK_SAMPLE` (all of them in memory right after the check
            when asked for with ``sample_size=None``).
    """

    count: int = 0
    threshold: int = DEFAULT_THRESHOLD
    sample: tuple[Leak, ...] = field(default=())

    def __bool__(self) -> bool:
        return self.count > 0


#: The report of a check that found nothing (or did not run).
NO_LEAKS = LeakReport()


def _shown(path: Path, root: Path | None) -> str:
    try:
        return printable(str(path.relative_to(root))) if root else printable(str(path))
    except ValueError:
        return printable(str(path))


def _bits(hashes: np.ndarray) -> np.ndarray:
    """Packed ``uint8[N, B]`` hashes as ``float32[N, 8B]`` 0/1 rows."""
    return np.unpackbits(np.asarray(hashes, dtype=np.uint8), axis=1).astype(np.float32)


def hamming_distances(query_hashes: np.ndarray, reference_hashes: np.ndarray) -> np.ndarray:
    """Hamming distances between packed hashes, ``int32[Nq, Nr]``.

    With 0/1 rows ``q`` and ``r``: ``|q xor r| = |q| + |r| - 2 q.r``, one matrix product (exact in
    float32 for up to 2**24 bits).
    """
    query_bits, reference_bits = _bits(query_hashes), _bits(reference_hashes)
    overlap = query_bits @ reference_bits.T
    distances = query_bits.sum(1)[:, None] + reference_bits.sum(1)[None, :] - 2 * overlap
    return np.rint(distances).astype(np.int32)


def pair_distances(hashes_a: np.ndarray, hashes_b: np.ndarray) -> np.ndarray:
    """Hamming distance of row ``n`` of ``hashes_a`` to row ``n`` of ``hashes_b``, ``int32[N]``."""
    xor = np.bitwise_xor(np.asarray(hashes_a, np.uint8), np.asarray(hashes_b, np.uint8))
    return np.bitwise_count(xor).sum(axis=1, dtype=np.int32)


def close_pairs(
    query_hashes: np.ndarray, reference_hashes: np.ndarray, threshold: int, block_rows: int = BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (query, reference) index pairs within ``threshold`` bits: the exact all-pairs scan, block by block.

    ``O(Nq * Nr)``: the reference for tests and the numpy fallback of :func:`hash_neighbours` for small sets.

    Returns:
        ``(query_index, reference_index, distance)`` arrays, sorted by query then reference index.
    """
    rows, cols, dists = [], [], []
    for start in range(0, len(query_hashes), block_rows):
        block = hamming_distances(query_hashes[start : start + block_rows], reference_hashes)
        r, c = np.nonzero(block <= threshold)
        rows.append(r + start)
        cols.append(c)
        dists.append(block[r, c])
    if not rows:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty.astype(np.int32)
    return (
        np.concatenate(rows).astype(np.int64),
        np.concatenate(cols).astype(np.int64),
        np.concatenate(dists).astype(np.int32),
    )


def closest_per_query(
    query_index: np.ndarray, reference_index: np.ndarray, distance: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep each query's ``k`` closest references (ties: lower reference index first); sorted by query, closeness."""
    order = np.lexsort((reference_index, distance, query_index))
    query_index, reference_index, distance = query_index[order], reference_index[order], distance[order]
    first_of_query = np.searchsorted(query_index, query_index, side="left")
    keep = np.arange(len(query_index)) - first_of_query < k
    return query_index[keep], reference_index[keep], distance[keep]


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


@contextmanager
def _faiss_threads(threads: int) -> Iterator[None]:
    """Let faiss use ``threads`` OpenMP threads inside the block, then restore its setting."""
    faiss = _faiss()
    if faiss is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _exact_hash_neighbours(
    query_hashes: np.ndarray, reference_hashes: np.ndarray, threshold: int, k: int, exclude_self: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every query's ``k`` closest references within ``threshold``, exactly (faiss range search, else numpy)."""
    faiss = _faiss()
    # bounded memory: at most ~20M (query, reference) results per block, whatever the threshold
    block = max(16, min(len(query_hashes), 20_000_000 // max(1, len(reference_hashes))))
    if faiss is not None:
        index = faiss.IndexBinaryFlat(reference_hashes.shape[1] * 8)
        index.add(np.ascontiguousarray(reference_hashes, np.uint8))
    parts = []
    for start in range(0, len(query_hashes), block):
        queries = np.ascontiguousarray(query_hashes[start : start + block], np.uint8)
        if faiss is not None:
            limits, distance, reference = index.range_search(queries, threshold + 1)  # faiss: distance < radius
            query = np.repeat(np.arange(len(queries)), np.diff(limits).astype(np.int64))
        else:
            query, reference, distance = close_pairs(queries, reference_hashes, threshold)
        query = query.astype(np.int64) + start
        reference = reference.astype(np.int64)
        distance = distance.astype(np.int32)
        if exclude_self:
            other = query != reference
            query, reference, distance = query[other], reference[other], distance[other]
        parts.append(closest_per_query(query, reference, distance, k))
    if not parts:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty.astype(np.int32)
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]


def _ivf_hash_neighbours(
    query_hashes: np.ndarray, reference_hashes: np.ndarray, threshold: int, k: int, exclude_self: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same through faiss's binary IVF index: each query scans the lists of its ``nprobe`` nearest centres.

    About ``sqrt(N)`` lists (a power of two), trained on an evenly spaced sample of the references (deterministic);
    each query scans 16 lists, ``~16 / sqrt(N)`` of the references. Approximate: ``benchmarks/dedup_scale.py``
    measures its recall against the exact search.
    """
    faiss = _faiss()
    n = len(reference_hashes)
    n_lists = int(2 ** round(math.log2(max(16.0, math.sqrt(n)))))
    n_lists = max(1, min(n_lists, n // 39))
    train = reference_hashes[np.linspace(0, n - 1, min(n, 64 * n_lists)).astype(np.int64)]
    coarse = faiss.IndexBinaryFlat(reference_hashes.shape[1] * 8)
    index = faiss.IndexBinaryIVF(coarse, reference_hashes.shape[1] * 8, n_lists)
    index.cp.seed = 1234
    index.train(np.ascontiguousarray(train, np.uint8))
    index.add(np.ascontiguousarray(reference_hashes, np.uint8))
    index.nprobe = min(n_lists, 16)
    wanted = min(n, k + int(exclude_self))
    parts = []
    for start in range(0, len(query_hashes), 65_536):
        queries = np.ascontiguousarray(query_hashes[start : start + 65_536], np.uint8)
        distance, reference = index.search(queries, wanted)
        query = np.repeat(np.arange(len(queries), dtype=np.int64) + start, wanted)
        reference, distance = reference.reshape(-1).astype(np.int64), distance.reshape(-1).astype(np.int32)
        keep = (reference >= 0) & (distance <= threshold)
        if exclude_self:
            keep &= reference != query
        parts.append(closest_per_query(query[keep], reference[keep], distance[keep], k))
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]


def hash_neighbours(
    query_hashes: np.ndarray,
    reference_hashes: np.ndarray | None,
    threshold: int,
    k: int = DEFAULT_NEIGHBOURS,
    search: str = "auto",
    faiss_threads: int = 1,
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], str]:
    """Each query's ``k`` closest reference hashes within ``threshold`` bits, without an all-pairs list.

    Args:
        query_hashes: Packed hashes ``uint8[Nq, B]``.
        reference_hashes: Packed hashes ``uint8[Nr, B]``; None searches the queries among themselves (self excluded).
        threshold: Largest Hamming distance (bits).
        k: Most references kept per query.
        search: ``"exact"``, ``"ivf"`` (needs faiss) or ``"auto"``: exact up to :data:`EXACT_MAX_PAIRS`
            comparisons (or without faiss), IVF above.
        faiss_threads: OpenMP threads faiss may use here.

    Returns:
        ``((query_index, reference_index, distance), search_used)``; pairs sorted by query, then closeness.
    """
    exclude_self = reference_hashes is None
    queries = np.asarray(query_hashes, np.uint8)
    references = queries if reference_hashes is None else np.asarray(reference_hashes, np.uint8)
    if queries.ndim != 2 or references.ndim != 2 or queries.shape[1] != references.shape[1]:
        raise ValueError(f"hashes must be uint8[N, B] of one width, got {queries.shape} and {references.shape}")
    if search not in SEARCHES:
        raise ValueError(f"hash search {search!r}: choose one of {', '.join(SEARCHES)}")
    if len(queries) == 0 or len(references) == 0:
        empty = np.zeros(0, np.int64)
        return (empty, empty, empty.astype(np.int32)), "exact"
    if search == "auto":
        large = len(queries) * len(references) > EXACT_MAX_PAIRS and len(references) >= 39 * 16
        search = "ivf" if large and _faiss() is not None else "exact"
        if large and search == "exact":
            log.warning("faiss is not installed: exact hash search over %d x %d pairs", len(queries), len(references))
    if search == "ivf" and _faiss() is None:
        raise ValueError("hash search 'ivf' needs faiss (pip install -r requirements-scale.txt)")
    with _faiss_threads(faiss_threads):
        if search == "ivf":
            return _ivf_hash_neighbours(queries, references, threshold, k, exclude_self), "ivf"
        return _exact_hash_neighbours(queries, references, threshold, k, exclude_self), "exact"


def embedding_neighbours(
    embeddings: np.ndarray, cosine_threshold: float, k: int = DEFAULT_NEIGHBOURS, graph: KnnGraph | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each photo's nearest photos (the shared cosine k-NN graph) with cosine at least ``cosine_threshold``.

    Args:
        embeddings: L2-normalised rows.
        cosine_threshold: Smallest cosine kept.
        k: Neighbours per photo.
        graph: The cosine k-NN graph of ``embeddings`` already built (e.g. the workspace's cached one,
            ``workbench.workflows.knn``); its first ``k`` neighbours are used. Default: built here.

    Returns:
        ``(index, neighbour_index, cosine)`` arrays.

    Raises:
        ValueError: A graph of another ranker or of another number of rows.
    """
    from core.knn import knn_graph
    from core.rankers import CosineRanker

    embeddings = np.asarray(embeddings, np.float32)
    if len(embeddings) < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    if graph is None:
        graph = knn_graph(embeddings, k, CosineRanker())
    else:
        if graph.ranker != "cosine" or len(graph.indices) != len(embeddings):
            raise ValueError(
                f"near-duplicates need the cosine k-NN graph of the {len(embeddings)} embeddings, got a "
                f"{graph.ranker} graph of {len(graph.indices)} rows"
            )
        graph = graph.first(min(k, graph.k))
    index = np.repeat(np.arange(len(embeddings), dtype=np.int64), graph.k)
    neighbour, cosine = graph.indices.reshape(-1), graph.scores.reshape(-1)
    keep = cosine >= cosine_threshold
    return index[keep], neighbour[keep], cosine[keep]


def near_duplicate_pairs(
    config: DedupConfig,
    hashes: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    graph: KnnGraph | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Pairs ``i < j`` that ``config`` calls near-duplicates, with both kinds of evidence where available.

    ``graph``: the cosine k-NN graph of ``embeddings`` when already built (see :func:`embedding_neighbours`).

    Returns:
        ``(i, j, distance, cosine, hash_search)``: ``distance`` is -1 without hashes, ``cosine`` NaN without
        embeddings; sorted by ``i`` then ``j``.

    Raises:
        ValueError: The method needs hashes or embeddings that were not given, or they are not aligned.
    """
    if config.uses_hash and hashes is None:
        raise ValueError(f"dedup method {config.method!r} needs perceptual hashes")
    if config.uses_embedding and embeddings is None:
        raise ValueError(f"dedup method {config.method!r} needs embeddings")
    if hashes is not None and embeddings is not None and len(hashes) != len(embeddings):
        raise ValueError(f"{len(hashes)} hashes but {len(embeddings)} embeddings")
    found_i, found_j, searched = [], [], ""
    if config.uses_hash:
        assert hashes is not None
        (a, b, _), searched = hash_neighbours(
            hashes, None, config.hash_threshold, config.neighbours, config.search, config.faiss_threads
        )
        found_i.append(a)
        found_j.append(b)
    if config.uses_embedding:
        assert embeddings is not None
        a, b, _ = embedding_neighbours(embeddings, config.cosine_threshold, config.neighbours, graph)
        found_i.append(a)
        found_j.append(b)
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    pairs = np.unique(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1), axis=0).reshape(-1, 2)
    i, j = pairs[:, 0], pairs[:, 1]
    distance = pair_distances(hashes[i], hashes[j]) if hashes is not None else np.full(len(i), -1, np.int32)
    if embeddings is not None:
        cosine = pair_cosines(embeddings, i, j)
    else:
        cosine = np.full(len(i), np.nan, np.float32)
    return i, j, distance, cosine, searched


def pair_cosines(embeddings: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 16_384) -> np.ndarray:
    """Cosine of rows ``i[n]`` and ``j[n]`` of L2-normalised ``embeddings``, ``float32[len(i)]``, in blocks of pairs
    (memory ``2 * block * D`` floats, not ``2 * len(i) * D``)."""
    embeddings = np.asarray(embeddings, np.float32)
    cosine = np.empty(len(i), np.float32)
    for start in range(0, len(i), block):
        part = slice(start, start + block)
        cosine[part] = np.einsum("nd,nd->n", embeddings[i[part]], embeddings[j[part]])
    return cosine


def star_groups(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Groups that cannot chain: each node's kept node (itself when kept or alone).

    Nodes are visited in index order; a node not yet in a group is kept and takes every neighbour not yet in a
    group. So every removed node is a neighbour of its kept node (no chains), a kept node is never a neighbour of
    an earlier kept node, and a removed node belongs to its lowest-index kept neighbour.

    Args:
        n: Number of nodes.
        i: One end of each edge.
        j: The other end (edges are undirected; duplicates and self-loops are harmless).
    """
    keeper = np.full(n, -1, np.int64)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    if len(i):
        source, target = np.concatenate([i, j]), np.concatenate([j, i])
        order = np.argsort(source, kind="stable")
        source, target = source[order], target[order]
        starts = np.searchsorted(source, np.arange(n + 1))
        # sequential by nature (each choice depends on the earlier ones), but only over nodes that have an edge
        for node in np.unique(source).tolist():
            if keeper[node] >= 0:
                continue
            keeper[node] = node
            neighbours = target[starts[node] : starts[node + 1]]
            keeper[neighbours[keeper[neighbours] < 0]] = node
    alone = keeper < 0
    keeper[alone] = np.flatnonzero(alone)
    return keeper


def group_labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components of the graph with edges ``(i, j)``: each node's smallest member index.

    The previous (chaining) grouping, kept to measure it against :func:`star_groups` (``benchmarks/dedup.py``).
    Vectorised min-label propagation with pointer jumping; converges in a few passes.
    """
    labels = np.arange(n)
    if len(i) == 0:
        return labels
    while True:
        previous = labels.copy()
        low = np.minimum(labels[i], labels[j])
        np.minimum.at(labels, i, low)
        np.minimum.at(labels, j, low)
        labels = labels[labels]  # pointer jumping: follow to the representative's representative
        if np.array_equal(labels, previous):
            return labels


def find_near_duplicates(
    dataset: ImageDataset,
    hashes: np.ndarray | None,
    config: DedupConfig | None = None,
    embeddings: np.ndarray | None = None,
    graph: KnnGraph | None = None,
) -> DedupReport:
    """Group near-duplicates of a dataset (:func:`star_groups`: no chains) and keep the first photo of each group.

    Args:
        dataset: The records, in the order that decides which photo of a group is kept.
        hashes: Packed difference hashes aligned with ``dataset.records`` (``ScanReport.dhashes``).
        config: What counts as a near-duplicate (default: hash, :data:`DEFAULT_THRESHOLD` bits).
        embeddings: L2-normalised embeddings aligned with the records (for ``embedding`` and ``both``).
        graph: Their cosine k-NN graph when already built (the workspace caches it); default: built here.

    Returns:
        The report; every removed photo is a near-duplicate of its kept photo by the chosen method.

    Raises:
        ValueError: Misaligned inputs, or the method's evidence missing.
    """
    config = config or DedupConfig()
    for name, values in (("hashes", hashes), ("embeddings", embeddings)):
        if values is not None and len(values) != len(dataset):
            raise ValueError(f"{len(values)} {name} for {len(dataset)} records")
    i, j, distance, cosine, searched = near_duplicate_pairs(config, hashes, embeddings, graph)
    keeper = star_groups(len(dataset), i, j)
    removed_index = np.flatnonzero(keeper != np.arange(len(dataset)))
    kept_index = keeper[removed_index]
    # evidence of each (kept, removed) pair: the edge itself (kept < removed always holds)
    edge_key = i * len(dataset) + j
    position = np.searchsorted(edge_key, kept_index * len(dataset) + removed_index)
    records = dataset.records
    removed = tuple(
        NearDuplicate(
            records[k].path,
            records[r].path,
            int(distance[p]) if hashes is not None else None,
            float(cosine[p]) if embeddings is not None else None,
            records[k].label,
            records[r].label,
        )
        for r, k, p in zip(removed_index.tolist(), kept_index.tolist(), position.tolist(), strict=True)
    )
    sizes = np.bincount(keeper, minlength=len(dataset))
    n_groups = int((sizes > 1).sum())
    report = DedupReport(
        dataset.root, config, len(dataset), n_groups, int(sizes.max()) if len(sizes) else 0, removed, searched
    )
    log.info(
        "%d near-duplicate group(s) among %d images (largest %d); %d image(s) to remove (%s)",
        n_groups,
        len(dataset),
        report.largest_group,
        len(removed),
        config,
    )
    return report


def apply_refusal(report: DedupReport, max_share: float = DEFAULT_MAX_SHARE, allow_cross_label: bool = False) -> str:
    """Why moving the report's removals aside would be unsafe; empty when it is not.

    Too large a share usually means the threshold is too loose for this kind of photo (look-alikes, not copies);
    a removal across labels is a labelling question, not a clean-up.
    """
    reasons = []
    if report.removed_share > max_share:
        reasons.append(
            f"{len(report.removed)} of {report.n_images} photos ({report.removed_share:.1%}) would be moved, "
            f"more than the {max_share:.0%} allowed (--max-share); check a few groups in the report, then tighten "
            "the threshold or raise --max-share"
        )
    crossing = report.cross_label
    if crossing and not allow_cross_label:
        first = crossing[0]
        reasons.append(
            f"{len(crossing)} removal(s) cross labels (e.g. {_shown(first.removed, report.root)} [{first.removed_label}] "
            f"~ {_shown(first.kept, report.root)} [{first.kept_label}]); fix the labels or add --allow-cross-label"
        )
    return "; ".join(reasons)


def find_leaks(
    dataset: ImageDataset,
    split: Split,
    hashes: np.ndarray,
    threshold: int = DEFAULT_THRESHOLD,
    neighbours: int = DEFAULT_NEIGHBOURS,
    sample_size: int | None = LEAK_SAMPLE,
) -> LeakReport:
    """Near-duplicate pairs with one photo in test and one in train: each test photo's closest training photos.

    Args:
        dataset: The records.
        split: Train/test indices into ``dataset``.
        hashes: Packed hashes aligned with the records.
        threshold: Largest Hamming distance (bits).
        neighbours: Most training photos listed per test photo.
        sample_size: Pairs kept in the report, closest first (all when None).
    """
    (test_local, train_local, distance), _ = hash_neighbours(
        hashes[split.test], hashes[split.train], threshold, neighbours
    )
    order = np.lexsort((train_local, test_local, distance))
    if sample_size is not None:
        order = order[:sample_size]
    records = dataset.records
    sample = tuple(
        Leak(records[split.train[t]].path, records[split.test[q]].path, int(d))
        for q, t, d in zip(test_local[order], train_local[order], distance[order], strict=True)
    )
    return LeakReport(len(distance), threshold, sample)


def leaks_to_json(leaks: LeakReport, root: Path) -> dict[str, Any]:
    """``prepared.json``'s ``"leaks"``: the count, the threshold and the closest pairs (paths relative to ``root``)."""
    return {
        "count": leaks.count,
        "threshold": leaks.threshold,
        "sample": [
            [str(leak.train_path.relative_to(root)), str(leak.test_path.relative_to(root)), leak.distance]
            for leak in leaks.sample
        ],
    }


def leaks_from_json(payload: Any, root: Path) -> LeakReport:
    """The :class:`LeakReport` of ``prepared.json``'s ``"leaks"``; a file of the older form (every pair as a list)
    keeps its count and its closest :data:`LEAK_SAMPLE` pairs.

    Raises:
        ValueError: Not of either form.
    """
    if payload is None:
        return NO_LEAKS
    if isinstance(payload, list):
        pairs = sorted(payload, key=lambda pair: int(pair[2]))
        # the older code always checked at 32 bits (DataConfig.near_duplicate_threshold's default then)
        payload = {"count": len(pairs), "threshold": 32, "sample": pairs[:LEAK_SAMPLE]}
    if not isinstance(payload, dict):
        raise ValueError(f"leaks: expected an object with count and sample, got {type(payload).__name__}")
    sample = tuple(Leak(root / train, root / test, int(distance)) for train, test, distance in payload["sample"])
    count = int(payload["count"])
    if count < len(sample):
        raise ValueError(f"leaks: count {count} below the {len(sample)} pairs listed")
    return LeakReport(count, int(payload["threshold"]), sample)


def move_duplicates(report: DedupReport, root: Path) -> list[tuple[Path, Path]]:
    """Move every removed image to ``root/_duplicates/<label>/<name>`` (renamed on a clash).

    Returns:
        ``(old, new)`` path pairs, in report order. Files already gone are skipped with a warning.
    """
    root = Path(root)
    moved = []
    for item in report.removed:
        source = item.removed
        if not source.exists():
            log.warning("%s: already gone, not moved", printable(str(source)))
            continue
        try:
            relative = source.relative_to(root)
        except ValueError:
            relative = Path(source.parent.name) / source.name
        target = root / DUPLICATES_DIR / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        stem, suffix, n = target.stem, target.suffix, 1
        while target.exists():
            target = target.with_name(f"{stem}-{n}{suffix}")
            n += 1
        os.replace(source, target)
        moved.append((source, target))
    return moved
