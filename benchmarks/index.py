"""Index benchmark: build time, memory, ms per query (batch 1 and 100) and recall@10 against the exact index,
for exact / faiss flat / IVF / HNSW / Milvus Lite on random unit vectors (optionally clustered ones).

    .venv/bin/python -m benchmarks.index --sizes 10000 100000 1000000 --dims 1280 512
    .venv/bin/python -m benchmarks.index --sizes 10000 --dims 512 --data clustered

Ground truth is the exact index (cosine) over the same gallery, computed blockwise for the 100 queries.
Random unit vectors in high dimension have no neighbourhood structure (every point is nearly orthogonal to every
other), which is the worst case for approximate search; ``--data clustered`` draws a Gaussian mixture instead.
Memory is the process RSS growth while building (the gallery array itself excluded), so it is the index's
footprint plus allocator slack. Writes a table to stdout and JSON to ``benchmarks/results/index.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from core.artifacts import atomic_write_json, environment_versions
from core.index import VectorIndex, create_index
from core.index.exact import ExactConfig
from core.rankers import CosineRanker

log = logging.getLogger("benchmarks.index")

BACKENDS = ("exact", "exact-f16", "faiss-flat", "faiss-ivf", "faiss-hnsw", "milvus-lite")


@dataclass(frozen=True)
class Row:
    data: str
    dim: int
    n: int
    backend: str
    params: str
    build_s: float
    memory_mb: float
    index_mb: float
    ms_per_query_b1: float
    ms_per_query_b100: float
    recall_at_10: float


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[1280, 512])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--data", choices=("random", "clustered"), default="random")
    parser.add_argument("--queries", type=int, default=100, help="queries for recall and batch-100 timing")
    parser.add_argument("--single-queries", type=int, default=20, help="batch-1 queries timed (median)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64, 256], help="IVF nprobe values measured")
    parser.add_argument(
        "--ef-search", type=int, nargs="+", default=[64, 256, 1024], help="HNSW efSearch values measured"
    )
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--milvus-max", type=int, default=100_000, help="skip Milvus Lite above this size")
    parser.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/index.json"))
    return parser


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        import os

        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def unit_rows(rng: np.random.Generator, n: int, dim: int, data: str, centres: np.ndarray | None) -> np.ndarray:
    """``n`` unit vectors, generated in chunks so the float64 temporaries stay small."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        rows = rng.standard_normal((stop - start, dim), dtype=np.float32)
        if data == "clustered":
            rows = centres[rng.integers(0, len(centres), stop - start)] + 0.6 * rows / np.sqrt(dim)
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def index_mb(index: VectorIndex, config: object) -> float:
    """Size of the index's data structures: exact = its arrays; faiss = vectors + ids + HNSW links / IVF centroids
    (what ``write_index`` would store); Milvus Lite = its ``.db`` file."""
    n, dim = len(index), index.dim
    kind = getattr(config, "kind", None)
    if hasattr(index, "nbytes"):
        size = index.nbytes
    elif kind == "flat":
        size = n * (4 * dim + 8)
    elif kind == "ivf":
        size = n * (4 * dim + 8) + index._index.nlist * 4 * dim
    elif kind == "hnsw":
        size = n * (4 * dim + 8 + 4 * 2 * config.hnsw_m) * 1.05  # level-0 links 2M, upper levels ~ 5 %
    else:
        size = sum(p.stat().st_size for p in Path(config.uri).parent.rglob("*") if p.is_file())
    return size / 2**20


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean(
            [len(set(a[a >= 0].tolist()) & set(b.tolist())) / truth.shape[1] for a, b in zip(found, truth, strict=True)]
        )
    )


def configs(backend: str, args: argparse.Namespace, workdir: Path) -> Iterator[tuple[object, str]]:
    from core.index.faiss_backend import FaissConfig
    from core.index.milvus_backend import MilvusConfig

    if backend == "exact":
        yield ExactConfig(), "float32"
    elif backend == "exact-f16":
        yield ExactConfig(dtype="float16"), "float16"
    elif backend == "faiss-flat":
        yield FaissConfig(kind="flat"), "IndexFlatIP"
    elif backend == "faiss-ivf":
        yield FaissConfig(kind="ivf"), "nlist=4*sqrt(N)"
    elif backend == "faiss-hnsw":
        yield (
            FaissConfig(kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction),
            f"M={args.hnsw_m},efC={args.ef_construction}",
        )
    elif backend == "milvus-lite":
        yield MilvusConfig(uri=str(workdir / "milvus.db"), collection=f"bench_{time.time_ns()}"), "FLAT (Lite)"


def search_variants(index: VectorIndex, backend: str, args: argparse.Namespace) -> Iterator[str]:
    """Yield once per search setting (IVF nprobe, HNSW efSearch), after applying it."""
    if backend == "faiss-ivf":
        for nprobe in args.nprobe:
            index.set_search_params(nprobe=nprobe)
            yield f"nprobe={nprobe}"
    elif backend == "faiss-hnsw":
        for ef in args.ef_search:
            index.set_search_params(ef_search=ef)
            yield f"efSearch={ef}"
    else:
        yield ""


def measure(
    gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray, backend: str, args: argparse.Namespace
) -> list[Row]:
    ranker = CosineRanker()
    ids = np.arange(len(gallery), dtype=np.int64)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for config, params in configs(backend, args, Path(workdir)):
            gc.collect()
            before = rss_mb()
            start = time.perf_counter()
            index = create_index(config, "bench", gallery.shape[1], ranker)
            for chunk in range(0, len(gallery), 200_000):
                index.add(ids[chunk : chunk + 200_000], gallery[chunk : chunk + 200_000])
            build = time.perf_counter() - start
            memory = rss_mb() - before
            size = index_mb(index, config)
            for variant in search_variants(index, backend, args):
                single = queries[: args.single_queries]
                index.search(single[:1], 10, ranker)  # warm-up
                b1 = float(
                    np.median([timed(lambda q=q, index=index: index.search(q[None], 10, ranker), 1) for q in single])
                )
                b100 = timed(lambda index=index: index.search(queries, 10, ranker), 3) / len(queries)
                found = index.search(queries, 10, ranker).ids
                row = Row(
                    args.data,
                    gallery.shape[1],
                    len(gallery),
                    backend,
                    ",".join(p for p in (params, variant) if p),
                    round(build, 2),
                    round(memory, 1),
                    round(size, 1),
                    round(b1 * 1e3, 3),
                    round(b100 * 1e3, 3),
                    round(recall_at_10(found, truth), 4),
                )
                log.info("%s", row)
                print(format_row(row), flush=True)
                rows.append(row)
            if hasattr(index, "close"):
                index.close()
            del index
            gc.collect()
    return rows


HEADER = f"{'data':<9} {'D':>5} {'N':>8} {'backend':<12} {'params':<28} {'build s':>8} {'RSS+ MB':>8} {'index MB':>8} {'ms/q b1':>8} {'ms/q b100':>9} {'R@10':>6}"


def format_row(row: Row) -> str:
    return (
        f"{row.data:<9} {row.dim:>5} {row.n:>8} {row.backend:<12} {row.params:<28} {row.build_s:>8.2f} {row.memory_mb:>8.0f} {row.index_mb:>8.0f} "
        f"{row.ms_per_query_b1:>8.2f} {row.ms_per_query_b100:>9.3f} {row.recall_at_10:>6.3f}"
    )


def main(args: argparse.Namespace) -> list[Row]:
    logging.basicConfig(level=logging.WARNING)
    rows: list[Row] = []
    print(HEADER, flush=True)
    for dim in args.dims:
        for n in args.sizes:
            rng = np.random.default_rng(args.seed)
            centres = (
                rng.standard_normal((1000, dim), dtype=np.float32) / np.sqrt(dim) if args.data == "clustered" else None
            )
            gallery = unit_rows(rng, n, dim, args.data, centres)
            queries = unit_rows(rng, args.queries, dim, args.data, centres)
            exact = create_index(ExactConfig(), "bench", dim)
            exact.add(np.arange(n), gallery)
            truth = exact.search(queries, 10, CosineRanker()).ids
            del exact
            for backend in args.backends:
                if (backend == "milvus-lite" and n > args.milvus_max) or (
                    backend == "faiss-hnsw" and n > args.hnsw_max
                ):
                    continue
                try:
                    rows.extend(measure(gallery, queries, truth, backend, args))
                except (ImportError, MemoryError, RuntimeError) as err:
                    print(f"{backend} D={dim} N={n}: failed ({type(err).__name__}: {err})", flush=True)
            del gallery
            gc.collect()
            _write(args, rows)
    return rows


def _write(args: argparse.Namespace, rows: list[Row]) -> None:
    payload = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform()},
        "versions": environment_versions() | _scale_versions(),
        "rows": [asdict(row) for row in rows],
    }
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = previous.get("runs", []) if isinstance(previous.get("runs"), list) else []

    def key(run_args: dict) -> tuple:
        return tuple(str(run_args.get(name)) for name in ("data", "dims", "sizes", "backends"))

    runs = [run for run in runs if key(run["args"]) != key(payload["args"])]
    atomic_write_json(args.out, {"runs": [*runs, payload]})


def _scale_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("faiss-cpu", "pymilvus", "milvus-lite"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


if __name__ == "__main__":
    main(get_args_parser().parse_args())
