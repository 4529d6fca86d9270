"""Peak memory and time of building a faiss IVF index over a memory-mapped gallery, blockwise vs in one copy.

The gallery is how a workspace holds it at scale: float32 rows memory-mapped from disk
(``features/<fp>.rows-*.npy``). ``blocked`` is today's :class:`core.index.faiss_backend.FaissIndex` (rows transformed
and added ``ADD_BLOCK`` at a time); ``whole`` sets ``ADD_BLOCK`` to the gallery size, which is what the index did
before: one transformed copy of the whole gallery beside the index. Each build runs in its own process, so its peak
RSS is its own. Prints a table, writes ``benchmarks/results/index_build_memory.json``.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/index_build_memory.py --sizes 100000 300000 --whole 100000 300000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 1280
RESULTS = Path("benchmarks/results/index_build_memory.json")


def write_gallery(path: Path, n: int, dim: int = DIM, block: int = 50_000) -> None:
    """``n`` random unit rows as a ``.npy`` file, written a block at a time."""
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    rng = np.random.default_rng(0)
    for start in range(0, n, block):
        part = rng.standard_normal((min(block, n - start), dim), dtype=np.float32)
        rows[start : start + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    rows.flush()
    del rows


def build(path: Path, mode: str) -> dict[str, float]:
    """Build the IVF index in this process; its wall time and peak RSS."""
    from core.index import create_index, faiss_backend
    from core.index.faiss_backend import FaissConfig
    from core.rankers import CosineRanker

    gallery = np.load(path, mmap_mode="r")
    if mode == "whole":
        faiss_backend.ADD_BLOCK = len(gallery)
    start = time.perf_counter()
    index = create_index(FaissConfig(kind="ivf"), "bench", gallery.shape[1], CosineRanker())
    index.add(np.arange(len(gallery)), gallery)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    return {"seconds": seconds, "peak_rss_gb": peak, "n": len(gallery)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 300_000])
    parser.add_argument("--whole", nargs="*", type=int, default=[100_000], help="sizes also built the old way")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(build(Path(args.child[0]), args.child[1])))
        return
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in args.sizes:
            path = Path(folder) / f"gallery-{n}.npy"
            write_gallery(path, n)
            for mode in ("blocked", "whole") if n in args.whole else ("blocked",):
                done = subprocess.run(
                    [sys.executable, __file__, "--child", str(path), mode], capture_output=True, text=True, check=True
                )
                rows.append({**json.loads(done.stdout.strip().splitlines()[-1]), "mode": mode})
            path.unlink()
    print(
        f"IVF index build over a memory-mapped {DIM}-d gallery (load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})"
    )
    print(f"{'rows':>9} {'mode':<8} {'seconds':>8} {'peak RSS GB':>12} {'gallery GB':>11}")
    for row in rows:
        print(
            f"{row['n']:>9} {row['mode']:<8} {row['seconds']:>8.1f} {row['peak_rss_gb']:>12.2f} "
            f"{row['n'] * DIM * 4 / 1e9:>11.2f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"load_average": load, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
