"""Featurizer throughput and peak memory on the demo set: model alone vs the whole file pipeline.

Each configuration runs in its own process (so peak RSS is its own), repeats ``--repeats`` times and
reports the median. Prints a table and writes JSON (default ``benchmarks/results/featurize.json``).

    python benchmarks/featurize.py [--data data/demo] [--repeats 5] [--batch-sizes 1 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=128, help="images per timed run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "featurize.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    return parser


def run_one(args: argparse.Namespace, mode: str, batch_size: int) -> dict:
    """Time one configuration; ``mode`` is ``model`` (preprocessed arrays) or ``files`` (decode + resize + model)."""
    import numpy as np
    import torch

    from core.backbones import build_backbone
    from core.featurize import TorchFeaturizer, embed_files, preprocess
    from core.images import load_image

    paths = sorted(args.data.glob("*/*.jpg"))[: args.images]
    featurizer = TorchFeaturizer(build_backbone(args.backbone), device="cpu")
    arrays = np.stack([preprocess(load_image(path), featurizer.preprocessing) for path in paths])

    def once() -> None:
        if mode == "model":
            for start in range(0, len(arrays), batch_size):
                featurizer.embed_arrays(arrays[start : start + batch_size])
        else:
            embed_files(featurizer, paths, batch_size=batch_size)

    once()  # warm-up
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        once()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "mode": mode,
        "batch_size": batch_size,
        "images": len(paths),
        "median_s": median,
        "images_per_s": len(paths) / median,
        "ms_per_image": 1000 * median / len(paths),
        "runs_s": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }


def main(args: argparse.Namespace) -> None:
    if args.one:
        mode, batch_size = args.one.split(":")
        print(json.dumps(run_one(args, mode, int(batch_size))))
        return
    rows = []
    for batch_size in args.batch_sizes:
        for mode in ("model", "files"):
            command = [sys.executable, __file__, "--one", f"{mode}:{batch_size}", "--data", str(args.data),
                       "--backbone", args.backbone, "--repeats", str(args.repeats), "--images", str(args.images)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
    print(f"{args.backbone} on {platform.processor() or platform.machine()}, median of {args.repeats} runs")
    print(f"{'batch':>5} {'mode':<6} {'images/s':>9} {'ms/image':>9} {'peak MB':>8}")
    for row in rows:
        print(f"{row['batch_size']:>5} {row['mode']:<6} {row['images_per_s']:>9.1f} {row['ms_per_image']:>9.2f} {row['peak_rss_mb']:>8.0f}")
    ratios = {}
    for batch_size in args.batch_sizes:
        model, files = (next(r for r in rows if r["mode"] == m and r["batch_size"] == batch_size) for m in ("model", "files"))
        ratios[str(batch_size)] = files["images_per_s"] / model["images_per_s"]
        print(f"batch {batch_size}: whole file pipeline runs at {ratios[str(batch_size)]:.2f}x the model-only rate")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"backbone": args.backbone, "rows": rows, "files_over_model": ratios}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
