"""Ranking one query with the projection ranker: the gallery transformed on every search vs once, kept.

The projection ranker's score is the dot product of ``ProjectionRanker.transform`` (the projected embedding and
the neighbour-label vote, unit length). Ranking a query by ``ranker.score`` against the raw gallery transforms
the whole gallery on every search (``D x d`` plus ``voters x D`` multiply-adds per gallery row); the app's search
(``Workspace.search``) now transforms the gallery once per fitted ranker and ranks by a dot product. This script
times both on random unit vectors shaped like EfficientNet-Lite0's (D = 1280) with a square matrix and 1,024
voters in 10 labels (the library's defaults at their largest), one query at a time, and the one-time transform.

Prints a table and writes JSON (default ``benchmarks/results/projection_search.json``, git-ignored).

    python benchmarks/projection_search.py [--gallery 10000] [--queries 30] [--k 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=30, help="timed queries per way (after 2 warm-up ones)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--voters", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "projection_search.json")
    return parser


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def main(args: argparse.Namespace) -> None:
    from core.artifacts import atomic_write_json
    from core.metric_learning import NeighbourLabels, ProjectionConfig, ProjectionRanker
    from core.rankers import CosineRanker, top_k

    rng = np.random.default_rng(args.seed)
    gallery, queries = unit_rows(rng, args.gallery, args.dim), unit_rows(rng, args.queries + 2, args.dim)
    matrix = (rng.normal(size=(args.dim, args.dim)) / np.sqrt(args.dim)).astype(np.float32)
    votes = NeighbourLabels(
        "input", unit_rows(rng, args.voters, args.dim), rng.integers(0, 10, args.voters), 10, 0.03, 0.75
    )
    ranker = ProjectionRanker(ProjectionConfig(), matrix, 0.0, votes)

    start = time.perf_counter()
    transformed = ranker.transform(gallery)
    transform_s = time.perf_counter() - start

    def per_search(query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return top_k(ranker, query, gallery, args.k)

    def kept(query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return top_k(CosineRanker(), ranker.transform(query), transformed, args.k)

    timings: dict[str, list[float]] = {}
    for name, search in (("gallery transformed per search", per_search), ("gallery transformed once, kept", kept)):
        times = []
        for i, query in enumerate(queries):
            start = time.perf_counter()
            search(query[None])
            if i >= 2:
                times.append(1000 * (time.perf_counter() - start))
        timings[name] = times
    same = np.array_equal(per_search(queries[:1])[0], kept(queries[:1])[0])
    medians = {name: float(np.median(times)) for name, times in timings.items()}
    before, after = medians.values()
    print(
        f"projection ranker, gallery {args.gallery} x {args.dim}, {args.voters} voters, k={args.k}, "
        f"{args.queries} queries each, {platform.processor() or platform.machine()} ({os.cpu_count()} cores), "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'way':<34}{'median ms':>10}{'p90 ms':>10}{'ratio':>8}")
    for name, times in timings.items():
        print(f"{name:<34}{np.median(times):>10.1f}{np.percentile(times, 90):>10.1f}{before / np.median(times):>7.1f}x")
    print(
        f"one-time transform of the gallery: {transform_s:.2f} s, {transformed.nbytes / 2**20:.0f} MiB kept; "
        f"same top-{args.k}: {same}"
    )
    atomic_write_json(
        args.out,
        {
            "gallery": args.gallery,
            "dim": args.dim,
            "voters": args.voters,
            "k": args.k,
            "queries": args.queries,
            "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "load_average_after": os.getloadavg(),
            "median_ms": medians,
            "speedup": before / after,
            "one_time_transform_s": transform_s,
            "kept_mib": transformed.nbytes / 2**20,
            "same_top_k": same,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
