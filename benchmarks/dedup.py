"""Near-duplicate detection measured on planted copies: precision and recall per method and threshold.

Into a copy of a real labelled folder (default: the demo; the Fashion-MNIST scale sets of
``scripts/heldout_data.py`` at 2k / 20k / 60k) it plants known copies of a seeded sample of photos, one edit
each, spread evenly over the edits of ``tests/planted.py`` (re-encoding, rescaling, crops, brightness, colour,
mirror, crop + rescale + JPEG q=50). It also picks known distinct look-alikes: for a seeded sample of other
originals, the closest other original of the same label by pixels (16 x 16 grey thumbnails). Then, for the hash
(dhash distance <= t bits), the embedding (cosine >= c over the k-NN graph) and both (either flags the pair):

* pair precision / recall: flagged pairs that are (original, planted copy) / planted pairs flagged (imagededup's
  evaluation against a ground-truth duplicate map, pair by pair), and recall per edit;
* removal precision / recall: what ``dedup --apply`` would move: removed photos that are planted copies, kept
  with their own original / planted copies removed so;
* look-alikes flagged: share of the distinct look-alike pairs called near-duplicates;
* flagged share, largest group, removals across labels;

and, for comparison, the previous rule (connected components of every pair within 32 bits). Prints tables and
writes JSON (default ``benchmarks/results/dedup-<folder>.json``).

    python benchmarks/dedup.py [--data ~/.cache/workbench/heldout/fmnist_20k] [--embeddings] [--copies 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from PIL import Image
from planted import VARIANTS, plant

from core.data import ImageRecord, scan_folder
from core.dedup import (
    DEFAULT_COSINE,
    DEFAULT_NEIGHBOURS,
    DEFAULT_THRESHOLD,
    DedupConfig,
    group_labels,
    hash_neighbours,
    near_duplicate_pairs,
    star_groups,
)

HASH_THRESHOLDS = (2, 4, 6, 8, 12, 16, 20, 24, 28, 32, 40)
COSINES = (0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
BOTH = tuple((t, c) for t in (2, 4, 6, 8, 12) for c in (0.96, 0.97, 0.98, 0.99))
EDITS = tuple(name for name in VARIANTS if name != "exact")  # exact copies never reach dedup: the scan drops them


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo", help="labelled folder to plant into")
    parser.add_argument("--copies", type=float, default=0.05, help="planted copies as a share of the photos")
    parser.add_argument("--lookalikes", type=int, default=500, help="distinct look-alike pairs to check")
    parser.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS, help="k of the neighbour searches")
    parser.add_argument("--embeddings", action="store_true", help="also the embedding and both methods (featurizes)")
    parser.add_argument("--features-cache", type=Path, default=Path("/tmp/dedup-wd/features-bench"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/dedup-<folder>.json)")
    return parser


def thumbnails(paths: list[Path], side: int = 16) -> np.ndarray:
    """``float32[N, side * side]`` grey thumbnails in [0, 1]."""
    rows = np.zeros((len(paths), side * side), np.float32)
    for n, path in enumerate(paths):
        with Image.open(path) as image:
            rows[n] = np.asarray(image.convert("L").resize((side, side), Image.Resampling.BILINEAR)).ravel() / 255.0
    return rows


def lookalike_pairs(
    paths: list[Path], labels: np.ndarray, candidates: np.ndarray, n_pairs: int, rng: np.random.Generator
) -> np.ndarray:
    """``int64[n, 2]``: a seeded sample of ``candidates`` and the closest other candidate of the same label by pixels."""
    pixels = thumbnails([paths[i] for i in candidates])
    sample = np.sort(rng.choice(len(candidates), min(n_pairs, len(candidates)), replace=False))
    pairs = []
    for s in sample:
        same = np.flatnonzero(labels[candidates] == labels[candidates[s]])
        same = same[same != s]
        if len(same):
            distances = ((pixels[same] - pixels[s]) ** 2).sum(1)
            pairs.append((candidates[s], candidates[same[np.argmin(distances)]]))
    pairs_array = np.array(pairs, np.int64).reshape(-1, 2)
    return np.sort(pairs_array, axis=1)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate(
    n: int,
    i: np.ndarray,
    j: np.ndarray,
    truth: dict[str, np.ndarray],
    copy_of: np.ndarray,
    lookalikes: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    """Scores of one setting's flagged pairs ``(i, j)``, ``i < j`` (see the module docstring)."""
    keys = i * n + j
    all_truth = np.concatenate(list(truth.values()))
    hit = np.isin(keys, all_truth)
    keeper = star_groups(n, i, j)
    removed = np.flatnonzero(keeper != np.arange(n))
    correct = (copy_of[removed] >= 0) & (keeper[removed] == copy_of[removed])
    sizes = np.bincount(keeper, minlength=n)
    n_copies = int((copy_of >= 0).sum())
    return {
        "pairs": len(keys),
        "pair_precision": float(hit.mean()) if len(keys) else 1.0,
        "pair_recall": float(np.isin(all_truth, keys).mean()),
        "recall_by_edit": {edit: float(np.isin(edit_keys, keys).mean()) for edit, edit_keys in truth.items()},
        "removed": len(removed),
        "removal_precision": float(correct.mean()) if len(removed) else 1.0,
        "removal_recall": float(correct.sum() / n_copies),
        "lookalikes_flagged": float(np.isin(lookalikes[:, 0] * n + lookalikes[:, 1], keys).mean()),
        "flagged_share": float(sizes[sizes > 1].sum() / n),
        "largest_group": int(sizes.max()),
        "cross_label_removals": int((labels[removed] != labels[keeper[removed]]).sum()),
    }


def components_before(hashes: np.ndarray, labels: np.ndarray, threshold: int) -> dict[str, Any]:
    """The previous rule: connected components of every pair within ``threshold`` (exact, uncapped)."""
    start = time.perf_counter()
    (q, r, _), _ = hash_neighbours(hashes, None, threshold, k=len(hashes), search="exact")
    upper = q < r
    group = group_labels(len(hashes), q[upper], r[upper])
    sizes = np.bincount(group, minlength=len(hashes))
    largest = int(np.argmax(sizes))
    return {
        "threshold": threshold,
        "pairs": int(upper.sum()),
        "flagged_share": float(sizes[sizes > 1].sum() / len(hashes)),
        "largest_group": int(sizes.max()),
        "largest_group_labels": len(set(labels[group == largest].tolist())),
        "seconds": time.perf_counter() - start,
    }


def embed(folder: Path, records: Sequence[ImageRecord], cache: Path) -> np.ndarray:
    """The default featurizer's embeddings of ``records`` (content-hash cache shared between runs and sets)."""
    from core.featurize import FeatureCache
    from workbench.workspace import WorkspaceSpec, configure, make_featurizer

    spec = WorkspaceSpec(configure(data={"root": folder}), cache.parent)
    featurizer = make_featurizer(spec)
    return FeatureCache(cache).embed(featurizer, records, 64)


def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    source_scan = scan_folder(args.data)
    sources = [record.path for record in source_scan.dataset.records]
    n_copies = max(len(EDITS), round(args.copies * len(sources)))
    edits = [EDITS[n % len(EDITS)] for n in range(n_copies)]
    tmp = Path(tempfile.mkdtemp(prefix="dedup-bench-"))
    try:
        start = time.perf_counter()
        planted = plant(sources, tmp, edits, rng)
        plant_seconds = time.perf_counter() - start
        start = time.perf_counter()
        scan = scan_folder(tmp)
        scan_seconds = time.perf_counter() - start
        dataset, hashes = scan.dataset, scan.dhashes
        assert hashes is not None
        n = len(dataset)
        labels = dataset.label_array.astype(str)
        index_of = {record.path: k for k, record in enumerate(dataset.records)}
        copy_of = np.full(n, -1, np.int64)
        truth_lists: dict[str, list[int]] = {edit: [] for edit in EDITS}
        for original, copy, edit in planted:
            if copy in index_of and original in index_of:
                a, b = index_of[original], index_of[copy]
                copy_of[b] = a
                truth_lists[edit].append(min(a, b) * n + max(a, b))
        truth = {edit: np.array(keys, np.int64) for edit, keys in truth_lists.items()}
        used = np.zeros(n, bool)
        used[copy_of[copy_of >= 0]] = True
        used[copy_of >= 0] = True
        paths = [record.path for record in dataset.records]
        lookalikes = lookalike_pairs(paths, labels, np.flatnonzero(~used), args.lookalikes, rng)
        embeddings = embed(tmp, dataset.records, args.features_cache) if args.embeddings else None
        method = "both" if args.embeddings else "hash"
        start = time.perf_counter()
        config = DedupConfig(method, max(HASH_THRESHOLDS), min(COSINES), args.neighbours)
        i, j, distance, cosine, searched = near_duplicate_pairs(config, hashes, embeddings)
        search_seconds = time.perf_counter() - start
        rows = []
        for threshold in HASH_THRESHOLDS:
            rows.append(
                {
                    "method": "hash",
                    "threshold": threshold,
                    **evaluate(n, *_select(i, j, distance <= threshold), truth, copy_of, lookalikes, labels),
                }
            )
        if embeddings is not None:
            for c in COSINES:
                rows.append(
                    {
                        "method": "embedding",
                        "cosine": c,
                        **evaluate(n, *_select(i, j, cosine >= c), truth, copy_of, lookalikes, labels),
                    }
                )
            for threshold, c in BOTH:
                mask = (distance <= threshold) | (cosine >= c)
                rows.append(
                    {
                        "method": "both",
                        "threshold": threshold,
                        "cosine": c,
                        **evaluate(n, *_select(i, j, mask), truth, copy_of, lookalikes, labels),
                    }
                )
        before = components_before(hashes, labels, 32)
        start = time.perf_counter()
        star = star_groups(n, *_select(i, j, distance <= DEFAULT_THRESHOLD))
        star_seconds = time.perf_counter() - start
        del star
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "data": str(args.data),
        "images": len(sources),
        "planted_copies": {edit: len(keys) for edit, keys in truth.items()},
        "lookalike_pairs": len(lookalikes),
        "neighbours": args.neighbours,
        "hash_search": searched,
        "seconds": {
            "plant": plant_seconds,
            "scan": scan_seconds,
            "search": search_seconds,
            "star_groups": star_seconds,
        },
        "before_components_32": before,
        "defaults": {"hash_threshold": DEFAULT_THRESHOLD, "cosine": DEFAULT_COSINE},
        "rows": rows,
        "peak_rss_mb": peak_rss_mb(),
        "load_average": os.getloadavg(),
    }
    _print(result)
    out = args.out or ROOT / "benchmarks" / "results" / f"dedup-{args.data.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def _select(i: np.ndarray, j: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return i[mask], j[mask]


def _print(result: dict[str, Any]) -> None:
    before = result["before_components_32"]
    print(
        f"{result['data']}: {result['images']} photos + {sum(result['planted_copies'].values())} planted copies "
        f"({len(result['planted_copies'])} edits), {result['lookalike_pairs']} distinct look-alike pairs; "
        f"k={result['neighbours']}, hash search {result['hash_search']}; load {result['load_average'][0]:.1f}"
    )
    print(
        f"before (components, 32 bits): {before['pairs']} pairs, flagged {before['flagged_share']:.1%}, largest group "
        f"{before['largest_group']} over {before['largest_group_labels']} labels ({before['seconds']:.1f} s)"
    )
    seconds = result["seconds"]
    print(
        f"times: plant {seconds['plant']:.1f} s, scan {seconds['scan']:.1f} s, neighbour search {seconds['search']:.1f} s, "
        f"star groups {seconds['star_groups'] * 1000:.0f} ms; peak RSS {result['peak_rss_mb']:.0f} MB"
    )
    header = (
        f"{'method':<9} {'hash':>4} {'cos':>5} {'pair P':>7} {'pair R':>7} {'rm P':>6} {'rm R':>6} {'look':>6} "
        f"{'flagged':>7} {'largest':>7} {'x-label':>7}"
    )
    print("\n" + header)
    for row in result["rows"]:
        print(
            f"{row['method']:<9} {row.get('threshold', ''):>4} {row.get('cosine', ''):>5} {row['pair_precision']:>7.3f} "
            f"{row['pair_recall']:>7.3f} {row['removal_precision']:>6.3f} {row['removal_recall']:>6.3f} "
            f"{row['lookalikes_flagged']:>6.3f} {row['flagged_share']:>7.1%} {row['largest_group']:>7} "
            f"{row['cross_label_removals']:>7}"
        )
    print("\nrecall per edit")
    edits = list(result["planted_copies"])
    print(f"{'method':<9} {'hash':>4} {'cos':>5} " + " ".join(f"{edit[:9]:>9}" for edit in edits))
    for row in result["rows"]:
        print(
            f"{row['method']:<9} {row.get('threshold', ''):>4} {row.get('cosine', ''):>5} "
            + " ".join(f"{row['recall_by_edit'][edit]:>9.2f}" for edit in edits)
        )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
