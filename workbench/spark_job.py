"""Distributed batch featurization on Apache Spark: image paths in, embeddings in Parquet out.

For collections too large for one machine. The exported ONNX featurizer (see :mod:`export.onnx_export`)
is the unit of work: the ``.onnx`` file carries its whole contract (normalisation in the graph, resize
and crop settings in its metadata), so every executor computes exactly what the single-machine
featurizer computes. The job

1. builds a DataFrame of image paths (one ``path`` column; :func:`featurize_dataframe` takes any such
   DataFrame, e.g. read from a Parquet or text listing of billions of files);
2. runs ``mapInPandas`` over it: each Python worker loads the ONNX featurizer **once** (a lazily filled,
   module-level cache keyed by model path; Spark reuses Python workers between tasks) and turns
   Arrow batches of paths into rows of ``path, sha256, embedding array<float>, error``;
3. writes Parquet to a temporary folder beside the target and renames it into place, with a
   ``_workbench.json`` manifest (model fingerprint, counts, versions).

A file that cannot be decoded does not fail the job: its row has a null embedding and the
``ImageLoadError`` message in ``error``.

Spark here runs in local mode (``local[2]``) bound to 127.0.0.1 with its web UI off; the same function runs
on a cluster when given a ``SparkSession`` built for one (the model file and this package must then be
readable by the executors).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from export.onnx_featurizer import OnnxFeaturizer

log = logging.getLogger(__name__)

#: Spark SQL schema of the output rows.
OUTPUT_SCHEMA = "path string, sha256 string, embedding array<float>, error string"
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SparkJobConfig:
    """How the job runs.

    Attributes:
        master: Spark master URL; ``local[N]`` runs N tasks at once in this machine.
        partitions: Partitions of the path list (tasks); a few per core balances slow files.
        batch_size: Images per onnxruntime call inside a task.
        onnx_threads: onnxruntime intra-op threads per task (1: Spark's tasks already fill the cores).
        driver_memory: JVM heap of the driver (in local mode also the executor).
    """

    master: str = "local[2]"
    partitions: int = 4
    batch_size: int = 16
    onnx_threads: int = 1
    driver_memory: str = "2g"


@dataclass(frozen=True)
class SparkFeaturizeResult:
    """What a job wrote."""

    path: Path
    fingerprint: str
    n_images: int
    n_failed: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("nan")


def spark_session(config: SparkJobConfig = SparkJobConfig()) -> SparkSession:
    """A Spark session bound to 127.0.0.1, web UI off, Python workers on this interpreter and code.

    Raises:
        RuntimeError: pyspark is not installed or Java cannot be started.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as err:
        raise RuntimeError("pyspark is not installed: pip install -r requirements-spark.txt") from err
    # Python workers must find this repository's packages and use this interpreter (the venv).
    python_path = os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONPATH"] = python_path
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(config.master)
        .appName("workbench-featurize")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", config.driver_memory)
        .config("spark.executorEnv.PYTHONPATH", python_path)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.shuffle.partitions", str(max(1, config.partitions)))
        .config("spark.python.worker.reuse", "true")
    )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


@functools.lru_cache(maxsize=2)
def _worker_featurizer(onnx_path: str, threads: int) -> OnnxFeaturizer:
    """The featurizer of a Python worker: loaded on its first task, reused by its later ones."""
    from export.onnx_featurizer import OnnxFeaturizer, OrtConfig

    return OnnxFeaturizer(onnx_path, OrtConfig(intra_op_threads=threads, allow_spinning=False))


def embed_partition(
    batches: Iterator[pd.DataFrame], onnx_path: str, batch_size: int, threads: int
) -> Iterator[pd.DataFrame]:
    """The ``mapInPandas`` function: frames with a ``path`` column into :data:`OUTPUT_SCHEMA` frames.

    Reads each file once (the bytes give both the SHA-256 and the image), decodes and resizes it exactly
    as :func:`core.featurize.embed_files` does, and embeds ``batch_size`` images per onnxruntime call.
    """
    import pandas as pd

    from core.errors import ImageLoadError
    from core.images import content_hash, decode_image
    from core.preprocessing import resize_crop

    featurizer = _worker_featurizer(onnx_path, threads)
    preprocessing = featurizer.preprocessing
    for frame in batches:
        paths = frame["path"].tolist()
        hashes: list[str | None] = [None] * len(paths)
        errors: list[str | None] = [None] * len(paths)
        embeddings: list[np.ndarray | None] = [None] * len(paths)
        for start in range(0, len(paths), batch_size):
            good, pixels = [], []
            for index in range(start, min(start + batch_size, len(paths))):
                path = paths[index]
                try:
                    data = Path(path).read_bytes()
                except OSError as err:
                    errors[index] = f"{path}: cannot read file ({err.strerror or err})"
                    continue
                hashes[index] = content_hash(data)
                try:
                    image = decode_image(data, name=str(path), draft_size=preprocessing.resize_size)
                except ImageLoadError as err:
                    errors[index] = str(err)
                    continue
                good.append(index)
                pixels.append(resize_crop(image, preprocessing))
            if pixels:
                for index, vector in zip(good, featurizer.embed_pixels(np.stack(pixels)), strict=True):
                    embeddings[index] = vector
        yield pd.DataFrame({"path": paths, "sha256": hashes, "embedding": embeddings, "error": errors})


def featurize_dataframe(
    paths: DataFrame, onnx_path: str | Path, config: SparkJobConfig = SparkJobConfig()
) -> DataFrame:
    """Embeddings of a DataFrame's ``path`` column, lazily (nothing runs until it is written or collected).

    Args:
        paths: Any DataFrame with a string ``path`` column readable by the executors.
        onnx_path: An exported featurizer, readable by the executors.
        config: Partitioning, batch size and onnxruntime threads.
    """
    model, batch_size, threads = str(Path(onnx_path).resolve()), config.batch_size, config.onnx_threads

    def embed(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        return embed_partition(batches, model, batch_size, threads)

    return paths.select("path").repartition(max(1, config.partitions)).mapInPandas(embed, OUTPUT_SCHEMA)


def featurize_with_spark(
    image_paths: Sequence[str | Path],
    onnx_path: str | Path,
    out_parquet: str | Path,
    partitions: int = 4,
    batch_size: int = 16,
    spark: SparkSession | None = None,
    config: SparkJobConfig | None = None,
) -> SparkFeaturizeResult:
    """Embed image files with Spark and write ``path, sha256, embedding, error`` rows to Parquet.

    The output folder is written beside the target and renamed into place, so an interrupted job never
    leaves a half-written table; ``<out>/_workbench.json`` records the model and counts.

    Args:
        image_paths: Image files (absolute paths are stored as given, resolved).
        onnx_path: Exported featurizer (``python -m workbench export``).
        out_parquet: Output folder (replaced if it exists).
        partitions: Spark partitions (tasks) of the path list.
        batch_size: Images per onnxruntime call.
        spark: An existing session (e.g. a cluster's); default: a local one from ``config``, stopped at the end.
        config: Session and job settings; ``partitions`` and ``batch_size`` override its fields.

    Raises:
        ArtifactError: The ONNX model is missing or unusable (checked on the driver before starting).
    """
    import dataclasses

    from core.artifacts import atomic_write_json, environment_versions
    from export.onnx_featurizer import OnnxFeaturizer, OrtConfig

    config = dataclasses.replace(config or SparkJobConfig(), partitions=partitions, batch_size=batch_size)
    model = OnnxFeaturizer(onnx_path, OrtConfig(intra_op_threads=1))  # fail fast, and read the fingerprint
    out = Path(out_parquet)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    own_session = spark is None
    session = spark or spark_session(config)
    start = time.perf_counter()
    try:
        import pandas as pd

        listing = pd.DataFrame({"path": [str(Path(p).resolve()) for p in image_paths]})
        frame = session.createDataFrame(listing, "path string")
        featurize_dataframe(frame, onnx_path, config).write.parquet(str(staging))
        seconds = time.perf_counter() - start
        written = session.read.parquet(str(staging))
        n_images, n_failed = written.count(), written.filter("error is not null").count()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if own_session:
            session.stop()
    atomic_write_json(
        staging / "_workbench.json",
        {
            "fingerprint": model.fingerprint,
            "onnx": str(Path(onnx_path).resolve()),
            "n_images": n_images,
            "n_failed": n_failed,
            "seconds": seconds,
            "config": asdict(config),
            "versions": environment_versions(),
        },
    )
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    log.info("wrote %d embeddings (%d failed) to %s in %.1f s", n_images, n_failed, out, seconds)
    return SparkFeaturizeResult(out, model.fingerprint, n_images, n_failed, seconds)


def read_embeddings(parquet: str | Path) -> tuple[list[str], np.ndarray, list[str | None]]:
    """(paths, ``float32[N, D]`` embeddings, errors) of a job's output, sorted by path; failed rows are NaN.

    Reads with pyarrow alone: no Spark needed to use the result.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(str(parquet), columns=["path", "embedding", "error"]).sort_by("path")
    paths = table.column("path").to_pylist()
    vectors = table.column("embedding").to_pylist()
    dim = next((len(v) for v in vectors if v is not None), 0)
    embeddings = np.array([v if v is not None else [np.nan] * dim for v in vectors], np.float32).reshape(
        len(paths), dim
    )
    return paths, embeddings, table.column("error").to_pylist()


def import_embeddings(parquet: str | Path, features: str | Path) -> tuple[str, int]:
    """Put a job's embeddings into a workspace's feature cache (``WorkDir.features``), keyed by content hash, so
    that opening the workspace on the same photos embeds nothing. Failed rows are left out (embedded on open).

    Returns:
        The featurizer fingerprint and how many embeddings were added.

    Raises:
        ArtifactError: The output has no readable ``_workbench.json`` or no usable rows.
    """
    import pyarrow.parquet as pq

    from core.artifacts import read_json
    from core.errors import ArtifactError
    from core.featurize import FeatureCache

    parquet = Path(parquet)
    manifest = read_json(parquet / "_workbench.json")
    fingerprint = manifest.get("fingerprint") if isinstance(manifest, dict) else None
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ArtifactError(f"{parquet / '_workbench.json'}: no featurizer fingerprint")
    table = pq.read_table(str(parquet), columns=["sha256", "embedding", "error"])
    rows = [
        (sha, vector)
        for sha, vector, error in zip(
            table.column("sha256").to_pylist(), table.column("embedding").to_pylist(), table.column("error").to_pylist(),
            strict=True,
        )
        if vector is not None and not error and sha
    ]  # fmt: skip
    if not rows:
        raise ArtifactError(f"{parquet}: no embedded image to import")
    try:
        FeatureCache(features).add(fingerprint, [sha for sha, _ in rows], np.array([v for _, v in rows], np.float32))
    except ValueError as err:
        raise ArtifactError(f"{parquet}: {err}") from err
    return fingerprint, len(rows)
