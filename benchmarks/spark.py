"""Spark local-mode featurization vs the single-process featurizer on the demo set: parity and throughput.

Both run the same exported ONNX model (``artifacts/onnx/pretrained.onnx`` here, exported first when missing)
over every demo photo. Single process: ``core.featurize.embed_files`` (2 decode threads overlapping
onnxruntime). Spark: ``workbench.spark_job.featurize_with_spark`` on ``local[2]`` with one session for all
repeats (session start-up and the first, cold job are reported separately). Reports images/s (median of
``--repeats`` runs) and the largest absolute difference of the embeddings after joining by path.
JSON to ``benchmarks/results/spark.json``.

    .venv/bin/python benchmarks/spark.py [--repeats 3] [--partitions 4] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--onnx", type=Path, default=ROOT / "artifacts" / "onnx" / "pretrained.onnx")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "spark.json")
    return parser


def main(args: argparse.Namespace) -> int:
    from core.featurize import embed_files
    from export.onnx_featurizer import OnnxFeaturizer, OrtConfig
    from workbench.spark_job import SparkJobConfig, featurize_with_spark, read_embeddings, spark_session

    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    if not args.onnx.is_file():
        from core.backbones import build_backbone
        from export.onnx_export import export_onnx

        export_onnx(build_backbone("efficientnet_lite0"), args.onnx)
    paths = sorted(path.resolve() for path in args.data.glob("*/*.jpg"))
    n = len(paths)

    featurizer = OnnxFeaturizer(args.onnx, OrtConfig(allow_spinning=False))
    single_seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        single = embed_files(featurizer, paths, batch_size=args.batch_size)
        single_seconds.append(time.perf_counter() - start)

    config = SparkJobConfig(master=args.master, partitions=args.partitions, batch_size=args.batch_size)
    start = time.perf_counter()
    session = spark_session(config)
    session_seconds = time.perf_counter() - start
    spark_seconds, cold_seconds, max_abs_diff = [], None, 0.0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for repeat in range(args.repeats + 1):  # the first run starts the Python workers: reported as cold
                start = time.perf_counter()
                result = featurize_with_spark(
                    paths, args.onnx, Path(tmp) / "out.parquet", args.partitions, args.batch_size, spark=session
                )
                seconds = time.perf_counter() - start
                if repeat == 0:
                    cold_seconds = seconds
                else:
                    spark_seconds.append(seconds)
                spark_paths, spark_embeddings, errors = read_embeddings(result.path)
                assert spark_paths == [str(p) for p in paths] and not any(errors), "rows missing or failed"
                max_abs_diff = max(max_abs_diff, float(np.abs(spark_embeddings - single).max()))
    finally:
        session.stop()

    single_median, spark_median = statistics.median(single_seconds), statistics.median(spark_seconds)
    report = {
        "images": n,
        "onnx": str(args.onnx.relative_to(ROOT) if args.onnx.is_relative_to(ROOT) else args.onnx),
        "fingerprint": featurizer.fingerprint,
        "batch_size": args.batch_size,
        "single_process": {
            "seconds": [round(s, 3) for s in single_seconds],
            "median_images_per_second": round(n / single_median, 1),
        },
        "spark": {
            "master": args.master,
            "partitions": args.partitions,
            "session_start_seconds": round(session_seconds, 2),
            "cold_job_seconds": round(cold_seconds, 2),
            "seconds": [round(s, 3) for s in spark_seconds],
            "median_images_per_second": round(n / spark_median, 1),
            "note": "job time includes writing Parquet and counting the written rows",
        },
        "max_abs_diff": max_abs_diff,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{n} images, batch {args.batch_size}; max |spark - single| = {max_abs_diff:.2e}")
    print(f"single process embed_files : {n / single_median:6.1f} img/s (median of {args.repeats})")
    print(
        f"spark {args.master} x{args.partitions} parts: {n / spark_median:6.1f} img/s (median of {args.repeats}; "
        f"session start {session_seconds:.1f} s, cold first job {cold_seconds:.1f} s)"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
