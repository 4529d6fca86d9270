"""Milvus Lite end to end: ``index build --kind milvus`` through the CLI, ``Workspace.search`` served by the saved
Milvus index, rebuilds that drop the superseded collection, ids kept beside the manifest, and a Lite file held by
another process refused in one line. Skipped when pymilvus or milvus-lite is not installed."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_workflows import make_workspace

from core.errors import ArtifactError
from workbench import workflows
from workbench.cli import main

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from core.index import load_index, read_manifest, space_for
from core.index.milvus_backend import MilvusConfig, MilvusIndex, connect
from core.rankers import CosineRanker


def collections(uri: Path) -> list[str]:
    return sorted(connect(MilvusConfig(uri=str(uri))).list_collections())


def test_workspace_search_is_served_by_a_saved_milvus_index(tmp_path, tiny_dataset, monkeypatch):
    ws = make_workspace(tiny_dataset, tmp_path / "work")
    query = ws.embeddings[4:5]
    ws.featurizer.embed = lambda images: query  # type: ignore[attr-defined]
    exact = ws.search(Image.new("RGB", (8, 8)), "cosine", 5)
    uri = tmp_path / "work" / "milvus.db"
    first = workflows.index_build(ws, ws.layout.index, MilvusConfig(uri=str(uri)), "cosine")
    assert isinstance(first, MilvusIndex) and first.config.collection.startswith("gallery_")
    assert ws.saved_index("cosine") is not None and ws.saved_index("l2") is None

    def no_full_scan(*args, **kwargs):
        raise AssertionError("scored the whole gallery")

    monkeypatch.setattr("workbench.workspace.top_k", no_full_scan)
    indexed = ws.search(Image.new("RGB", (8, 8)), "cosine", 5)
    assert [hit.record for hit in indexed] == [hit.record for hit in exact]
    np.testing.assert_allclose([hit.score for hit in indexed], [hit.score for hit in exact], rtol=0, atol=1e-5)

    # a rebuild replaces it: a new collection goes live, the superseded one is dropped
    second = workflows.index_build(ws, ws.layout.index, MilvusConfig(uri=str(uri)), "cosine")
    assert second.config.collection != first.config.collection
    assert collections(uri) == [second.config.collection]
    # `index add` saves the same collection again as a new version: it is kept
    workflows.index_add(ws, ws.layout.index)
    assert collections(uri) == [second.config.collection]


def test_loaded_milvus_index_reads_its_ids_from_the_manifest_not_from_milvus(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(40, 8)).astype(np.float32)
    index = MilvusIndex("model", 8, space_for(CosineRanker()), MilvusConfig(uri=str(tmp_path / "m.db")))
    index.add(np.arange(40) + 100, gallery)
    assert index.remove([100, 101, 5]) == 2
    index.save(tmp_path / "index")
    assert "ids.npy" in read_manifest(tmp_path / "index")["files"]

    def no_scan(*args, **kwargs):
        raise AssertionError("read every id back from Milvus")

    monkeypatch.setattr(MilvusIndex, "_read_ids", no_scan)
    loaded = load_index(tmp_path / "index", fingerprint="model")
    np.testing.assert_array_equal(np.sort(loaded.ids()), np.arange(102, 140))
    assert loaded.search(gallery[10:11], 1, CosineRanker()).ids[0, 0] == 110


def test_a_lite_file_held_by_another_process_is_refused_in_one_line(tmp_path):
    uri = tmp_path / "held.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pymilvus import MilvusClient; MilvusClient({str(uri)!r}); print('ready', flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(ArtifactError, match="serves one process at a time") as refused:
            connect(MilvusConfig(uri=str(uri)))
        assert "\n" not in str(refused.value) and "--milvus-uri" in str(refused.value)
    finally:
        holder.communicate("\n", timeout=30)


@pytest.mark.slow  # the real featurizer through the CLI: `make test-slow` runs it in CI
def test_cli_index_build_kind_milvus_then_search_rebuild_remove_add(tmp_path, tiny_dataset, capsys):
    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path), "--quiet"]
    query = tiny_dataset / "tools" / "gc_wrench.jpg"
    assert main(["index", "build", "--kind", "milvus", *common]) == 0
    assert "indexed 18 images (milvus)" in capsys.readouterr().out
    assert main(["index", "search", str(query), "-k", "3", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[3].endswith("gc_wrench.jpg") and len(lines) == 4
    assert main(["search", str(query), "-k", "3", *common]) == 0  # Workspace.search, served by the Milvus index
    assert capsys.readouterr().out.splitlines()[1].split()[1] == "1.0000"
    assert main(["index", "build", "--kind", "milvus", *common]) == 0  # replaces it
    assert "indexed 18 images (milvus)" in capsys.readouterr().out
    assert main(["index", "remove", str(query), *common]) == 0
    assert "removed 1 image(s); 17 indexed" in capsys.readouterr().out
    assert main(["index", "add", *common]) == 0
    assert "added 1 image(s); 18 indexed" in capsys.readouterr().out


def test_an_unreachable_server_is_refused_in_one_line():
    with pytest.raises(ArtifactError, match=r"^http://127\.0\.0\.1:9: cannot open Milvus .*MILVUS_TOKEN") as refused:
        connect(MilvusConfig(uri="http://127.0.0.1:9"))
    assert "\n" not in str(refused.value)
