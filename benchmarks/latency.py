"""Search latency for one uploaded photo: decode + embed (onnxruntime) + rank a gallery, p50/p99 per stage.

What the app and the REST service do per query, in one process with the model loaded: the upload's bytes are
decoded (``core.images.decode_image``, JPEG draft mode towards the model's resize size), the centre crop is
resized to uint8 (``core.preprocessing.resize_crop``), embedded by onnxruntime at batch 1 (the featurizer from
``export.onnx_export.onnx_featurizer_for``: the default path, exported once and cached) and ranked against a
gallery of random unit vectors of the model's dimension (``--gallery``, default 10^4) with cosine, both by
``core.rankers.top_k`` and by the exact index. Uploads: a demo photo (320 px) and the same photo re-encoded
as a 12-megapixel phone JPEG (4032x3024).

Prints a table and writes JSON (default ``benchmarks/results/latency.json``, git-ignored). The two compared
ways: spinning vs non-spinning onnxruntime threads (``OrtConfig.allow_spinning``).

    python benchmarks/latency.py [--queries 200] [--gallery 10000] [--k 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import platform
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
    parser.add_argument("--queries", type=int, default=200, help="timed queries per configuration (>= 100)")
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "results" / "onnx-cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json")
    return parser


def percentiles(values_ms: list[float]) -> dict[str, float]:
    array = np.asarray(values_ms)
    return {"p50": float(np.percentile(array, 50)), "p99": float(np.percentile(array, 99)), "mean": float(array.mean())}


def phone_jpeg(path: Path) -> bytes:
    """A demo photo upscaled to 4032x3024 and saved as a quality-90 JPEG, like a phone upload."""
    from PIL import Image

    with Image.open(path) as image:
        big = image.convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main(args: argparse.Namespace) -> None:
    from core.artifacts import atomic_write_json
    from core.backbones import build_backbone
    from core.images import decode_image
    from core.index.exact import ExactIndex
    from core.preprocessing import resize_crop
    from core.rankers import CosineRanker, top_k
    from export.onnx_export import onnx_featurizer_for
    from export.onnx_featurizer import OnnxFeaturizer

    if args.queries < 100:
        raise SystemExit("--queries must be at least 100 for a p99")
    rng = np.random.default_rng(args.seed)
    default = onnx_featurizer_for(build_backbone(args.backbone), args.cache)
    spec = default.preprocessing
    dim = default.metadata.feature_dim
    gallery = rng.normal(size=(args.gallery, dim)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    index = ExactIndex(default.fingerprint, dim)
    index.add(np.arange(args.gallery), gallery)
    ranker = CosineRanker()
    paths = sorted(args.data.glob("*/*.jpg"))
    uploads = {
        "demo photo": [paths[i].read_bytes() for i in rng.choice(len(paths), 16, replace=False)],
        "12 Mpx phone JPEG": [phone_jpeg(paths[i]) for i in rng.choice(len(paths), 4, replace=False)],
    }
    engines = {
        "non-spinning (default)": default,
        "spinning": OnnxFeaturizer(default.path, dataclasses.replace(default.config, allow_spinning=True)),
    }
    rows = []
    for upload_name, blobs in uploads.items():
        for engine_name, featurizer in engines.items():
            for rank_name in ("top_k", "exact index"):
                stages: dict[str, list[float]] = {"decode": [], "embed": [], "rank": [], "total": []}
                for query in range(args.queries + 5):  # the first 5 warm up
                    data = blobs[query % len(blobs)]
                    start = time.perf_counter()
                    pixels = resize_crop(decode_image(data, "upload.jpg", draft_size=spec.resize_size), spec)
                    decoded = time.perf_counter()
                    embedding = featurizer.embed_pixels(pixels[None])
                    embedded = time.perf_counter()
                    if rank_name == "top_k":
                        top_k(ranker, embedding, gallery, args.k)
                    else:
                        index.search(embedding, args.k, ranker)
                    ranked = time.perf_counter()
                    if query >= 5:
                        for name, seconds in (
                            ("decode", decoded - start),
                            ("embed", embedded - decoded),
                            ("rank", ranked - embedded),
                            ("total", ranked - start),
                        ):
                            stages[name].append(1000 * seconds)
                row: dict[str, Any] = {
                    "upload": upload_name,
                    "engine": engine_name,
                    "ranking": rank_name,
                    **{name: percentiles(values) for name, values in stages.items()},
                }
                rows.append(row)
                print(
                    f"  {upload_name} / {engine_name} / {rank_name}: p50 {row['total']['p50']:.1f} ms", file=sys.stderr
                )
    print(
        f"{args.backbone}, gallery {args.gallery} x {dim}, k={args.k}, {args.queries} queries each, "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}"
    )
    header = f"{'upload':<19}{'onnxruntime threads':<24}{'ranking':<13}"
    header += "".join(f"{stage + ' p50/p99 ms':>22}" for stage in ("decode", "embed", "rank", "total"))
    print(header)
    for row in rows:
        cells = "".join(
            f"{row[stage]['p50']:>13.1f} /{row[stage]['p99']:>6.1f}" for stage in ("decode", "embed", "rank", "total")
        )
        print(f"{row['upload']:<19}{row['engine']:<24}{row['ranking']:<13}{cells}")
    atomic_write_json(
        args.out,
        {
            "backbone": args.backbone,
            "gallery": args.gallery,
            "dim": dim,
            "k": args.k,
            "queries": args.queries,
            "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "load_average_after": os.getloadavg(),
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
