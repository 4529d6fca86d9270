"""Embeddings computed by the Spark job join a workspace's feature cache: opening it then embeds nothing.

No Spark needed: the job's output (Parquet rows of path, sha256, embedding, error and ``_workbench.json``) is
written here with pyarrow, as the job writes it.
"""

import json
import logging

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from core.errors import ArtifactError  # noqa: E402
from workbench.spark_job import import_embeddings  # noqa: E402
from workbench.workspace import WorkspaceSpec, configure, open_workspace  # noqa: E402


def write_job_output(out, fingerprint, rows) -> None:
    out.mkdir(parents=True)
    table = pa.table(
        {
            "path": [row[0] for row in rows],
            "sha256": [row[1] for row in rows],
            "embedding": [row[2] for row in rows],
            "error": [row[3] for row in rows],
        }
    )
    pq.write_table(table, out / "part-0.parquet")
    (out / "_workbench.json").write_text(json.dumps({"fingerprint": fingerprint}))


def test_a_spark_run_fills_the_feature_cache_and_opening_embeds_nothing(tmp_path, tiny_dataset, caplog):
    here = open_workspace(WorkspaceSpec(configure(data={"root": tiny_dataset}), tmp_path / "here"))
    records = list(here.dataset.records)
    rows = [(str(r.path), r.sha256, here.embeddings[i].tolist(), None) for i, r in enumerate(records[1:], start=1)] + [
        (str(records[0].path), "", None, "cannot decode")
    ]  # a failed row is left out
    write_job_output(tmp_path / "spark.parquet", here.fingerprint, rows)

    elsewhere = WorkspaceSpec(configure(data={"root": tiny_dataset}), tmp_path / "elsewhere")
    fingerprint, added = import_embeddings(tmp_path / "spark.parquet", elsewhere.layout.features)
    assert fingerprint == here.fingerprint and added == len(records) - 1
    with caplog.at_level(logging.INFO):
        opened = open_workspace(elsewhere)
    assert f"featurizing 1 of {len(records)} images" in caplog.text  # only the row the job failed on
    np.testing.assert_allclose(opened.embeddings, here.embeddings, rtol=0, atol=1e-6)


def test_job_output_without_a_fingerprint_or_rows_is_refused_in_one_line(tmp_path):
    write_job_output(tmp_path / "a", "", [("x.jpg", "0" * 64, [1.0, 0.0], None)])
    with pytest.raises(ArtifactError, match="_workbench.json: no featurizer fingerprint"):
        import_embeddings(tmp_path / "a", tmp_path / "features")
    write_job_output(tmp_path / "b", "model-1", [("x.jpg", "", None, "broken")])
    with pytest.raises(ArtifactError, match="no embedded image to import"):
        import_embeddings(tmp_path / "b", tmp_path / "features")
    write_job_output(tmp_path / "c", "model-1", [("x.jpg", "0" * 64, [float("nan"), 0.0], None)])
    with pytest.raises(ArtifactError, match="NaN or infinite"):
        import_embeddings(tmp_path / "c", tmp_path / "features")
