"""What storing a faiss index in float16 or int8 (``index build --dtype``) costs and saves.

Two parts, each dtype in its own process so its peak RSS is its own:

* ``real``: recall@10 against the exact float32 scan and the largest score error, on real embeddings (an ``.npz``
  feature-cache file with ``embeddings``, or an ``.npy``), for flat, IVF and HNSW in each dtype; 500 seeded queries
  drawn from the set itself (each finds itself and its nine nearest).
* ``synthetic``: an IVF index over ``--sizes`` random unit rows (memory-mapped, as a workspace holds them): build
  time, peak RSS, index bytes, single-query search p50/p95, and copy recall@1 (each query is a gallery row with
  noise of norm 0.1 added: its own row should come first).

Prints tables with the load average and writes ``benchmarks/results/index_dtype.json``.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/index_dtype.py --real features/<fp>.npz --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.index_build_memory import DIM, write_gallery

RESULTS = Path("benchmarks/results/index_dtype.json")
DTYPES = ("float32", "float16", "int8")
KINDS = ("flat", "ivf", "hnsw")


def load_real(path: Path) -> np.ndarray:
    """Unit rows from a feature-cache ``.npz`` (``embeddings``) or an ``.npy``."""
    rows = np.load(path)["embeddings"] if path.suffix == ".npz" else np.load(path)
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def real_part(path: Path, n_queries: int = 500) -> list[dict]:
    """Recall@10 vs the exact float32 scan and the largest score error, per kind and dtype."""
    from core.index import create_index
    from core.index.faiss_backend import FaissConfig
    from core.rankers import CosineRanker

    gallery = load_real(path)
    rng = np.random.default_rng(0)
    queries = gallery[np.sort(rng.choice(len(gallery), min(n_queries, len(gallery)), replace=False))]
    scores = queries @ gallery.T
    truth = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    rows = []
    for kind in KINDS:
        for dtype in DTYPES:
            index = create_index(FaissConfig(kind=kind, dtype=dtype), "bench", gallery.shape[1], CosineRanker())
            start = time.perf_counter()
            index.add(np.arange(len(gallery)), gallery)
            seconds = time.perf_counter() - start
            hits = index.search(queries, 10, CosineRanker())
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(hits.ids, truth, strict=True)]))
            exact_scores = np.take_along_axis(scores, np.maximum(hits.ids, 0), axis=1)
            error = float(np.abs(hits.scores - exact_scores)[hits.ids >= 0].max())
            rows.append(
                {
                    "kind": kind,
                    "dtype": dtype,
                    "n": len(gallery),
                    "build_s": seconds,
                    "recall_at_10": recall,
                    "max_score_error": error,
                }
            )
    return rows


def synthetic_child(path: Path, dtype: str) -> dict:
    """Build an IVF index of ``dtype`` over the memory-mapped gallery in this process; time, memory, search."""
    from core.index import create_index
    from core.index.faiss_backend import FaissConfig
    from core.rankers import CosineRanker

    gallery = np.load(path, mmap_mode="r")
    start = time.perf_counter()
    index = create_index(FaissConfig(kind="ivf", dtype=dtype), "bench", gallery.shape[1], CosineRanker())
    index.add(np.arange(len(gallery)), gallery)
    build_s = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(len(gallery), 200, replace=False))
    noise = rng.standard_normal((len(rows), gallery.shape[1])).astype(np.float32)
    queries = gallery[rows] + 0.1 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    latencies, firsts = [], []
    for query in queries:
        begin = time.perf_counter()
        hits = index.search(query[None], 10, CosineRanker())
        latencies.append(time.perf_counter() - begin)
        firsts.append(int(hits.ids[0, 0]))
    faiss_index = index._index  # the benchmark reads the stored bytes
    return {
        "dtype": dtype,
        "n": len(gallery),
        "build_s": build_s,
        "peak_rss_gb": peak_gb,
        "index_gb": faiss_index.ntotal * faiss_index.code_size / 1e9,
        "search_p50_ms": 1000 * statistics.median(latencies),
        "search_p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "copy_recall_at_1": float(np.mean(np.asarray(firsts) == rows)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, help="real embeddings (.npz feature-cache file or .npy)")
    parser.add_argument("--sizes", nargs="*", type=int, default=[100_000])
    parser.add_argument("--child", nargs=2, metavar=("PATH", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(synthetic_child(Path(args.child[0]), args.child[1])))
        return
    load_before = os.getloadavg()
    real = real_part(args.real) if args.real else []
    synthetic = []
    with tempfile.TemporaryDirectory() as folder:
        for n in args.sizes:
            path = Path(folder) / f"gallery-{n}.npy"
            write_gallery(path, n)
            for dtype in DTYPES:
                done = subprocess.run(
                    [sys.executable, __file__, "--child", str(path), dtype], capture_output=True, text=True, check=True
                )
                synthetic.append(json.loads(done.stdout.strip().splitlines()[-1]))
            path.unlink()
    load_after = os.getloadavg()
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; {os.cpu_count()} cores")
    if real:
        print(f"real embeddings {args.real} ({real[0]['n']} rows): recall@10 vs exact float32, largest score error")
        print(f"{'kind':<6} {'dtype':<8} {'build s':>8} {'recall@10':>10} {'max |score error|':>18}")
        for row in real:
            print(
                f"{row['kind']:<6} {row['dtype']:<8} {row['build_s']:>8.2f} {row['recall_at_10']:>10.4f} "
                f"{row['max_score_error']:>18.5f}"
            )
    if synthetic:
        print(f"IVF over memory-mapped random unit rows ({DIM}-d)")
        print(
            f"{'rows':>9} {'dtype':<8} {'build s':>8} {'peak RSS GB':>12} {'index GB':>9} {'p50 ms':>7} {'p95 ms':>7} "
            f"{'copy recall@1':>14}"
        )
        for row in synthetic:
            print(
                f"{row['n']:>9} {row['dtype']:<8} {row['build_s']:>8.1f} {row['peak_rss_gb']:>12.2f} "
                f"{row['index_gb']:>9.2f} {row['search_p50_ms']:>7.1f} {row['search_p95_ms']:>7.1f} "
                f"{row['copy_recall_at_1']:>14.3f}"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "load_average_before": load_before,
                "load_average_after": load_after,
                "real": real,
                "synthetic": synthetic,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
