"""Near-duplicate search and the leakage check at scale: time, peak memory, recall of the IVF search, sizes.

Two parts:

``--data FOLDER`` (e.g. ``~/.cache/workbench/heldout/fmnist_60k``): the real folder. Scans it (dhash of every
photo), then times the hash search exact (faiss range search) and IVF (faiss binary IVF) with the recall of the
IVF pairs against the exact ones; star groups; the leak check of a 75/25 split; and the size of ``prepared.json``
written by ``prepare`` (``--prepare``) beside the size of the leak list the previous code stored (every pair
within the threshold across the split).

``--synthetic N`` (e.g. ``1000000``): N synthetic photos made from the folder's photos (two photos of one label
mixed with a random weight of the first in [0.6, 0.9], each shifted by up to 3 pixels), hashed like ``dhash`` (grey, resized
to 17 x 16 by area averaging, left > right), plus 1 % planted near copies (each a synthetic photo with 2-24 of its
256 bits flipped). Times the search (``auto``: IVF at this size), star groups and the leak check; recall on the
planted copies, and against an exact search for a seeded sample of queries.

Prints a table and writes JSON (default ``benchmarks/results/dedup_scale.json``); the load average is recorded.

    python benchmarks/dedup_scale.py --data ~/.cache/workbench/heldout/fmnist_60k --prepare --synthetic 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from core.data import Split, scan_folder
from core.dedup import (
    DEFAULT_NEIGHBOURS,
    DEFAULT_THRESHOLD,
    find_leaks,
    group_labels,
    hash_neighbours,
    star_groups,
)

#: Synthetic photos: the weight of the first photo of a mix, and the largest shift (pixels) of each photo.
WEIGHT = (0.6, 0.9)
SHIFT = 3


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="labelled folder (and source of synthetic photos)")
    parser.add_argument("--synthetic", type=int, default=0, help="also N synthetic photos (0: none)")
    parser.add_argument("--prepare", action="store_true", help="also run prepare and measure prepared.json")
    parser.add_argument(
        "--before-after", action="store_true", help="only the folder's groups: previous rule against star groups"
    )
    parser.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD)
    parser.add_argument("--neighbours", type=int, default=DEFAULT_NEIGHBOURS)
    parser.add_argument("--sample-queries", type=int, default=2000, help="queries checked exactly at N synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dedup_scale.json")
    return parser


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """``(result, seconds, peak RSS MB after)``; the CPU seconds of the call are added to :data:`CPU_SECONDS`."""
    start, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    CPU_SECONDS[getattr(function, "__name__", "call")] = time.process_time() - cpu
    return result, time.perf_counter() - start, peak_rss_mb()


#: CPU seconds (all threads of this process) of the last timed call of each function: on a shared machine the wall
#: time also counts the time other processes held the cores.
CPU_SECONDS: dict[str, float] = {}


def pair_keys(query: np.ndarray, reference: np.ndarray, n: int) -> np.ndarray:
    return np.unique(np.minimum(query, reference) * n + np.maximum(query, reference))


def real_folder(args: argparse.Namespace) -> dict[str, Any]:
    scan, scan_seconds, _ = timed(scan_folder, args.data)
    hashes, n = scan.dhashes, len(scan.dataset)
    result: dict[str, Any] = {"images": n, "scan_seconds": scan_seconds}
    keys = {}
    for search in ("exact", "ivf"):
        ((q, r, _), _used), seconds, rss = timed(hash_neighbours, hashes, None, args.threshold, args.neighbours, search)
        keys[search] = pair_keys(q, r, n)
        (i, j) = np.divmod(keys[search], n)
        _, star_seconds, _ = timed(star_groups, n, i, j)
        result[search] = {
            "seconds": seconds,
            "cpu_seconds": CPU_SECONDS["hash_neighbours"],
            "pairs": len(keys[search]),
            "star_seconds": star_seconds,
            "rss_mb": rss,
        }
    result["ivf"]["recall_vs_exact"] = float(np.isin(keys["exact"], keys["ivf"]).mean())
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(n)
    split = Split(np.sort(order[: n * 3 // 4]), np.sort(order[n * 3 // 4 :]))
    leaks, seconds, rss = timed(find_leaks, scan.dataset, split, hashes, args.threshold, args.neighbours)
    # what the previous code stored: every pair within the threshold across the split
    ((q, r, d), _), old_seconds, _ = timed(
        hash_neighbours, hashes[split.test], hashes[split.train], args.threshold, len(split.train), "exact"
    )
    root = scan.dataset.root
    old_list = [
        [
            str(scan.dataset.records[split.train[t]].path.relative_to(root)),
            str(scan.dataset.records[split.test[s]].path.relative_to(root)),
            int(x),
        ]
        for s, t, x in zip(q.tolist(), r.tolist(), d.tolist(), strict=True)
    ]
    from core.dedup import leaks_to_json

    result["leaks"] = {
        "count": leaks.count,
        "seconds": seconds,
        "rss_mb": rss,
        "json_bytes": len(json.dumps(leaks_to_json(leaks, root))),
        "previous_all_pairs": len(old_list),
        "previous_json_bytes": len(json.dumps(old_list)),
        "previous_seconds": old_seconds,
    }
    if args.prepare:
        from core.config import DataConfig
        from core.pipeline import prepare, save_prepared

        prepared, seconds, rss = timed(prepare, DataConfig(root=args.data))
        with tempfile.TemporaryDirectory() as tmp:
            path = save_prepared(prepared, Path(tmp))
            size = path.stat().st_size
            leak_bytes = len(json.dumps(json.loads(path.read_text())["leaks"]))
        result["prepare"] = {
            "seconds": seconds,
            "rss_mb": rss,
            "prepared_json_bytes": size,
            "leaks_field_bytes": leak_bytes,
            "leaks": prepared.leaks.count,
        }
    return result


def before_after(args: argparse.Namespace) -> dict[str, Any]:
    """The folder as it is: the previous rule (connected components of every pair within 32 bits) against star
    groups over each photo's ``k`` nearest, at 32 bits and at the default threshold."""
    scan = scan_folder(args.data)
    hashes, n = scan.dhashes, len(scan.dataset)
    assert hashes is not None
    labels = scan.dataset.label_array.astype(str)
    (q, r, _), _ = hash_neighbours(hashes, None, 32, k=n, search="exact")
    upper = q < r
    components = group_labels(n, q[upper], r[upper])
    rows = [{"rule": "components (previous)", "threshold": 32, **_groups(components, labels)}]
    rows[0]["pairs"] = int(upper.sum())
    for threshold in sorted({32, args.threshold}):
        ((q, r, _), _), seconds, _ = timed(hash_neighbours, hashes, None, threshold, args.neighbours)
        keeper = star_groups(n, q, r)
        rows.append({"rule": "star (now)", "threshold": threshold, "seconds": seconds, **_groups(keeper, labels)})
    return {"images": n, "rows": rows}


def _groups(group: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    sizes = np.bincount(group, minlength=len(group))
    largest = int(np.argmax(sizes))
    removed = np.flatnonzero(group != np.arange(len(group)))
    members = labels[group == largest]
    label_names, label_counts = np.unique(members, return_counts=True)
    return {
        "flagged_share": float(sizes[sizes > 1].sum() / len(group)),
        "removed": len(removed),
        "removed_share": len(removed) / len(group),
        "largest_group": int(sizes.max()),
        "largest_group_labels": len(label_names),
        "largest_group_top_label": f"{label_names[np.argmax(label_counts)]} ({label_counts.max()})",
        "cross_label_removals": int((labels[removed] != labels[group[removed]]).sum()),
    }


def load_grey(paths: list[Path]) -> np.ndarray:
    from PIL import Image

    with Image.open(paths[0]) as first:
        shape = first.convert("L").size[::-1]
    pixels = np.zeros((len(paths), *shape), np.float32)
    for n, path in enumerate(paths):
        with Image.open(path) as image:
            pixels[n] = np.asarray(image.convert("L").resize(shape[::-1]), np.float32)
    return pixels


def area_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``float32[size_out, size_in]``: each output cell the average of the input cells it covers."""
    edges = np.linspace(0, size_in, size_out + 1)
    cells = np.arange(size_in)
    overlap = np.clip(
        np.minimum(cells[None, :] + 1, edges[1:, None]) - np.maximum(cells[None, :], edges[:-1, None]), 0, None
    )
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def synthetic_hashes(base: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8[n, 32]``: dhash-16 of ``n`` mixes of two same-label photos, each shifted (see the docstring)."""
    height, width = base.shape[1:]
    rows, cols = area_matrix(height, 16), area_matrix(width, 17)
    padded = np.pad(base, ((0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT)), mode="edge")
    order = np.argsort(labels, kind="stable")
    names, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    hashes = np.zeros((n, 32), np.uint8)
    for start in range(0, n, 20_000):
        size = min(20_000, n - start)
        label = rng.integers(0, len(names), size)
        first = order[starts[label] + rng.integers(0, counts[label])]
        second = order[starts[label] + rng.integers(0, counts[label])]
        weight = rng.uniform(*WEIGHT, size).astype(np.float32)[:, None, None]

        def shifted(photos: np.ndarray) -> np.ndarray:
            dy, dx = rng.integers(0, 2 * SHIFT + 1, (2, len(photos)))
            y = dy[:, None, None] + np.arange(height)[None, :, None]
            x = dx[:, None, None] + np.arange(width)[None, None, :]
            return padded[photos[:, None, None], y, x]

        mixed = weight * shifted(first) + (1 - weight) * shifted(second)
        small = rows @ mixed @ cols.T
        hashes[start : start + size] = np.packbits((small[:, :, 1:] > small[:, :, :-1]).reshape(size, -1), axis=1)
    return hashes


def flip_bits(hashes: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    bits = np.unpackbits(hashes, axis=1)
    for row, count in enumerate(counts):
        bits[row, rng.choice(256, count, replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def synthetic(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    scan = scan_folder(args.data, perceptual_hashes=False)
    paths = [record.path for record in scan.dataset.records]
    base, load_seconds, _ = timed(load_grey, paths)
    hashes, make_seconds, _ = timed(synthetic_hashes, base, scan.dataset.label_array.astype(str), args.synthetic, rng)
    del base
    n_copies = args.synthetic // 100
    originals = rng.choice(args.synthetic, n_copies, replace=False)
    copies = flip_bits(hashes[originals], rng.integers(2, 25, n_copies), rng)
    hashes = np.concatenate([hashes, copies])
    n = len(hashes)
    planted = np.minimum(originals, np.arange(args.synthetic, n)) * n + np.maximum(
        originals, np.arange(args.synthetic, n)
    )
    ((q, r, distance), used), seconds, rss = timed(hash_neighbours, hashes, None, args.threshold, args.neighbours)
    search_cpu = CPU_SECONDS["hash_neighbours"]
    keys = pair_keys(q, r, n)
    i, j = np.divmod(keys, n)
    _, star_seconds, star_rss = timed(star_groups, n, i, j)
    sample = np.sort(rng.choice(n, args.sample_queries, replace=False))
    ((sq, sr, sd), _), exact_seconds, _ = timed(
        hash_neighbours, hashes[sample], hashes, args.threshold, args.neighbours + 1, "exact"
    )
    other = sample[sq] != sr
    sq, sr, sd = sq[other], sr[other], sd[other]
    # the search keeps each photo's k closest within the threshold: recall is against the exact k closest of each
    # sampled photo (a found neighbour as close as the exact k-th counts, whatever the tie order)
    found_q, found_d = q, distance
    exact_lists, found_ok = 0, 0
    starts_found = np.searchsorted(found_q, sample)
    ends_found = np.searchsorted(found_q, sample, side="right")
    for s_local in range(len(sample)):
        exact_d = sd[sq == s_local][: args.neighbours]
        if not len(exact_d):
            continue
        got = found_d[starts_found[s_local] : ends_found[s_local]]
        exact_lists += len(exact_d)
        found_ok += min(len(exact_d), int((got <= exact_d.max()).sum()))
    order = rng.permutation(n)
    split = Split(np.sort(order[: n * 3 // 4]), np.sort(order[n * 3 // 4 :]))
    from core.data import ImageDataset, ImageRecord

    dataset = ImageDataset(tuple(ImageRecord(Path(f"/s/x/{k:07d}.png"), "x", "") for k in range(n)), Path("/s"))
    leaks, leak_seconds, leak_rss = timed(find_leaks, dataset, split, hashes, args.threshold, args.neighbours)
    leak_cpu = CPU_SECONDS["find_leaks"]
    from core.dedup import leaks_to_json

    return {
        "images": n,
        "planted_copies": n_copies,
        "load_seconds": load_seconds,
        "make_seconds": make_seconds,
        "search": used,
        "search_seconds": seconds,
        "search_cpu_seconds": search_cpu,
        "search_rss_mb": rss,
        "pairs": len(keys),
        "star_seconds": star_seconds,
        "star_rss_mb": star_rss,
        "planted_recall": float(np.isin(planted, keys).mean()),
        "sample_queries": args.sample_queries,
        "sample_exact_neighbours": exact_lists,
        "sample_recall": found_ok / exact_lists if exact_lists else 1.0,
        "sample_exact_seconds": exact_seconds,
        "leaks": {
            "count": leaks.count,
            "seconds": leak_seconds,
            "cpu_seconds": leak_cpu,
            "rss_mb": leak_rss,
            "json_bytes": len(json.dumps(leaks_to_json(leaks, Path("/s")))),
        },
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.before_after:
        groups = {"before_after": before_after(args), "load_average": os.getloadavg()}
        print(json.dumps(groups, indent=1))
        out = args.out.with_name(f"dedup_groups-{args.data.name}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(groups, indent=2) + "\n")
        return groups
    result: dict[str, Any] = {
        "threshold": args.threshold,
        "neighbours": args.neighbours,
        "load_average_before": os.getloadavg(),
    }
    result["real"] = real_folder(args)
    print(json.dumps(result["real"], indent=1))
    if args.synthetic:
        result["synthetic"] = synthetic(args)
        print(json.dumps(result["synthetic"], indent=1))
    result["load_average_after"] = os.getloadavg()
    result["peak_rss_mb"] = peak_rss_mb()
    print(f"load average before {result['load_average_before']}, after {result['load_average_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
