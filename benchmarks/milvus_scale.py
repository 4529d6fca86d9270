"""Milvus at scale: the workbench's Milvus back end (``core.index.milvus_backend``, pymilvus ``MilvusClient``)
filled with up to 10^6 synthetic unit vectors, then searched one query at a time.

    nice -n 10 .venv/bin/python -m benchmarks.milvus_scale --n 100000 --index-type FLAT
    nice -n 10 .venv/bin/python -m benchmarks.milvus_scale --n 1000000 --index-type IVF_SQ8 --nprobe 16 64
    .venv/bin/python -m benchmarks.milvus_scale --uri http://milvus-host:19530 ...     # a Milvus server instead

The vectors are 1280-d by default (EfficientNet-Lite0's width), drawn in chunks from a Gaussian mixture of 1,000
centres (``benchmarks/index.py --data clustered``; ``--data random`` for the structure-free worst case), each chunk
from its own seeded generator, so the gallery is never held whole by this script: what the process holds is
Milvus's. Ground truth is the exact cosine top-10 of the timed queries (drawn from the same mixture, not in the
gallery), merged chunk by chunk while inserting.

Measured, in this order, each beside the 1-minute load average:

* ``insert_s``: every ``MilvusIndex.add`` call (pymilvus inserts of 10,000 rows, the duplicate-id check, a flush
  per call).
* ``index_ready_s``: Milvus Lite builds its per-segment indexes and compacts segments in a background thread after
  the flushes; this is the wait until that thread is idle (read from the embedded Lite engine; not measured on a
  server).
* ``save_s``: ``index.save`` (manifest and the ids file).
* per search setting: p50 / p95 latency of single-query searches through ``MilvusIndex.search`` and recall@10
  against the exact top-10.
* ``peak_rss_mb``: the process's peak RSS (Milvus Lite runs inside it: pure Python threads, faiss for its
  indexes); ``rss_*_mb`` the RSS after each phase; ``disk_mb`` the Lite folder.

Writes a table to stdout and JSON to ``benchmarks/results/milvus_scale.json`` (runs keyed by n, dim, data, index
type and URI kind, replaced when re-run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from contextlib import suppress
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.index import rss_mb, unit_rows
from core.artifacts import atomic_write_json, environment_versions
from core.index import create_index
from core.index.milvus_backend import MilvusConfig, MilvusIndex
from core.rankers import CosineRanker

log = logging.getLogger("benchmarks.milvus_scale")

INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW", "AUTOINDEX")
CENTRES = 1000
K = 10


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the collection (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=1280, help="(default: %(default)s, EfficientNet-Lite0's width)")
    parser.add_argument("--data", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--index-type", choices=INDEX_TYPES, default="IVF_SQ8", help="(default: %(default)s)")
    parser.add_argument("--nlist", type=int, default=256, help="IVF cells per Milvus segment (default: %(default)s)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64], help="IVF settings searched")
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 256], help="HNSW settings searched")
    parser.add_argument("--queries", type=int, default=100, help="single-query searches timed per setting")
    parser.add_argument("--chunk", type=int, default=50_000, help="rows per add call (default: %(default)s)")
    parser.add_argument("--uri", help="a Milvus server URI (default: a Milvus Lite file under --workdir)")
    parser.add_argument("--workdir", type=Path, help="where the Lite file goes (default: a temporary folder)")
    parser.add_argument(
        "--max-rss-gb",
        type=float,
        default=10.0,
        help="stop inserting once the process holds this much (default: %(default)s); what was inserted is measured",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/milvus_scale.json"))
    return parser


def load() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def chunk_rows(args: argparse.Namespace, chunk: int, centres: np.ndarray | None) -> np.ndarray:
    """Rows of ``chunk``, from a generator of their own: the same rows whatever the order they are drawn in."""
    start = chunk * args.chunk
    count = min(args.chunk, args.n - start)
    return unit_rows(np.random.default_rng([args.seed, chunk]), count, args.dim, args.data, centres)


def merge_top_k(best: tuple[np.ndarray, np.ndarray], scores: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold a block of scores ``(Q, B)`` for ids ``offset..offset+B`` into the running top-k ``(ids, scores)``."""
    ids = np.concatenate([best[0], np.broadcast_to(np.arange(offset, offset + scores.shape[1]), scores.shape)], 1)
    values = np.concatenate([best[1], scores], 1)
    keep = np.argpartition(-values, K - 1, axis=1)[:, :K]
    return np.take_along_axis(ids, keep, 1), np.take_along_axis(values, keep, 1)


def lite_engine_idle(index: MilvusIndex) -> bool:
    """Wait until the embedded Milvus Lite engine's background compaction and index builds are done.

    Reaches into Milvus Lite's in-process server (benchmark only: pymilvus reports Lite indexes as finished at
    once). False when that is not possible (a server URI, another Lite version).
    """
    if not index.config.is_lite:
        return False
    try:
        from milvus_lite.server_manager import server_manager_instance

        _, database, _ = server_manager_instance._servers[os.path.abspath(index.config.uri)]
        database.get_collection(index.config.collection)._wait_for_bg()
    except (ImportError, KeyError, AttributeError, TypeError) as err:
        log.warning("Milvus Lite's background work cannot be awaited here (%s)", err)
        return False
    return True


def search_settings(index: MilvusIndex, args: argparse.Namespace) -> list[str]:
    if args.index_type.startswith("IVF"):
        return [f"nprobe={value}" for value in args.nprobe]
    if args.index_type == "HNSW":
        return [f"ef={value}" for value in args.ef]
    return [""]


def measure_search(index: MilvusIndex, queries: np.ndarray, truth: np.ndarray, setting: str) -> dict[str, Any]:
    if setting:
        name, value = setting.split("=")
        index.set_search_params(**{name: int(value)})
    ranker = CosineRanker()
    index.search(queries[:1], K, ranker)  # warm-up
    latencies, found = [], []
    start_load = load()
    for query in queries:
        start = time.perf_counter()
        hits = index.search(query[None], K, ranker)
        latencies.append(time.perf_counter() - start)
        found.append(hits.ids[0])
    recall = np.mean([len(np.intersect1d(got, want)) / K for got, want in zip(found, truth, strict=True)])
    return {
        "setting": setting or "exact scan",
        "p50_ms": round(1e3 * float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(1e3 * float(np.percentile(latencies, 95)), 1),
        "recall_at_10": round(float(recall), 4),
        "load_before": start_load,
        "load_after": load(),
    }


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    centres_rng = np.random.default_rng([args.seed, 2**31])
    centres = (
        centres_rng.standard_normal((CENTRES, args.dim), dtype=np.float32) / np.sqrt(args.dim)
        if args.data == "clustered"
        else None
    )
    queries = unit_rows(np.random.default_rng([args.seed, 2**31 + 1]), args.queries, args.dim, args.data, centres)
    params: dict[str, Any] = {"nlist": args.nlist} if args.index_type.startswith("IVF") else {}
    if args.index_type == "HNSW":
        params = {"M": 16, "efConstruction": 80}
    config = MilvusConfig(uri=args.uri or str(workdir / "milvus.db"), index_type=args.index_type, index_params=params)
    result: dict[str, Any] = {"load_start": load(), "rss_start_mb": round(rss_mb())}

    start = time.perf_counter()
    index = create_index(config, "bench", args.dim, CosineRanker())
    assert isinstance(index, MilvusIndex)
    best = (np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32))
    n_chunks = -(-args.n // args.chunk)
    insert_s = 0.0
    for chunk in range(n_chunks):
        rows = chunk_rows(args, chunk, centres)
        offset = chunk * args.chunk
        best = merge_top_k(best, queries @ rows.T, offset)
        began = time.perf_counter()
        index.add(np.arange(offset, offset + len(rows)), rows)
        insert_s += time.perf_counter() - began
        if chunk % 4 == 3 or chunk == n_chunks - 1:
            print(
                f"  inserted {offset + len(rows):>9,} rows in {insert_s:7.1f} s  RSS {rss_mb():7.0f} MB  load {load()}",
                flush=True,
            )
        if rss_mb() > 1024 * args.max_rss_gb and chunk < n_chunks - 1:
            result["stopped"] = (
                f"RSS {rss_mb() / 1024:.1f} GB over --max-rss-gb {args.max_rss_gb} after {offset + len(rows):,} rows"
            )
            print(f"  stopped: {result['stopped']}", flush=True)
            break
    truth = np.take_along_axis(best[0], np.argsort(-best[1], 1), 1)
    result |= {"insert_s": round(insert_s, 1), "load_after_insert": load(), "rss_after_insert_mb": round(rss_mb())}

    began = time.perf_counter()
    idle = lite_engine_idle(index)
    result |= {
        "index_ready_s": round(time.perf_counter() - began, 1) if idle else None,
        "load_after_index": load(),
        "rss_after_index_mb": round(rss_mb()),
    }
    began = time.perf_counter()
    index.save(workdir / "index")
    result |= {"save_s": round(time.perf_counter() - began, 1), "build_total_s": round(time.perf_counter() - start, 1)}
    result["count"] = len(index)
    result["searches"] = [measure_search(index, queries, truth, setting) for setting in search_settings(index, args)]
    result |= {
        "rss_end_mb": round(rss_mb()),
        "peak_rss_mb": round(peak_rss_mb()),
        "disk_mb": round(folder_mb(Path(config.uri))) if config.is_lite else None,
        "load_end": load(),
        "collection": index.config.collection,
    }
    index.close()
    return result


def folder_mb(path: Path) -> float:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) / 2**20 if path.exists() else 0.0


def format_table(args: argparse.Namespace, result: dict[str, Any]) -> str:
    head = (
        f"Milvus ({'server' if args.uri else 'Lite'}) {args.index_type}, {result['count']:,} x {args.dim} {args.data}: "
        f"insert {result['insert_s']} s (load {result['load_after_insert']}), "
        f"index ready +{result['index_ready_s']} s (load {result['load_after_index']}), save {result['save_s']} s; "
        f"peak RSS {result['peak_rss_mb'] / 1024:.1f} GB, disk {result['disk_mb']} MB"
    )
    if result.get("stopped"):
        head += f"\n  stopped early: {result['stopped']}"
    lines = [head, f"{'search':<14} {'p50 ms':>8} {'p95 ms':>8} {'R@10':>6} {'load':>11}"]
    for row in result["searches"]:
        lines.append(
            f"{row['setting']:<14} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['recall_at_10']:>6.3f} "
            f"{row['load_before']:>5}-{row['load_after']:<5}"
        )
    return "\n".join(lines)


def versions() -> dict[str, str]:
    found = environment_versions()
    for package in ("pymilvus", "milvus-lite", "faiss-cpu"):
        with suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="milvus-scale-"))
    try:
        result = run(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_table(args, result), flush=True)
    run_args = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    payload = {
        "args": run_args,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(),
        "result": result,
    }
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = previous.get("runs", []) if isinstance(previous.get("runs"), list) else []

    def key(run_args: dict[str, Any]) -> tuple[str, ...]:
        return tuple(str(run_args.get(name)) for name in ("n", "dim", "data", "index_type", "uri"))

    runs = [item for item in runs if key(item["args"]) != key(run_args)]
    atomic_write_json(args.out, {"runs": [*runs, payload]})
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
