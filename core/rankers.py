"""Rankers: one contract, higher score = more similar.

``score(query, gallery) -> (Nq, Ng)`` for all pairs, ``score_pairs(a, b) -> (N,)`` for aligned rows.
Distances are negated so that every ranker sorts the same way. Matrices are computed in blocks, and
:func:`top_k` keeps only the best ``k`` per query, so a large gallery never needs an ``Nq x Ng`` matrix.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

#: Upper bound on floats materialised at once by blockwise code (about 64 MB of float32).
BLOCK_ELEMENTS = 16_000_000


def check_embeddings(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cast to float32 and check both are (N, D) with the same D."""
    query, gallery = np.asarray(query, np.float32), np.asarray(gallery, np.float32)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"expected (Nq, D) and (Ng, D) embeddings, got {query.shape} and {gallery.shape}")
    return query, gallery


def _row_blocks(n_rows: int, row_cost: int, step: int | None = None) -> Iterator[slice]:
    step = step or max(1, BLOCK_ELEMENTS // max(1, row_cost))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


class Ranker(ABC):
    """Scores how similar embeddings are; higher is more similar."""

    name: str = "ranker"

    def fit(self, embeddings: np.ndarray, labels: np.ndarray) -> Self:
        """Learn from labelled embeddings; the plain metrics have nothing to learn."""
        return self

    @abstractmethod
    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """Similarity of every query row to every gallery row, ``float32[Nq, Ng]``."""

    def score_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Similarity of ``a[i]`` to ``b[i]`` for each row, ``float32[N]``."""
        a, b = check_embeddings(a, b)
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"score_pairs needs aligned rows, got {a.shape[0]} and {b.shape[0]}")
        return np.concatenate(
            [self._pairs(a[block], b[block]) for block in _row_blocks(len(a), a.shape[1])] or [np.zeros(0, np.float32)]
        )

    @abstractmethod
    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


#: Pairs whose matrix-form squared distance is below this share of ``|a|^2 + |b|^2`` are recomputed from direct
#: differences. The form ``|a|^2 + |b|^2 - 2a.b`` cancels there: float32 keeps about 1e-7 of the norms, so a true
#: distance of 1e-3 between unit vectors (squared 1e-6) comes out anywhere from 0 to 2e-3.
NEAR_FRACTION = 0.05


def refine_near_squared_l2(
    squared: np.ndarray,
    query: np.ndarray,
    gallery: np.ndarray,
    query_sq: np.ndarray,
    gallery_sq: np.ndarray,
) -> int:
    """Recompute, in place and in float64, the entries of a matrix-form squared-distance block that are near.

    The matrix form stays the fast way to score everything (one matrix product); only pairs closer than
    ``NEAR_FRACTION`` of their squared norms, where it loses digits, are redone as ``sum((a - b)**2)``. Far
    pairs keep a relative error of about 1e-6, near pairs become exact to float32 rounding, so
    near-duplicates keep their true order.

    Args:
        squared: ``(Nq, Ng)`` squared distances from the matrix form, updated in place.
        query: ``(Nq, D)`` vectors.
        gallery: ``(Ng, D)`` vectors (any float dtype, e.g. float16 storage).
        query_sq: ``(Nq,)`` squared norms of ``query``.
        gallery_sq: ``(Ng,)`` squared norms of ``gallery``.

    Returns:
        How many entries were recomputed.
    """
    near = squared < NEAR_FRACTION * (query_sq[:, None] + gallery_sq[None, :])
    rows, cols = np.nonzero(near)
    step = max(1, BLOCK_ELEMENTS // (4 * max(1, query.shape[1])))  # float64 pairs of differences per step
    for start in range(0, len(rows), step):
        r, c = rows[start : start + step], cols[start : start + step]
        difference = query[r].astype(np.float64) - gallery[c].astype(np.float64)
        squared[r, c] = np.einsum("ij,ij->i", difference, difference)
    return len(rows)


class L2Ranker(Ranker):
    """Negative Euclidean distance."""

    name = "l2"

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        query, gallery = check_embeddings(query, gallery)
        query_sq, gallery_sq = np.einsum("ij,ij->i", query, query), np.einsum("ij,ij->i", gallery, gallery)
        squared = query @ gallery.T
        squared *= -2.0
        squared += query_sq[:, None]
        squared += gallery_sq[None, :]
        refine_near_squared_l2(squared, query, gallery, query_sq, gallery_sq)
        np.sqrt(np.maximum(squared, 0.0, out=squared), out=squared)
        return np.negative(squared, out=squared).astype(np.float32, copy=False)

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return -np.linalg.norm(a - b, axis=1).astype(np.float32)


class L1Ranker(Ranker):
    """Negative Manhattan distance."""

    name = "l1"

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        query, gallery = check_embeddings(query, gallery)
        out = np.empty((len(query), len(gallery)), np.float32)
        for block in _row_blocks(len(query), len(gallery) * query.shape[1]):
            out[block] = -np.abs(query[block, None, :] - gallery[None, :, :]).sum(2)
        return out

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return -np.abs(a - b).sum(1).astype(np.float32)


class CosineRanker(Ranker):
    """Cosine similarity (equal to the dot product on unit embeddings)."""

    name = "cosine"

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        query, gallery = check_embeddings(query, gallery)
        # divide the (Nq, Ng) products by the norms instead of normalising a copy of the whole gallery per call
        gallery_norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", gallery, gallery)), 1e-12)
        scores = self._unit(query) @ gallery.T
        scores /= gallery_norms[None, :]
        return scores.astype(np.float32, copy=False)

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (self._unit(a) * self._unit(b)).sum(1).astype(np.float32)


class RandomRanker(Ranker):
    """Uniform random scores: the chance baseline.

    Each score is a hash of the query's and the gallery row's bytes and a salt drawn once from the given generator,
    so every query gets its own random order, the same query always gets the same one, and scoring the gallery in
    blocks gives what scoring it whole gives.
    """

    name = "random"

    def __init__(self, rng: np.random.Generator) -> None:
        self.salt = np.uint64(rng.integers(0, 2**63))

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        query, gallery = check_embeddings(query, gallery)
        return _uniform(_row_keys(query)[:, None] ^ self.salt, _row_keys(gallery)[None, :])

    def _pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _uniform(_row_keys(a) ^ self.salt, _row_keys(b))


def _row_keys(rows: np.ndarray) -> np.ndarray:
    """A 64-bit key per row of float32 values (a multiply-add hash of the values' bits)."""
    bits = np.ascontiguousarray(rows, np.float32).view(np.uint32).astype(np.uint64)
    weights = (np.arange(1, bits.shape[1] + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    with np.errstate(over="ignore"):
        return (bits * weights).sum(axis=1, dtype=np.uint64)


def _uniform(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) float32 values from two broadcastable uint64 keys (splitmix64 of their mix)."""
    with np.errstate(over="ignore"):
        x = left ^ (right * np.uint64(0xD1B54A32D192ED03))
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return ((x >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)).astype(np.float32)


@runtime_checkable
class LearnedRanker(Protocol):
    """What a learned ranker adds to the :class:`Ranker` contract: fitting on comparative sets and saving."""

    name: str

    def fit(self, embeddings: np.ndarray, labels: np.ndarray, sets: Any) -> Any:
        """Learn from the training split's embeddings, labels and comparative sets; returns the ranker."""
        ...

    def score(self, query: np.ndarray, gallery: np.ndarray) -> np.ndarray: ...

    def save(self, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Write the fitted ranker atomically (no pickle)."""
        ...


@dataclass(frozen=True)
class RankerSpec:
    """One entry of the ranker registry: the single place a ranker name is resolved.

    Attributes:
        name: The id every front end shows and accepts (``--ranker``, the app's menu, the API's ``ranker`` field).
        summary: One line for help texts.
        build: Plain rankers: ``build(rng)``; learned rankers: ``build(config)`` gives an unfitted ranker whose
            ``fit(embeddings, labels, sets)`` learns it.
        load: Learned rankers only: ``load(path)`` reads a fitted ranker saved with its ``save``.
        learned: Fitted on labelled embeddings and saved per workdir and featurizer.
        index_servable: An approximate vector index (faiss, Milvus) can serve it (see ``core.index.space_for``).
        quick_fit: A learned ranker cheap enough (seconds on cached embeddings) to fit on first use, so it is on
            offer from the first run; slower ones are fitted when asked for.
        score_meaning: What the number a search shows is, its range, and which way is more similar: one line,
            the same in the app, the CLI help and the REST API's OpenAPI text.
    """

    name: str
    summary: str
    build: Callable[..., Ranker]
    load: Callable[[Path], Ranker] | None = None
    learned: bool = False
    index_servable: bool = False
    quick_fit: bool = False
    score_meaning: str = ""


_REGISTRY: dict[str, RankerSpec] = {}


def register_ranker(spec: RankerSpec) -> RankerSpec:
    """Add a ranker to the registry (names are unique); returns ``spec``."""
    if spec.name in _REGISTRY:
        raise ValueError(f"ranker {spec.name!r} is registered twice")
    if spec.learned != (spec.load is not None):
        raise ValueError(f"ranker {spec.name!r}: a learned ranker needs load(), a plain one must not have it")
    if not spec.score_meaning:
        raise ValueError(f"ranker {spec.name!r}: say what its score means (score_meaning)")
    _REGISTRY[spec.name] = spec
    return spec


def list_rankers(learned: bool | None = None, quick_fit: bool | None = None) -> list[str]:
    """Registered ranker names in menu order, optionally only plain or learned ones, or (not) quick to fit."""
    return [
        name
        for name, spec in _REGISTRY.items()
        if (learned is None or spec.learned == learned) and (quick_fit is None or spec.quick_fit == quick_fit)
    ]


def ranker_spec(name: str) -> RankerSpec:
    """The registry entry of ``name``.

    Raises:
        ValueError: Unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown ranker {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def make_ranker(name: str, rng: np.random.Generator | None = None) -> Ranker:
    """A plain (not learned) ranker by name; ``rng`` seeds the random baseline (default: seed 0).

    Raises:
        ValueError: Unknown name, or a learned ranker (load it with ``ranker_spec(name).load``).
    """
    spec = ranker_spec(name)
    if spec.learned:
        raise ValueError(f"ranker {name!r} is learned: fit it or load a fitted one")
    return spec.build(rng if rng is not None else np.random.default_rng(0))


def _lazy(module: str, attribute: str) -> Callable[..., Any]:
    """A callable that imports ``module`` only when first called (learned rankers may need torch)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attribute)(*args, **kwargs)

    return call


def _lazy_load(module: str, cls: str) -> Callable[[Path], Ranker]:
    def load(path: Path) -> Ranker:
        ranker_class = getattr(importlib.import_module(module), cls)
        loaded: Ranker = ranker_class.load(path)
        return loaded

    return load


# Registration order is menu order: the everyday metrics first, learned ones next, baselines last.
register_ranker(
    RankerSpec(
        "cosine",
        "cosine similarity of the embeddings",
        lambda rng: CosineRanker(),
        index_servable=True,
        score_meaning="cosine similarity of the embeddings, -1..1, 1 = same direction (most alike)",
    )
)
register_ranker(
    RankerSpec(
        "l2",
        "negative Euclidean distance",
        lambda rng: L2Ranker(),
        index_servable=True,
        score_meaning="minus the Euclidean distance of the embeddings, -2..0 on unit embeddings "
        "(= -sqrt(2 - 2 x cosine)), 0 = identical",
    )
)


def _learned(name: str, summary: str, score_meaning: str, module: str, cls: str, **flags: bool) -> RankerSpec:
    """A learned ranker's entry: built and loaded from ``module.cls``, imported on first use."""
    return RankerSpec(
        name,
        summary,
        _lazy(module, cls),
        _lazy_load(module, cls),
        learned=True,
        score_meaning=score_meaning,
        **flags,
    )


register_ranker(
    _learned(
        "svm",
        "SVM-weighted squared L2, a learned diagonal metric with calibrated probabilities",
        "the SVM's decision value for the pair (a learned weighted squared distance plus a bias), unbounded; higher "
        "= more likely the same label (its Platt-calibrated P(same label) is a sigmoid of it)",
        "core.svm",
        "SVMRanker",
        index_servable=True,
        quick_fit=True,
    )
)
register_ranker(
    _learned(
        "projection",
        "cosine after a learned linear projection, plus the labels of each photo's nearest training images",
        "(1 - look weight) x label agreement + look weight x look, -1..1: label agreement is the cosine after the "
        "learned projection and the neighbour-label vote (near 1 = same label), the look the cosine of the raw "
        "embeddings; higher = more alike",
        "core.metric_learning",
        "ProjectionRanker",
        index_servable=True,
        quick_fit=True,
    )
)
register_ranker(
    RankerSpec(
        "l1",
        "negative Manhattan distance",
        lambda rng: L1Ranker(),
        score_meaning="minus the Manhattan (sum of absolute differences) distance of the embeddings, <= 0, "
        "0 = identical",
    )
)
register_ranker(
    RankerSpec(
        "random",
        "uniform random scores: the chance baseline",
        RandomRanker,
        score_meaning="uniform noise in 0..1, unrelated to the images (the chance baseline)",
    )
)


#: Smallest query block :func:`top_k` uses (unless there are fewer queries), whatever ``k`` is.
MIN_QUERY_BLOCK = 32


def block_shape(n_query: int, n_gallery: int, k: int, budget: int = BLOCK_ELEMENTS) -> tuple[int, int]:
    """Query and gallery rows scored at once by :func:`top_k`: about ``budget`` scores in all.

    The gallery block is at least ``4 k`` rows (so merging a block into the running top-``k`` costs at most a
    quarter more than scoring it) and at least 4,096; the query block takes the rest of the budget, never fewer
    than :data:`MIN_QUERY_BLOCK` rows. When there are few queries, the gallery block grows to fill the budget.

    Returns:
        ``(query_rows, gallery_rows)``, each at least 1.
    """
    n_query, n_gallery = max(1, n_query), max(1, n_gallery)
    gallery_rows = min(n_gallery, max(4 * k, 4096))
    query_rows = min(n_query, max(MIN_QUERY_BLOCK, budget // (gallery_rows + k)))
    gallery_rows = min(n_gallery, max(gallery_rows, budget // query_rows - k))
    return query_rows, gallery_rows


def top_k(
    ranker: Ranker,
    query: np.ndarray,
    gallery: np.ndarray,
    k: int,
    block_rows: int | None = None,
    query_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` best gallery rows per query, best first.

    Works in blocks of queries x gallery rows under one budget (:func:`block_shape`, about 64 MB of scores),
    merging each gallery block into running top-``k`` lists, so memory is ``O(query_rows * (k + block_rows))``
    whatever the sizes. Ties keep the lower gallery index first.

    Args:
        ranker: Fitted ranker.
        query: ``(Nq, D)`` embeddings.
        gallery: ``(Ng, D)`` embeddings.
        k: How many results per query.
        block_rows: Gallery rows scored at once (default: from :func:`block_shape`).
        query_rows: Query rows scored at once (default: from :func:`block_shape`).

    Returns:
        ``(indices int64[Nq, k'], scores float32[Nq, k'])`` with ``k' = min(k, Ng)``.
    """
    query, gallery = check_embeddings(query, gallery)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, len(gallery))
    default_query_rows, default_gallery_rows = block_shape(len(query), len(gallery), k)
    query_step = query_rows or default_query_rows
    gallery_step = block_rows or default_gallery_rows
    out_index = np.zeros((len(query), k), np.int64)
    out_score = np.zeros((len(query), k), np.float32)
    for rows in _row_blocks(len(query), 1, query_step):
        out_index[rows], out_score[rows] = _top_k_block(ranker, query[rows], gallery, k, gallery_step)
    return out_index, out_score


def _top_k_block(
    ranker: Ranker, query: np.ndarray, gallery: np.ndarray, k: int, gallery_step: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` of one query block, merging gallery blocks in index order.

    Once every query holds ``k`` results, only the entries of a block scoring strictly above a query's ``k``-th
    (a tie loses to the lower index, already held) can enter; when they are few, they are merged directly
    (one small sort), without selecting in the whole block.
    """
    best_index = np.zeros((len(query), 0), np.int64)
    best_score = np.zeros((len(query), 0), np.float32)
    for block in _row_blocks(len(gallery), 1, gallery_step):
        scores = np.asarray(ranker.score(query, gallery[block]), np.float32)
        if best_score.shape[1] == k:
            passing = scores > best_score[:, -1:]
            count = int(np.count_nonzero(passing))
            if count == 0:
                continue
            if count <= 2 * len(query) * k:
                rows, cols = np.nonzero(passing)
                best_index, best_score = _merge_entries(
                    best_index, best_score, rows, block.start + cols, scores[rows, cols]
                )
                continue
        candidates, candidate_scores = _block_best(scores, block.start, min(k, scores.shape[1]))
        merged_index = np.concatenate([best_index, candidates], axis=1)
        merged_score = np.concatenate([best_score, candidate_scores], axis=1)
        order = np.lexsort((merged_index, -merged_score), axis=1)[:, :k]
        best_index = np.take_along_axis(merged_index, order, axis=1)
        best_score = np.take_along_axis(merged_score, order, axis=1)
    return best_index, best_score


def _merge_entries(
    best_index: np.ndarray, best_score: np.ndarray, rows: np.ndarray, indices: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge scattered new entries ``(row, index, score)`` into full best-first lists of ``k`` per row."""
    n_rows, k = best_index.shape
    all_rows = np.concatenate([np.repeat(np.arange(n_rows), k), rows])
    all_index = np.concatenate([best_index.reshape(-1), indices])
    all_score = np.concatenate([best_score.reshape(-1), scores])
    order = np.lexsort((all_index, -all_score, all_rows))
    counts = np.bincount(all_rows, minlength=n_rows)
    starts = np.cumsum(counts) - counts
    keep = order[(np.arange(len(order)) - np.repeat(starts, counts)) < k]  # each row's first k, rows in order
    return all_index[keep].reshape(n_rows, k), all_score[keep].reshape(n_rows, k)


def _block_best(scores: np.ndarray, start: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of one block, best first, as gallery indices ``start + column``.

    A full sort is ``O(n log n)`` per row; here ``np.argpartition`` (``O(n)``) picks ``k`` candidates and only
    they are sorted. Rows where the ``k``-th score is tied with entries left outside the candidates (which of
    them belong in the list depends on the index) are sorted in full instead, so ties still go to the lower index
    (columns grow with the index, so a stable sort by score is the order wanted).
    """
    if k >= scores.shape[1]:
        order = np.argsort(-scores, axis=1, kind="stable")
    else:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        candidate_scores = np.take_along_axis(scores, candidates, axis=1)
        order = np.take_along_axis(candidates, np.lexsort((candidates, -candidate_scores), axis=1), axis=1)
        kth = candidate_scores.min(axis=1)
        tied = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k)
        if len(tied):
            order[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
    return start + order, np.take_along_axis(scores, order, axis=1)
