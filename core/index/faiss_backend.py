"""faiss back end: flat (exact), IVF and HNSW, on CPU (``faiss-cpu``) or, for flat and IVF, on a GPU when the
installed faiss has one (``faiss-gpu``); HNSW always searches on the CPU.

Vectors are mapped into the index's :class:`~core.index.VectorSpace` first (unit length for cosine, scaled by
``sqrt(|w|)`` for the SVM ranker), then searched by inner product (cosine) or squared L2 (l2, SVM).

* flat: ``IndexIDMap2(IndexFlatIP | IndexFlatL2)``; removal is native.
* IVF: ``IndexIVFFlat`` with its own id lists; the coarse quantiser is trained on the first ``add`` (a sample of
  at most ``train_size`` rows, ``nlist = 4 * sqrt(N)`` unless given); later adds only assign rows to lists, so
  adding 1,000 vectors to 1M costs 1,000 assignments, not a rebuild. Removal is native.
* HNSW: ``IndexIDMap2(IndexHNSWFlat)``; HNSW graphs cannot drop nodes, so removed ids become tombstones that
  search excludes through an ``IDSelector``; :meth:`FaissIndex.compact` rebuilds the graph without them
  (automatic once a quarter of the nodes are dead).

Storage (``dtype``): ``float32`` as above; ``float16`` and ``int8`` keep each vector scalar-quantised (faiss
``IndexScalarQuantizer``, ``IndexIVFScalarQuantizer``, ``IndexHNSWSQ``: 2 bytes or 1 byte per dimension, int8 with
per-dimension ranges trained on the same sample as IVF), halving or quartering the index for a small loss of
recall and score precision (measured in ``docs/scale.md``).

Persistence: ``faiss.write_index`` (atomic rename) plus ``deleted.npy`` for HNSW tombstones; the manifest
carries the vector space, so a loaded index serves the same ranker.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.artifacts import atomic_path
from core.index import IndexHits, UnsupportedRankerError, VectorIndex, VectorSpace, config_dict, space_for
from core.rankers import Ranker

log = logging.getLogger(__name__)

#: Rows transformed and added at once: bounds the copy made while indexing a (memory-mapped) 10^6-row gallery.
ADD_BLOCK = 65_536


@dataclass(frozen=True)
class FaissConfig:
    """Settings of a faiss index.

    Attributes:
        kind: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"``.
        nlist: IVF lists (0 = ``4 * sqrt(N)`` at training, N = rows of the first add).
        nprobe: IVF lists visited per query.
        train_size: IVF training sample (rows of the first add).
        hnsw_m: HNSW neighbours per node.
        ef_construction: HNSW candidate list while building.
        ef_search: HNSW candidate list while searching (recall vs speed).
        use_gpu: Search flat/IVF on a GPU when faiss has one (None = when available).
        seed: Seed of the IVF (and int8 range) training sample.
        dtype: How each vector is stored: ``"float32"``, ``"float16"`` or ``"int8"`` (scalar-quantised).
    """

    kind: str = "hnsw"
    nlist: int = 0
    nprobe: int = 32
    train_size: int = 100_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    use_gpu: bool | None = None
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.kind not in ("flat", "ivf", "hnsw"):
            raise ValueError(f"faiss kind must be flat, ivf or hnsw, got {self.kind!r}")
        if self.dtype not in FAISS_DTYPES:
            raise ValueError(f"faiss dtype must be one of {', '.join(FAISS_DTYPES)}, got {self.dtype!r}")


#: How a faiss index may store its vectors (:attr:`FaissConfig.dtype`).
FAISS_DTYPES = ("float32", "float16", "int8")


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise UnsupportedRankerError("faiss is not installed: pip install -r requirements-scale.txt") from err
    return faiss


class FaissIndex(VectorIndex):
    """A faiss index serving one vector space (cosine, l2, SVM-weighted l2 or a projection)."""

    backend = "faiss"

    def __init__(
        self, fingerprint: str, dim: int, space: VectorSpace, config: FaissConfig = FaissConfig(), index: Any = None
    ) -> None:
        super().__init__(fingerprint, dim)
        self.space = space
        self.ranker_name = space.ranker_name
        self.config = config
        self._faiss = _faiss()
        self._index = index if index is not None else self._empty()
        self._deleted = np.zeros(0, np.int64)  # HNSW tombstones, sorted
        self._gpu_index: Any = None

    # -- construction -------------------------------------------------------------------------------------------
    def _metric(self) -> int:
        return self._faiss.METRIC_INNER_PRODUCT if self.space.inner_product else self._faiss.METRIC_L2

    def _quantizer_type(self) -> int | None:
        """faiss's scalar-quantiser type for :attr:`FaissConfig.dtype`; None for float32."""
        sq = self._faiss.ScalarQuantizer
        return {"float32": None, "float16": sq.QT_fp16, "int8": sq.QT_8bit}[self.config.dtype]

    def _empty(self) -> Any:
        faiss, width, qtype = self._faiss, self.space.output_dim(self.dim), self._quantizer_type()
        if self.config.kind == "flat":
            if qtype is not None:
                return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(width, qtype, self._metric()))
            flat = faiss.IndexFlatIP(width) if self.space.inner_product else faiss.IndexFlatL2(width)
            return faiss.IndexIDMap2(flat)
        if self.config.kind == "hnsw":
            if qtype is not None:
                hnsw = faiss.IndexHNSWSQ(width, qtype, self.config.hnsw_m, self._metric())
            else:
                hnsw = faiss.IndexHNSWFlat(width, self.config.hnsw_m, self._metric())
            hnsw.hnsw.efConstruction = self.config.ef_construction
            hnsw.hnsw.efSearch = self.config.ef_search
            return faiss.IndexIDMap2(hnsw)
        return None  # IVF: built and trained on the first add

    def _training_sample(self, embeddings: np.ndarray) -> np.ndarray:
        """A seeded sample of at most ``train_size`` of these embeddings, transformed into the index's space."""
        n = len(embeddings)
        rng = np.random.default_rng(self.config.seed)
        rows = (
            np.arange(n)
            if n <= self.config.train_size
            else np.sort(rng.choice(n, self.config.train_size, replace=False))
        )
        return np.ascontiguousarray(self.space.transform(embeddings[rows]))

    def _train_ivf(self, embeddings: np.ndarray) -> Any:
        """An empty IVF index trained on (a seeded sample of) these untransformed embeddings."""
        faiss, width, qtype = self._faiss, self.space.output_dim(self.dim), self._quantizer_type()
        n = len(embeddings)
        nlist = self.config.nlist or round(4 * math.sqrt(n))
        nlist = max(1, min(nlist, n // 39 or 1))  # faiss wants >= 39 training points per centroid
        quantizer = faiss.IndexFlatIP(width) if self.space.inner_product else faiss.IndexFlatL2(width)
        if qtype is not None:
            index = faiss.IndexIVFScalarQuantizer(quantizer, width, nlist, qtype, self._metric())
        else:
            index = faiss.IndexIVFFlat(quantizer, width, nlist, self._metric())
        sample = self._training_sample(embeddings)
        log.info("training IVF: %d lists on %d vectors", nlist, len(sample))
        index.train(sample)
        index.nprobe = min(self.config.nprobe, nlist)
        return index

    # -- contract -------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal) - len(self._deleted)

    def _all_ids(self) -> np.ndarray:
        if self._index is None:
            return np.zeros(0, np.int64)
        faiss = self._faiss
        if self.config.kind == "ivf":
            invlists = self._index.invlists
            parts = [
                faiss.rev_swig_ptr(invlists.get_ids(list_no), invlists.list_size(list_no)).copy()
                for list_no in range(self._index.nlist)
                if invlists.list_size(list_no)
            ]
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def ids(self) -> np.ndarray:
        ids = self._all_ids()
        return ids[~np.isin(ids, self._deleted)] if len(self._deleted) else ids

    def _check_space(self, ranker: Ranker) -> None:
        space = space_for(ranker)
        if not space.same_as(self.space):
            raise UnsupportedRankerError(
                f"this faiss index serves {self.space.metric} (built for one ranker), not {ranker.name!r} "
                f"({space.metric}); build another index or use the exact index"
            )

    def _add(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        if len(self._deleted) and np.isin(ids, self._deleted).any():
            self.compact()  # a re-added id must not revive its old tombstoned vector
        clash = np.isin(ids, self._all_ids())
        if clash.any():
            raise ValueError(
                f"add: {int(clash.sum())} id(s) already in the index (e.g. {int(ids[clash][0])}); remove them first"
            )
        if self._index is None:
            self._index = self._train_ivf(embeddings)
        elif not self._index.is_trained:  # int8 storage: per-dimension ranges from the first add's sample
            self._index.train(self._training_sample(embeddings))
        # transformed and added a block at a time: never a second copy of the whole (memory-mapped) gallery
        for start in range(0, len(ids), ADD_BLOCK):
            block = np.ascontiguousarray(self.space.transform(embeddings[start : start + ADD_BLOCK]))
            self._index.add_with_ids(block, np.ascontiguousarray(ids[start : start + ADD_BLOCK]))
        self._gpu_index = None

    def _remove(self, ids: np.ndarray) -> int:
        present = ids[np.isin(ids, self.ids())]
        if not len(present):
            return 0
        if self.config.kind == "hnsw":
            self._deleted = np.union1d(self._deleted, present)
            if len(self._deleted) >= 0.25 * self._index.ntotal:
                self.compact()
        else:
            self._index.remove_ids(self._faiss.IDSelectorBatch(present))
        self._gpu_index = None
        return len(present)

    def compact(self) -> None:
        """Rebuild the HNSW graph without its tombstones (O(N log N)); a no-op for flat and IVF."""
        if self.config.kind != "hnsw" or not len(self._deleted):
            return
        ids = self._all_ids()
        vectors = self._index.index.reconstruct_n(0, self._index.ntotal)
        keep = ~np.isin(ids, self._deleted)
        log.info("rebuilding HNSW without %d removed vectors", int((~keep).sum()))
        self._index = self._empty()
        self._deleted = np.zeros(0, np.int64)
        if keep.any() and not self._index.is_trained:  # int8 ranges again, from the kept vectors
            self._index.train(np.ascontiguousarray(vectors[keep][: self.config.train_size]))
        if keep.any():
            self._index.add_with_ids(np.ascontiguousarray(vectors[keep]), np.ascontiguousarray(ids[keep]))

    def _searcher(self) -> Any:
        faiss = self._faiss
        use_gpu = self.config.use_gpu
        has_gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
        if self.config.kind == "hnsw" or not has_gpu or use_gpu is False:
            return self._index
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
        return self._gpu_index

    def _search(self, queries: np.ndarray, k: int, ranker: Ranker) -> IndexHits:
        self._check_space(ranker)
        faiss = self._faiss
        vectors = np.ascontiguousarray(self.space.transform(queries))
        if self.config.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.config.ef_search, k)
            if len(self._deleted):
                batch = faiss.IDSelectorBatch(self._deleted)
                selector = faiss.IDSelectorNot(batch)
                params.sel = selector
            distances, ids = self._index.search(vectors, k, params=params)
        else:
            distances, ids = self._searcher().search(vectors, k)
        scores = self.space.scores_from_distances(distances)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return IndexHits(ids.astype(np.int64), scores)

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the recall / speed trade-off of a built index."""
        import dataclasses

        if nprobe is not None:
            self.config = dataclasses.replace(self.config, nprobe=nprobe)
            if self.config.kind == "ivf" and self._index is not None:
                self._index.nprobe = min(nprobe, self._index.nlist)
        if ef_search is not None:
            self.config = dataclasses.replace(self.config, ef_search=ef_search)  # passed with every HNSW search
        self._gpu_index = None

    def inconsistency(self) -> str | None:
        problem = self.space.inconsistency(self.dim)
        width = self.space.output_dim(self.dim)
        if problem is None and self._index is not None and self._index.d != width:
            problem = f"index.faiss holds {self._index.d}-d vectors, the manifest's dim and space give {width}-d"
        return problem

    # -- persistence ----------------------------------------------------------------------------------------------
    def _save_files(self, folder: Path) -> dict[str, Any]:
        if self._index is None:
            raise ValueError("cannot save an IVF index before its first add (it is untrained)")
        # through a Python file object: a full disk raises OSError (ENOSPC), reported as one line by the caller
        with atomic_path(folder / "index.faiss", ".faiss") as temp, open(temp, "wb") as handle:
            self._faiss.write_index(self._index, self._faiss.PyCallbackIOWriter(handle.write))
        with atomic_path(folder / "deleted.npy", ".npy") as temp:
            np.save(temp, self._deleted, allow_pickle=False)
        return {
            "config": config_dict(self.config),
            "space": self.space.to_json(),
            "files": ["index.faiss", "deleted.npy"],
        }

    @classmethod
    def _load_files(cls, folder: Path, manifest: dict[str, Any]) -> FaissIndex:
        faiss = _faiss()
        index = faiss.read_index(str(folder / "index.faiss"))
        loaded = cls(
            manifest["fingerprint"],
            manifest["dim"],
            VectorSpace.from_json(manifest["space"]),
            FaissConfig(**manifest["config"]),
            index,
        )
        loaded._deleted = np.load(folder / "deleted.npy", allow_pickle=False).astype(np.int64)
        if loaded.config.kind == "ivf":
            index.nprobe = min(loaded.config.nprobe, index.nlist)
        return loaded
