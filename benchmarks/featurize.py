"""PyTorch eager vs onnxruntime on the demo images: model alone and the whole file pipeline.

Modes:
  model   preprocessed batches only (float32 NCHW for PyTorch, uint8 NHWC pixels for onnxruntime)
  files   ``core.featurize.embed_files``: read + decode + resize/crop to uint8 in two threads overlapping
          the model (``embed_pixels``); onnxruntime's idle threads do not spin there, so decoding gets cores

Each configuration runs in its own process (so peak RSS is its own), is warmed up once, repeated
``--repeats`` times and reported as the median. The model is exported once to ``--onnx`` first.
Prints a table and writes JSON (default ``benchmarks/results/featurize.json``, git-ignored).
Timings on a shared machine are noisy: compare medians from one run.

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

CONFIGS = (("torch", "model"), ("onnx", "model"), ("torch", "files"), ("onnx", "files"))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=128, help="images per timed run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=0, help="model threads (0: library default)")
    parser.add_argument("--onnx", type=Path, default=ROOT / "benchmarks" / "results" / "featurize.onnx")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "featurize.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: backend:mode:batch in this process
    return parser


def peak_rss_mb() -> float:
    """This process's peak resident memory; ``VmHWM`` on Linux, as ``ru_maxrss`` survives ``exec`` from a big parent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def run_one(args: argparse.Namespace, backend: str, mode: str, batch_size: int) -> dict:
    """Time one configuration in this process."""
    import numpy as np

    from core.featurize import embed_files
    from core.images import load_image
    from core.preprocessing import preprocess, resize_crop

    paths = sorted(args.data.glob("*/*.jpg"))[: args.images]
    if backend == "torch":
        import torch

        from core.backbones import build_backbone
        from core.featurize import TorchFeaturizer

        if args.threads:
            torch.set_num_threads(args.threads)
        featurizer = TorchFeaturizer(build_backbone(args.backbone), device="cpu")
        threads = torch.get_num_threads()
    else:
        from export.onnx_featurizer import OnnxFeaturizer, OrtConfig

        featurizer = OnnxFeaturizer(args.onnx, OrtConfig(intra_op_threads=args.threads, allow_spinning=mode == "model"))
        threads = args.threads
    spec = featurizer.preprocessing
    images = [load_image(path, draft_size=spec.resize_size) for path in paths]
    if backend == "torch":
        inputs = np.stack([preprocess(image, spec) for image in images])
        embed_batch = featurizer.embed_arrays
    else:
        inputs = np.stack([resize_crop(image, spec) for image in images])
        embed_batch = featurizer.embed_pixels

    def once() -> None:
        if mode == "model":
            for start in range(0, len(inputs), batch_size):
                embed_batch(inputs[start : start + batch_size])
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
        "backend": backend,
        "mode": mode,
        "batch_size": batch_size,
        "images": len(paths),
        "median_s": median,
        "images_per_s": len(paths) / median,
        "ms_per_image": 1000 * median / len(paths),
        "runs_s": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "threads": threads,
    }


def _export(args: argparse.Namespace) -> dict:
    from core.backbones import build_backbone
    from export.onnx_export import export_onnx

    result = export_onnx(build_backbone(args.backbone), args.onnx)
    return {
        "path": str(result.path),
        "max_abs_diff": result.validation.max_abs_diff,
        "min_cosine": result.validation.min_cosine,
    }


def main(args: argparse.Namespace) -> None:
    if args.one:
        backend, mode, batch_size = args.one.split(":")
        print(json.dumps(run_one(args, backend, mode, int(batch_size))))
        return
    export = _export(args)
    rows = []
    for batch_size in args.batch_sizes:
        for backend, mode in CONFIGS:
            command = [
                sys.executable,
                __file__,
                "--one",
                f"{backend}:{mode}:{batch_size}",
                "--data",
                str(args.data),
                "--backbone",
                args.backbone,
                "--repeats",
                str(args.repeats),
                "--images",
                str(args.images),
                "--threads",
                str(args.threads),
                "--onnx",
                str(args.onnx),
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"  {backend:<5} {mode:<6} batch {batch_size:>2}: {row['images_per_s']:.1f} img/s", file=sys.stderr)

    def rate(backend: str, mode: str, batch_size: int) -> float:
        return next(
            r["images_per_s"] for r in rows if (r["backend"], r["mode"], r["batch_size"]) == (backend, mode, batch_size)
        )

    print(
        f"{args.backbone} on {platform.processor() or platform.machine()}, {args.images} images, median of {args.repeats} runs"
    )
    print(f"{'backend':<8}{'mode':<7}{'batch':>5} {'images/s':>9} {'ms/image':>9} {'peak MB':>8}")
    for row in rows:
        print(
            f"{row['backend']:<8}{row['mode']:<7}{row['batch_size']:>5} {row['images_per_s']:>9.1f} "
            f"{row['ms_per_image']:>9.2f} {row['peak_rss_mb']:>8.0f}"
        )
    ratios = {}
    for batch_size in args.batch_sizes:
        ratios[str(batch_size)] = {
            "onnx_over_torch_model": rate("onnx", "model", batch_size) / rate("torch", "model", batch_size),
            "onnx_over_torch_files": rate("onnx", "files", batch_size) / rate("torch", "files", batch_size),
            "onnx_files_over_onnx_model": rate("onnx", "files", batch_size) / rate("onnx", "model", batch_size),
        }
        print(
            f"batch {batch_size}: " + ", ".join(f"{key} {value:.2f}x" for key, value in ratios[str(batch_size)].items())
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from core.artifacts import atomic_write_json

    atomic_write_json(args.out, {"backbone": args.backbone, "export": export, "rows": rows, "ratios": ratios})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
