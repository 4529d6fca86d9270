"""Spark batch featurization (workbench.spark_job) in local mode on the tiny real set: same features as one machine.

Needs pyspark (requirements-spark.txt) and a Java runtime (Debian: openjdk-17-jre-headless); skipped without.
Run with ``pytest -m spark``.
"""

import shutil
import warnings

import numpy as np
import pytest

pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("no Java runtime for Spark (apt-get install openjdk-17-jre-headless)", allow_module_level=True)

from workbench.spark_job import SparkJobConfig, featurize_with_spark, read_embeddings, spark_session

pytestmark = [
    pytest.mark.spark,
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]


@pytest.fixture(scope="module")
def spark():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        session = spark_session(SparkJobConfig(master="local[2]"))
    yield session
    session.stop()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, lite0_featurizer):
    from export.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("spark-onnx") / "pretrained.onnx"
    export_onnx(lite0_featurizer.backbone, path)
    return path


@pytest.fixture(scope="module")
def tiny_paths(tiny_dataset):
    return sorted(path.resolve() for path in tiny_dataset.glob("*/*.jpg"))


def test_session_is_local_and_quiet(spark):
    conf = spark.sparkContext.getConf()
    assert spark.sparkContext.master == "local[2]"
    assert conf.get("spark.driver.bindAddress") == "127.0.0.1" and conf.get("spark.driver.host") == "127.0.0.1"
    assert conf.get("spark.ui.enabled") == "false"


def test_spark_equals_single_machine_featurizer(spark, onnx_model, tiny_paths, tmp_path, tiny_images, lite0_featurizer):
    from core.featurize import embed_files
    from core.images import content_hash
    from export.onnx_featurizer import OnnxFeaturizer

    # 3 partitions, batches of 4: uneven splits, so partition and batch boundaries fall mid-label
    result = featurize_with_spark(
        tiny_paths, onnx_model, tmp_path / "embeddings.parquet", partitions=3, batch_size=4, spark=spark
    )
    assert result.n_images == len(tiny_paths) == 18 and result.n_failed == 0
    paths, spark_embeddings, errors = read_embeddings(result.path)
    assert paths == [str(path) for path in tiny_paths]  # one row per input, joined back by path
    assert errors == [None] * 18

    single_machine = embed_files(OnnxFeaturizer(onnx_model), tiny_paths, batch_size=8)
    assert np.abs(spark_embeddings - single_machine).max() <= 1e-6

    image_paths, images = tiny_images  # the PyTorch featurizer, in the order of tiny_paths
    assert [path.resolve() for path in image_paths] == tiny_paths
    torch_embeddings = lite0_featurizer.embed(images)
    assert (spark_embeddings * torch_embeddings).sum(axis=1).min() >= 0.9999

    import pyarrow.parquet as pq

    table = pq.read_table(str(result.path)).sort_by("path")
    assert table.column("sha256").to_pylist() == [content_hash(path.read_bytes()) for path in tiny_paths]
    assert (result.path / "_workbench.json").is_file() and result.fingerprint == lite0_featurizer.fingerprint


def test_bad_files_become_error_rows_not_failures(spark, onnx_model, tiny_paths, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    missing = tmp_path / "gone.jpg"
    out = tmp_path / "out.parquet"
    out.mkdir()
    (out / "stale.parquet").write_bytes(b"old")  # replaced, not merged
    result = featurize_with_spark(
        [tiny_paths[0], text, missing], onnx_model, out, partitions=2, batch_size=2, spark=spark
    )
    assert (result.n_images, result.n_failed) == (3, 2)
    assert not (out / "stale.parquet").exists()
    paths, embeddings, errors = read_embeddings(out)
    by_path = dict(zip(paths, errors, strict=True))
    assert by_path[str(tiny_paths[0])] is None
    assert "not a recognised image format" in by_path[str(text.resolve())]
    assert "cannot read file" in by_path[str(missing.resolve())]
    assert np.isfinite(embeddings[paths.index(str(tiny_paths[0]))]).all()
    assert np.isnan(embeddings[paths.index(str(text.resolve()))]).all()


def test_missing_model_fails_before_starting(tmp_path, tiny_paths, spark):
    from core.errors import ArtifactError

    with pytest.raises(ArtifactError, match="ONNX model not found"):
        featurize_with_spark(tiny_paths, tmp_path / "none.onnx", tmp_path / "out.parquet", spark=spark)
    assert not (tmp_path / "out.parquet").exists()
