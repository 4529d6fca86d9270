"""Feature cache after a folder change: what ``FeatureCache.embed`` costs when a gallery of 10^6 cached photos gains
a few new ones (the workspace calls it whenever the folder changed, then keeps the rows in record order).

    .venv/bin/python -m benchmarks.feature_cache                      # 10^6 cached rows, 10 new photos, 128-d
    .venv/bin/python -m benchmarks.feature_cache --n 100000 --dim 1280

The cache is filled with ``--n`` synthetic content hashes and unit rows (one main file, as a finished featurize
leaves it); the records are columns (``RecordColumns``) of those hashes plus ``--new`` real PNG files written to a
temporary folder, embedded by a stand-in featurizer (mean colour), so what is timed is the cache's bookkeeping, not a
network. Steps, each timed with the process's peak RSS and the 1-minute load average beside it:

* ``change 1``: ``embed`` of the ``n`` cached records plus ``--new`` new ones;
* ``change 2``: the same plus ``--new`` more (the first change is cached by then);
* ``unchanged``: ``embed`` of the same records again (nothing to embed).

The rows are 128-d by default so the old code's copies fit the memory budget at 10^6; the cost per row of the
bookkeeping does not depend on the width, the copies of the rows do (``--dim 1280`` for the real width). Writes a
table and ``benchmarks/results/feature_cache.json`` (runs keyed by the code's ``--label``, n, dim and new).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.artifacts import atomic_save_npz, atomic_write_json, environment_versions
from core.data import RecordColumns
from core.featurize import FeatureCache
from core.images import content_hash
from core.preprocessing import Preprocessing

FINGERPRINT = "bench-cache"


class MeanColour:
    """A stand-in featurizer: the mean colour, padded to ``dim`` and normalised."""

    fingerprint = FINGERPRINT

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.preprocessing = Preprocessing(16, 16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        rows = np.zeros((len(pixels), self.dim), np.float32)
        rows[:, :3] = pixels.astype(np.float32).mean((1, 2)) + 1.0
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="cached photos (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=128, help="(default: %(default)s)")
    parser.add_argument("--new", type=int, default=10, help="new photos per change (default: %(default)s)")
    parser.add_argument("--label", default="current", help="name of the code measured (e.g. before, after)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/feature_cache.json"))
    return parser


def load() -> float:
    return round(os.getloadavg()[0], 2)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def new_photos(folder: Path, count: int, start: int) -> tuple[list[str], list[str]]:
    """``count`` small PNGs of distinct colours; their relative paths and content hashes."""
    paths, hashes = [], []
    for number in range(start, start + count):
        path = folder / "new" / f"photo_{number:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (number % 256, (number // 256) % 256, 128)).save(path)
        paths.append(str(path.relative_to(folder)))
        hashes.append(content_hash(path.read_bytes()))
    return paths, hashes


def timed(step: str, cache: FeatureCache, records: RecordColumns, dim: int) -> dict[str, Any]:
    featurizer = MeanColour(dim)
    before = load()
    start = time.perf_counter()
    rows = cache.embed(featurizer, records)
    seconds = time.perf_counter() - start
    assert rows.shape == (len(records), dim)
    return {
        "step": step,
        "records": len(records),
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "load_before": before,
        "load_after": load(),
        "files": len(list(cache.directory.glob(f"{FINGERPRINT}*"))),
    }


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="feature-cache-") as temporary:
        folder = Path(temporary)
        raw = rng.bytes(32 * args.n)  # like SHA-256 digests: uniform bytes
        hashes = np.array([raw[start : start + 32].hex() for start in range(0, len(raw), 32)])
        rows = rng.standard_normal((args.n, args.dim), dtype=np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        cache = FeatureCache(folder / "features")
        atomic_save_npz(cache.path_for(FINGERPRINT), sha256=hashes, embeddings=rows)
        del rows
        cached_paths = [f"old/{number:07d}.png" for number in range(args.n)]
        first_paths, first_hashes = new_photos(folder, args.new, 0)
        second_paths, second_hashes = new_photos(folder, args.new, args.new)
        hashes_list = hashes.tolist()
        labels = ["a"] * (args.n + 2 * args.new)

        def columns(paths: list[str], new_hashes: list[str]) -> RecordColumns:
            return RecordColumns(folder, cached_paths + paths, labels[: args.n + len(paths)], hashes_list + new_hashes)

        once = columns(first_paths, first_hashes)
        twice = columns(first_paths + second_paths, first_hashes + second_hashes)
        results = [
            timed("change 1", cache, once, args.dim),
            timed("change 2", cache, twice, args.dim),
            timed("unchanged", cache, twice, args.dim),
        ]
    print(f"feature cache ({args.label}): {args.n:,} cached rows of {args.dim}-d, {args.new} new photos per change")
    print(f"{'step':<10} {'records':>10} {'seconds':>8} {'peak RSS MB':>12} {'files':>6} {'load':>11}")
    for row in results:
        print(
            f"{row['step']:<10} {row['records']:>10,} {row['seconds']:>8.2f} {row['peak_rss_mb']:>12,} "
            f"{row['files']:>6} {row['load_before']:>5}-{row['load_after']:<5}"
        )
    run_args = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    payload = {
        "args": run_args,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": environment_versions(),
        "results": results,
    }
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = [
        run
        for run in previous.get("runs", [])
        if [run["args"].get(key) for key in ("label", "n", "dim", "new")]
        != [run_args[key] for key in ("label", "n", "dim", "new")]
    ]
    atomic_write_json(args.out, {"runs": [*runs, payload]})
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
