"""Exact (brute-force) index: numpy, blockwise top-k, every ranker.

Vectors live in one growing array (capacity doubles, so ``add`` is amortised O(added)); ``remove`` marks rows
dead in a mask and compacts once a quarter of the rows are dead. Search scores the gallery in blocks of rows
(never an ``Nq x N`` matrix beyond one block) and merges per-block top-k lists with ``np.argpartition``.
Cosine and L2 use one matrix product per block with precomputed squared norms (L2 pairs that are near,
where that form cancels, are recomputed from direct differences in float64); any other ranker (L1, random,
SVM) is scored by its own ``score`` on each block, so results equal the ranker's.
Optional float16 storage halves memory; every block is computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import atomic_path
from core.index import IndexHits, VectorIndex, config_dict
from core.rankers import BLOCK_ELEMENTS, CosineRanker, L2Ranker, Ranker, refine_near_squared_l2

_INITIAL_CAPACITY = 1024
_HALF_MV_MAX_QUERIES = 4


@dataclass(frozen=True)
class ExactConfig:
    """Settings of the exact index.

    Attributes:
        dtype: Storage precision, ``"float32"`` or ``"float16"`` (scores are always computed in float32).
        block_rows: Gallery rows scored at once (0 = sized to about 64 MB of scores and vectors).
        compact_fraction: Compact the storage when this share of rows is dead.
    """

    dtype: str = "float32"
    block_rows: int = 0
    compact_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {self.dtype!r}")


def _merge_top_k(
    best_ids: np.ndarray, best_scores: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``k`` highest scores per row of the concatenation (unordered)."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = ids[part] if ids.ndim == 1 else np.take_along_axis(ids, part, axis=1)
    elif ids.ndim == 1:
        ids = np.broadcast_to(ids, scores.shape)
    scores = np.concatenate([best_scores, scores], axis=1)
    ids = np.concatenate([best_ids, ids], axis=1)
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    return ids, scores


class ExactIndex(VectorIndex):
    """Brute-force index; results equal a full sort of ``ranker.score`` (ties in arbitrary order)."""

    backend = "exact"

    def __init__(self, fingerprint: str, dim: int, config: ExactConfig = ExactConfig()) -> None:
        super().__init__(fingerprint, dim)
        self.config = config
        self._dtype = np.dtype(config.dtype)
        self._vectors = np.zeros((0, dim), self._dtype)
        self._ids = np.zeros(0, np.int64)
        self._sq_norms = np.zeros(0, np.float32)
        self._alive = np.zeros(0, bool)
        self._size = 0  # rows in use, dead ones included
        self._n_dead = 0

    def __len__(self) -> int:
        return self._size - self._n_dead

    def ids(self) -> np.ndarray:
        return self._ids[: self._size][self._alive[: self._size]].copy()

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored rows (capacity included)."""
        return self._vectors.nbytes + self._ids.nbytes + self._sq_norms.nbytes + self._alive.nbytes

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Live ``(ids, embeddings float32)``, in insertion order."""
        live = self._alive[: self._size]
        return self._ids[: self._size][live].copy(), self._vectors[: self._size][live].astype(np.float32)

    def _reserve(self, needed: int) -> None:
        capacity = len(self._vectors)
        if needed <= capacity:
            return
        capacity = max(needed, 2 * capacity, _INITIAL_CAPACITY)
        for name in ("_vectors", "_ids", "_sq_norms", "_alive"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), old.dtype)
            new[: self._size] = old[: self._size]
            setattr(self, name, new)

    def _add(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        clash = np.isin(ids, self.ids())
        if clash.any():
            raise ValueError(
                f"add: {int(clash.sum())} id(s) already in the index (e.g. {int(ids[clash][0])}); remove them first"
            )
        self._reserve(self._size + len(ids))
        rows = slice(self._size, self._size + len(ids))
        self._vectors[rows] = embeddings
        stored = self._vectors[rows].astype(np.float32)  # norms of what is stored (float16-rounded)
        self._sq_norms[rows] = np.einsum("ij,ij->i", stored, stored)
        self._ids[rows] = ids
        self._alive[rows] = True
        self._size += len(ids)

    def _remove(self, ids: np.ndarray) -> int:
        hit = np.isin(self._ids[: self._size], ids) & self._alive[: self._size]
        removed = int(hit.sum())
        self._alive[: self._size][hit] = False
        self._n_dead += removed
        if self._n_dead and self._n_dead >= self.config.compact_fraction * self._size:
            self.compact()
        return removed

    def compact(self) -> None:
        """Drop dead rows (O(N) copy)."""
        live = np.flatnonzero(self._alive[: self._size])
        n = len(live)
        for name in ("_vectors", "_ids", "_sq_norms"):
            array = getattr(self, name)
            array[:n] = array[live]
        self._alive[:n] = True
        self._alive[n:] = False
        self._size, self._n_dead = n, 0

    def _block_rows(self, n_queries: int) -> int:
        if self.config.block_rows:
            return self.config.block_rows
        return max(256, BLOCK_ELEMENTS // (n_queries + self.dim))

    def _block_float32(self, start: int, stop: int) -> np.ndarray:
        block = self._vectors[start:stop]
        if block.dtype == np.float32:
            return block
        import torch  # converts float16 about twice as fast as numpy here

        return torch.from_numpy(block).float().numpy()

    def _dots(self, queries: np.ndarray, start: int, stop: int) -> np.ndarray:
        """``queries @ block.T`` in float32; float16 blocks with a few queries use torch's half matrix-vector
        product (about 20x faster than converting the block; the query is rounded to float16, error ~1e-4)."""
        block = self._vectors[start:stop]
        if block.dtype == np.float32:
            return queries @ block.T
        if len(queries) <= _HALF_MV_MAX_QUERIES:
            import torch

            half_block, half_queries = torch.from_numpy(block), torch.from_numpy(queries).half()
            return np.stack([torch.mv(half_block, row).float().numpy() for row in half_queries])
        return queries @ self._block_float32(start, stop).T

    def _search(self, queries: np.ndarray, k: int, ranker: Ranker) -> IndexHits:
        kind = type(ranker)
        query_sq = np.einsum("ij,ij->i", queries, queries)
        best_ids = np.zeros((len(queries), 0), np.int64)
        best_scores = np.zeros((len(queries), 0), np.float32)
        step = self._block_rows(len(queries))
        for start in range(0, self._size, step):
            stop = min(start + step, self._size)
            if kind is CosineRanker:
                norms = np.sqrt(np.maximum(self._sq_norms[start:stop], 0)).clip(1e-12)
                scores = self._dots(queries, start, stop) / norms[None, :]
                scores /= np.sqrt(query_sq).clip(1e-12)[:, None]
            elif kind is L2Ranker:
                scores = self._dots(queries, start, stop)
                scores *= -2.0
                scores += self._sq_norms[start:stop][None, :]
                scores += query_sq[:, None]
                # near pairs (duplicates) lose digits in the matrix form: redo them from direct differences
                refine_near_squared_l2(scores, queries, self._vectors[start:stop], query_sq, self._sq_norms[start:stop])
                np.sqrt(np.maximum(scores, 0.0, out=scores), out=scores)
                np.negative(scores, out=scores)
            else:
                scores = ranker.score(queries, self._block_float32(start, stop))
            scores = np.asarray(scores, np.float32)
            alive = self._alive[start:stop]
            if not alive.all():
                scores[:, ~alive] = -np.inf
            best_ids, best_scores = _merge_top_k(best_ids, best_scores, self._ids[start:stop], scores, k)
        order = np.lexsort((best_ids, -best_scores), axis=1)
        return IndexHits(np.take_along_axis(best_ids, order, axis=1), np.take_along_axis(best_scores, order, axis=1))

    def _save_files(self, folder: Path) -> dict[str, Any]:
        ids, _ = self.vectors()
        live = self._alive[: self._size]
        with atomic_path(folder / "vectors.npy", ".npy") as temp:
            np.save(temp, self._vectors[: self._size][live], allow_pickle=False)
        with atomic_path(folder / "ids.npy", ".npy") as temp:
            np.save(temp, ids, allow_pickle=False)
        return {"config": config_dict(self.config), "files": ["vectors.npy", "ids.npy"]}

    @classmethod
    def _load_files(cls, folder: Path, manifest: dict[str, Any]) -> ExactIndex:
        config = ExactConfig(**manifest["config"])
        index = cls(manifest["fingerprint"], manifest["dim"], config)
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        ids = np.load(folder / "ids.npy", allow_pickle=False)
        if vectors.dtype != np.dtype(config.dtype) or vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(
                f"vectors {vectors.shape} {vectors.dtype} do not match ids {ids.shape} / dtype {config.dtype}"
            )
        if vectors.shape[1] != index.dim:
            raise ValueError(f"vectors.npy holds {vectors.shape[1]}-d vectors, the manifest says {index.dim}")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors.npy holds NaN or infinite values")
        if len(ids):
            index._add(ids.astype(np.int64), vectors)
        return index
