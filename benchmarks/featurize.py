"""PyTorch, onnxruntime float32 and onnxruntime int8 on the demo images: model alone and the whole file pipeline.

Back ends: ``torch`` (eager, channels-last), ``onnx`` (the exported float32 model), ``int8`` (that model
statically quantized, calibrated on the demo images: ``export.quantize``).
Modes:
  model     preprocessed batches only (float32 NCHW for PyTorch, uint8 NHWC pixels for onnxruntime), one batch
            at a time on onnxruntime's default threads (one per core, spinning)
  parallel  onnxruntime only: the same batches as the file pipeline runs them (``core.featurize.
            embed_pixel_batches``): each split over one single-threaded run per core, the next batch queued
  files     ``core.featurize.embed_files``: read + hash + decode (JPEG draft mode) + resize of the crop to uint8
            in a pool of one thread per core, running ahead of that model side

Each configuration runs in its own process (so peak RSS is its own), is warmed up once, repeated
``--repeats`` times; with ``--rounds`` > 1 the configurations are run in turn that many times, so a busy
spell of a shared machine hits all of them alike. The figure is the median of all runs.
Prints a table with ratios to the PyTorch model and to the onnxruntime model, the CPU-bound ceiling of the file
pipeline (cores / (model CPU + decode CPU) per image: decoding on a CPU takes cores from the model), and writes JSON (default
``benchmarks/results/featurize.json``, git-ignored). Compare ratios from one run.

    python benchmarks/featurize.py [--data data/demo] [--repeats 5] [--rounds 3] [--batch-sizes 1 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = (
    ("torch", "model"),
    ("onnx", "model"),
    ("onnx", "parallel"),
    ("onnx", "files"),
    ("int8", "model"),
    ("int8", "parallel"),
    ("int8", "files"),
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="times each configuration's process is run, in turn")
    parser.add_argument("--with-torch-files", action="store_true", help="also time PyTorch on files")
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

    from core.featurize import Featurizer, embed_files, embed_pixel_batches
    from core.images import load_image
    from core.preprocessing import preprocess, resize_crop

    paths = sorted(args.data.glob("*/*.jpg"))[: args.images]
    featurizer: Featurizer
    embed_batch: Callable[[np.ndarray], np.ndarray]
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

        model_path = args.onnx if backend == "onnx" else int8_path(args)
        config = OrtConfig(intra_op_threads=args.threads, allow_spinning=mode == "model")
        featurizer = OnnxFeaturizer(model_path, config)
        threads = 1 if mode != "model" else args.threads
    spec = featurizer.preprocessing
    images = [load_image(path, draft_size=spec.resize_size) for path in paths]
    if backend == "torch":
        inputs = np.stack([preprocess(image, spec) for image in images])
        embed_batch = featurizer.embed_arrays
    else:
        inputs = np.stack([resize_crop(image, spec) for image in images])
        embed_batch = featurizer.embed_pixels

    def once() -> None:
        batches = [inputs[start : start + batch_size] for start in range(0, len(inputs), batch_size)]
        if mode == "model":
            for batch in batches:
                embed_batch(batch)
        elif mode == "parallel":
            list(embed_pixel_batches(featurizer, batches))
        else:
            embed_files(featurizer, paths, batch_size=batch_size)

    once()  # warm-up
    seconds, cpu_seconds = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        once()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
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
        # CPU time (all threads) per image: what a busy shared machine distorts least
        "cpu_ms_per_image": 1000 * statistics.median(cpu_seconds) / len(paths),
        "peak_rss_mb": peak_rss_mb(),
        "threads": threads,
    }


def stage_costs(args: argparse.Namespace, repeats: int = 15) -> dict[str, float]:
    """Median single-thread CPU microseconds per image of each file-pipeline stage (``core.featurize.read_and_prepare``).

    One thread, no model running: what each stage costs, and what a shared machine distorts least.
    """
    import numpy as np

    from core.backbones import build_backbone
    from core.featurize import read_and_prepare
    from core.images import content_hash, decode_image, read_image_file
    from core.preprocessing import resize_crop

    spec = build_backbone(args.backbone).preprocessing
    paths = sorted(args.data.glob("*/*.jpg"))[: args.images]
    data = [read_image_file(path) for path in paths]
    images = [decode_image(item, draft_size=spec.resize_size) for item in data]
    stages: dict[str, Callable[[], object]] = {
        "read": lambda: [read_image_file(path) for path in paths],
        "hash": lambda: [content_hash(item) for item in data],
        "decode": lambda: [decode_image(item, draft_size=spec.resize_size) for item in data],
        "resize_crop": lambda: [resize_crop(image, spec) for image in images],
        "read_and_prepare": lambda: np.stack([read_and_prepare(path, spec)[1] for path in paths]),
    }
    costs: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(repeats):  # interleaved, so a busy spell hits every stage alike
        for name, stage in stages.items():
            start = time.process_time()
            stage()
            costs[name].append(time.process_time() - start)
    return {name: 1e6 * statistics.median(values) / len(paths) for name, values in costs.items()}


def int8_path(args: argparse.Namespace) -> Path:
    return args.onnx.with_name(args.onnx.stem + "-int8.onnx")


def _export(args: argparse.Namespace) -> dict:
    import numpy as np

    from core.backbones import build_backbone
    from core.images import load_image
    from core.preprocessing import resize_crop
    from export.onnx_export import export_onnx
    from export.quantize import quantize_static_onnx

    backbone = build_backbone(args.backbone)
    result = export_onnx(backbone, args.onnx)
    spec = backbone.preprocessing
    calibration = sorted(args.data.glob("*/*.jpg"))[::4][:64]
    pixels = np.stack([resize_crop(load_image(path, draft_size=spec.resize_size), spec) for path in calibration])
    quantize_static_onnx(args.onnx, int8_path(args), pixels)
    return {
        "path": str(result.path),
        "max_abs_diff": result.validation.max_abs_diff,
        "min_cosine": result.validation.min_cosine,
        "int8_path": str(int8_path(args)),
        "int8_calibration_images": len(pixels),
    }


def main(args: argparse.Namespace) -> None:
    if args.one:
        backend, mode, batch_size = args.one.split(":")
        print(json.dumps(run_one(args, backend, mode, int(batch_size))))
        return
    load_before = os.getloadavg()
    export = _export(args)
    stages = stage_costs(args)
    configs = [*CONFIGS, *((("torch", "files"),) if args.with_torch_files else ())]
    runs: dict[tuple[str, str, int], list[dict]] = {}
    for _ in range(args.rounds):
        for batch_size in args.batch_sizes:
            for backend, mode in configs:
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
                row = json.loads(output.strip().splitlines()[-1])
                runs.setdefault((backend, mode, batch_size), []).append(row)
                print(
                    f"  {backend:<5} {mode:<6} batch {batch_size:>2}: {row['images_per_s']:.1f} img/s", file=sys.stderr
                )
    rows = []
    for results in runs.values():
        seconds = [s for result in results for s in result["runs_s"]]
        median = statistics.median(seconds)
        images = results[0]["images"]
        rows.append(
            {
                **results[0],
                "median_s": median,
                "images_per_s": images / median,
                "ms_per_image": 1000 * median / images,
                "runs_s": seconds,
                "peak_rss_mb": max(result["peak_rss_mb"] for result in results),
                "cpu_ms_per_image": statistics.median(result["cpu_ms_per_image"] for result in results),
            }
        )

    def rate(backend: str, mode: str, batch_size: int) -> float:
        return next(
            r["images_per_s"] for r in rows if (r["backend"], r["mode"], r["batch_size"]) == (backend, mode, batch_size)
        )

    def files_ceiling(backend: str, batch_size: int) -> float:
        model_cpu_ms = next(
            r["cpu_ms_per_image"]
            for r in rows
            if (r["backend"], r["mode"], r["batch_size"]) == (backend, "parallel", batch_size)
        )
        return 1000 * (os.cpu_count() or 1) / (model_cpu_ms + stages["read_and_prepare"] / 1000)

    print(
        f"{args.backbone} on {platform.processor() or platform.machine()} ({os.cpu_count()} cores), {args.images} images, "
        f"median of {args.rounds} x {args.repeats} runs"
    )
    print(
        f"{'backend':<8}{'mode':<7}{'batch':>5} {'images/s':>9} {'ms/image':>9} {'peak MB':>8} {'/torch model':>13} "
        f"{'/onnx model':>12} {'CPU ms/img':>11}"
    )
    for row in rows:
        batch_size = row["batch_size"]
        print(
            f"{row['backend']:<8}{row['mode']:<7}{batch_size:>5} {row['images_per_s']:>9.1f} "
            f"{row['ms_per_image']:>9.2f} {row['peak_rss_mb']:>8.0f} "
            f"{row['images_per_s'] / rate('torch', 'model', batch_size):>12.2f}x "
            f"{row['images_per_s'] / rate('onnx', 'model', batch_size):>11.2f}x {row['cpu_ms_per_image']:>11.2f}"
        )
    ratios = {}
    for batch_size in args.batch_sizes:
        ratios[str(batch_size)] = {
            "onnx_model_over_torch_model": rate("onnx", "model", batch_size) / rate("torch", "model", batch_size),
            "onnx_files_over_onnx_model": rate("onnx", "files", batch_size) / rate("onnx", "model", batch_size),
            "int8_model_over_onnx_model": rate("int8", "model", batch_size) / rate("onnx", "model", batch_size),
            "onnx_parallel_over_onnx_model": rate("onnx", "parallel", batch_size) / rate("onnx", "model", batch_size),
            "onnx_files_over_onnx_parallel": rate("onnx", "files", batch_size) / rate("onnx", "parallel", batch_size),
            "int8_files_over_int8_model": rate("int8", "files", batch_size) / rate("int8", "model", batch_size),
            "int8_files_over_int8_parallel": rate("int8", "files", batch_size) / rate("int8", "parallel", batch_size),
            "int8_files_over_onnx_files": rate("int8", "files", batch_size) / rate("onnx", "files", batch_size),
            # On a CPU the decoders and the model share the cores, so files can go at most cores / (model CPU +
            # decode CPU) per image: the ceiling the pipeline's ratio to the bare model is bounded by.
            "onnx_files_ceiling_over_onnx_model": files_ceiling("onnx", batch_size) / rate("onnx", "model", batch_size),
            "onnx_files_over_ceiling": rate("onnx", "files", batch_size) / files_ceiling("onnx", batch_size),
        }
        print(
            f"batch {batch_size}: " + ", ".join(f"{key} {value:.2f}x" for key, value in ratios[str(batch_size)].items())
        )
    print(
        "file stages, one thread, median CPU us/image: "
        + ", ".join(f"{name} {value:.0f}" for name, value in stages.items())
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from core.artifacts import atomic_write_json

    atomic_write_json(
        args.out,
        {
            "backbone": args.backbone,
            "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "export": export,
            "stage_cpu_us_per_image": stages,
            "rows": rows,
            "ratios": ratios,
        },
    )
    print(f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; wrote {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
