"""Near-duplicate detection (dhash 16, Hamming threshold) on the demo photos with planted copies.

Measures what the threshold must separate: the distance from each planted copy to its original
(re-encoded, resized, cropped, brightened) and the distances between distinct demo photos; then,
for a grid of thresholds, how many planted copies are found and how many distinct photos would be
wrongly grouped. Prints tables and writes JSON (default ``benchmarks/results/dedup.json``).

    python benchmarks/dedup.py [--data data/demo] [--copies-per-variant 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from planted import EASY, HARD, plant

from core.data import scan_folder
from core.dedup import DEFAULT_THRESHOLD, find_near_duplicates, hamming_distances

THRESHOLDS = (4, 8, 12, 16, 20, 24, 28, 32, 40)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--copies-per-variant", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dedup.json")
    return parser


def percentiles(values: np.ndarray) -> dict[str, float]:
    return {f"p{q}": float(np.percentile(values, q)) for q in (0, 1, 5, 50, 95, 100)}


def main(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    demo = scan_folder(args.data)
    hashes = demo.dhashes
    distances = hamming_distances(hashes, hashes)
    upper = distances[np.triu_indices(len(hashes), 1)]
    np.fill_diagonal(distances, 10**6)
    nearest = distances.min(1)
    sources = [record.path for record in demo.dataset.records]
    variants = [name for name in (*EASY, *HARD) for _ in range(args.copies_per_variant)]
    with tempfile.TemporaryDirectory() as tmp:
        planted = plant(sources, Path(tmp), variants, rng)
        start = time.perf_counter()
        scan = scan_folder(tmp)
        scan_seconds = time.perf_counter() - start
        index_of = {record.path: n for n, record in enumerate(scan.dataset.records)}
        exact_skipped = {item.path for item in scan.skipped if "exact duplicate" in item.reason}
        copy_distance = {}
        for original, copy, variant in planted:
            if copy in index_of:
                copy_distance.setdefault(variant, []).append(
                    int(hamming_distances(scan.dhashes[[index_of[original]]], scan.dhashes[[index_of[copy]]])[0, 0])
                )
        rows = []
        for threshold in THRESHOLDS:
            start = time.perf_counter()
            report = find_near_duplicates(scan.dataset, scan.dhashes, threshold)
            seconds = time.perf_counter() - start
            removed = {item.removed for item in report.removed}
            planted_copies = {copy for _, copy, _ in planted}
            found = dict.fromkeys((*EASY, *HARD), 0)
            for _, copy, variant in planted:
                found[variant] += copy in removed or copy in exact_skipped
            false_removals = len(removed - planted_copies)
            rows.append({"threshold": threshold, "found": found, "false_removals": false_removals, "seconds": seconds})
    result = {
        "images": len(sources),
        "planted": dict.fromkeys((*EASY, *HARD), args.copies_per_variant),
        "distinct_pairs": percentiles(upper),
        "distinct_nearest_neighbour": percentiles(nearest),
        "distinct_pairs_within": {str(t): int((upper <= t).sum()) for t in THRESHOLDS},
        "copy_to_original": {variant: percentiles(np.array(values)) for variant, values in copy_distance.items()},
        "scan_seconds": scan_seconds,
        "by_threshold": rows,
        "default_threshold": DEFAULT_THRESHOLD,
    }
    print(f"{len(sources)} demo images; {len(upper)} distinct pairs")
    print(f"distinct pairs, Hamming distance:       {result['distinct_pairs']}")
    print(f"distinct nearest neighbour distance:    {result['distinct_nearest_neighbour']}")
    print(f"distinct pairs within t:                {result['distinct_pairs_within']}")
    print(
        f"\n{'variant':<18} {'n':>3} {'min':>4} {'median':>6} {'max':>4}   (distance of planted copy to its original)"
    )
    for variant, values in copy_distance.items():
        print(f"{variant:<18} {len(values):>3} {min(values):>4} {np.median(values):>6.1f} {max(values):>4}")
    if exact_skipped:
        print(f"{'exact':<18} {len(exact_skipped):>3}  (dropped at scan time as exact duplicates)")
    print(f"\n{'threshold':>9} " + " ".join(f"{v[:10]:>10}" for v in (*EASY, *HARD)) + f" {'false rm':>8} {'ms':>6}")
    for row in rows:
        print(
            f"{row['threshold']:>9} "
            + " ".join(f"{row['found'][v]:>10}" for v in (*EASY, *HARD))
            + f" {row['false_removals']:>8} {row['seconds'] * 1000:>6.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
