"""int8 vs float32 featurizer quality on the demo test sets, and the speed-up, in one run.

The float32 model (exported once, ``export.onnx_export.onnx_featurizer_for``) is quantized with
``export.quantize``: static (calibrated on the *training* side of the split, so the test images stay unseen;
min-max and 99.99th-percentile ranges) and dynamic. Every model embeds the whole demo set; the cosine
ranker is evaluated on the test comparative sets (top-1 and top-5, ``core.evaluate.evaluate``) and by
full-gallery retrieval with each test image as a query (recall@1 and MAP@R, ``core.evaluate.evaluate_retrieval``).
Speed: model alone, batch 32, the median of ``--repeats`` runs per model, models run in turn.
Prints a table (differences in points against float32) and writes JSON
(default ``benchmarks/results/quantize.json``, git-ignored).

    python benchmarks/quantize.py [--data data/demo] [--calibration-images 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", type=Path, default=ROOT / "benchmarks" / "results" / "quantize")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantize.json")
    return parser


def main(args: argparse.Namespace) -> None:
    from core.artifacts import atomic_write_json
    from core.backbones import build_backbone
    from core.config import DataConfig
    from core.evaluate import evaluate, evaluate_retrieval
    from core.featurize import embed_files, read_and_prepare
    from core.pipeline import prepare
    from core.rankers import CosineRanker
    from export.onnx_export import onnx_featurizer_for
    from export.onnx_featurizer import OnnxFeaturizer, OrtConfig
    from export.quantize import quantize_dynamic_onnx, quantize_static_onnx

    prepared = prepare(DataConfig(root=args.data, seed=args.seed))
    records = prepared.dataset.records
    labels = prepared.dataset.label_array
    paths = [record.path for record in records]
    float_model = onnx_featurizer_for(build_backbone(args.backbone), args.folder)
    spec = float_model.preprocessing
    rng = np.random.default_rng(args.seed)
    train = rng.permutation(prepared.split.train)[: args.calibration_images]
    calibration = np.stack([read_and_prepare(paths[i], spec)[1] for i in train])
    models = {"float32": float_model.path}
    for calibration_method in ("minmax", "percentile"):
        target = args.folder / f"int8-static-{calibration_method}.onnx"
        quantize_static_onnx(float_model.path, target, calibration, calibration=calibration_method)
        models[f"int8 static {calibration_method}"] = target
    quantize_dynamic_onnx(float_model.path, args.folder / "int8-dynamic.onnx")
    models["int8 dynamic"] = args.folder / "int8-dynamic.onnx"

    ranker = CosineRanker()
    pixels = np.stack([read_and_prepare(path, spec)[1] for path in paths[:128]])
    featurizers = {name: OnnxFeaturizer(path, OrtConfig()) for name, path in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for featurizer in featurizers.values():
        featurizer.embed_pixels(pixels[:32])  # warm-up
    for _ in range(args.repeats):
        for name, featurizer in featurizers.items():
            start = time.perf_counter()
            for offset in range(0, len(pixels), 32):
                featurizer.embed_pixels(pixels[offset : offset + 32])
            seconds[name].append(time.perf_counter() - start)
    rows: list[dict[str, Any]] = []
    reference = None
    for name, featurizer in featurizers.items():
        embeddings = embed_files(featurizer, paths, batch_size=32)
        if reference is None:
            reference = embeddings
        sets_result = evaluate(ranker, embeddings, labels, prepared.test_sets, np.random.default_rng(args.seed))
        retrieval = evaluate_retrieval(ranker, embeddings, labels, prepared.split.test)
        rows.append(
            {
                "model": name,
                "images_per_s": len(pixels) / statistics.median(seconds[name]),
                "top1": sets_result.top1.value,
                "top5": sets_result.top5.value,
                "recall@1": retrieval.metrics["recall@1"],
                "map@r": retrieval.metrics["map@r"],
                "min_cosine_to_float32": float(np.min(np.sum(embeddings * reference, axis=1))),
                "n_test_queries": sets_result.n_queries,
                "n_retrieval_queries": retrieval.n_queries,
            }
        )
        print(f"  {name}: done", file=sys.stderr)
    base = rows[0]
    print(
        f"{args.backbone} on {args.data.name}: {len(records)} images, {base['n_test_queries']} comparative-set queries "
        f"x (1 + {prepared.test_sets.n_negatives}), {base['n_retrieval_queries']} retrieval queries; "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'model':<26}{'img/s':>7}{'speed-up':>9}{'top-1':>8}{'top-5':>8}{'R@1':>8}{'MAP@R':>8}  points vs float32 (top-1, R@1, MAP@R)  min cos"
    )
    for row in rows:
        deltas = [100 * (row[key] - base[key]) for key in ("top1", "recall@1", "map@r")]
        print(
            f"{row['model']:<26}{row['images_per_s']:>7.1f}{row['images_per_s'] / base['images_per_s']:>8.2f}x"
            f"{100 * row['top1']:>8.1f}{100 * row['top5']:>8.1f}{100 * row['recall@1']:>8.1f}{100 * row['map@r']:>8.1f}"
            f"  {deltas[0]:+6.1f} {deltas[1]:+6.1f} {deltas[2]:+6.1f}                 {row['min_cosine_to_float32']:.4f}"
        )
        row["points_vs_float32"] = dict(zip(("top1", "recall@1", "map@r"), deltas, strict=True))
    atomic_write_json(
        args.out,
        {
            "backbone": args.backbone,
            "data": str(args.data),
            "calibration_images": len(calibration),
            "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "load_average_after": os.getloadavg(),
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
