"""Workflows shared by the CLI and the app: learned rankers kept ready, full-gallery retrieval, label errors.

Most tests open a workspace on the tiny real set with synthetic clustered embeddings (so they need no model and
the expected neighbours are known); the CLI test uses the real pretrained featurizer.
"""

import json
import re
import shutil
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from PIL import Image

from core.errors import WorkbenchError
from core.featurize import Featurizer
from workbench import workflows
from workbench.workspace import Workspace, WorkspaceSpec, configure, prepared_data

DIM = 16


class FakeFeaturizer:
    """Stands in for a model: only the fingerprint matters to the workflows under test."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    def embed(self, images) -> np.ndarray:
        """Unit rows from each image's mean colour (the look metric's copies need some embedding)."""
        colours = np.array([np.asarray(image.convert("RGB"), np.float32).mean(axis=(0, 1)) for image in images])
        rows = np.hstack([colours, np.ones((len(images), DIM - 3), np.float32)])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(labels: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around one axis per label."""
    codes = np.unique(labels, return_inverse=True)[1]
    vectors = 3.0 * np.eye(DIM)[codes] + noise * rng.normal(size=(len(labels), DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def make_workspace(
    data: Path, workdir: Path, embeddings=None, fingerprint: str = "fake-a", seed: int = 0, noise: float = 0.5
) -> Workspace:
    spec = WorkspaceSpec(configure(data={"root": data, "seed": seed}), workdir, backend="torch")
    prepared = prepared_data(spec.config.data, spec.layout)
    if embeddings is None:
        embeddings = clustered(prepared.dataset.label_array, noise, np.random.default_rng(seed))
    return Workspace(spec, prepared, cast(Featurizer, FakeFeaturizer(fingerprint)), embeddings)


@pytest.fixture
def ws(tmp_path, tiny_dataset) -> Workspace:
    return make_workspace(tiny_dataset, tmp_path)


# --- learned rankers ready ----------------------------------------------------------------------------


def test_ensure_learned_fits_what_is_missing_once_and_again_when_featurizer_or_data_change(tmp_path, tiny_dataset):
    ws = make_workspace(tiny_dataset, tmp_path)
    assert "svm" not in ws.rankers_on_offer()
    calls = []
    ready = workflows.ensure_learned(ws, ("svm",), lambda done, total, name: calls.append((done, total, name)))
    assert [item.name for item in ready.fitted] == ["svm"] and "svm" in ws.rankers_on_offer()
    assert ready.current == ready.failed == ()
    assert calls == [(0, 1, "svm"), (1, 1, "")]
    saved = ws.ranker_path("svm").stat().st_mtime_ns

    assert workflows.ensure_learned(ws, ("svm",)) == workflows.LearnedReady((), ("svm",))  # current: left alone
    assert ws.ranker_path("svm").stat().st_mtime_ns == saved
    assert workflows.stale_rankers(ws, ("svm",)) == []

    other_featurizer = make_workspace(tiny_dataset, tmp_path, ws.embeddings, fingerprint="fake-b")
    assert workflows.stale_rankers(other_featurizer, ("svm",)) == ["svm"]
    assert [item.name for item in workflows.ensure_learned(other_featurizer, ("svm",)).fitted] == ["svm"]
    assert other_featurizer.ranker_path("svm") != ws.ranker_path("svm")

    resplit = make_workspace(tiny_dataset, tmp_path, ws.embeddings, seed=1)  # same folder, other split and sets
    assert resplit.ranker_path("svm") == ws.ranker_path("svm")
    assert workflows.data_signature(resplit.prepared) != workflows.data_signature(ws.prepared)
    assert workflows.stale_rankers(resplit, ("svm",)) == ["svm"]
    assert [item.name for item in workflows.ensure_learned(resplit, ("svm",)).fitted] == ["svm"]
    assert ws.ranker_path("svm").stat().st_mtime_ns != saved
    metadata = workflows.saved_metadata(ws.ranker_path("svm"))
    assert metadata is not None and metadata["data"] == workflows.data_signature(resplit.prepared)


def test_data_signature_follows_labels_and_content(tmp_path, tiny_dataset):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    before = workflows.data_signature(make_workspace(data, tmp_path / "w1").prepared)
    assert workflows.data_signature(make_workspace(data, tmp_path / "w1").prepared) == before
    (data / "fish" / "gc_fish1.jpg").rename(data / "tools" / "gc_fish1.jpg")  # relabelled
    assert workflows.data_signature(make_workspace(data, tmp_path / "w2").prepared) != before


def test_a_damaged_or_foreign_ranker_file_is_refitted(ws):
    path = ws.ranker_path("svm")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz")
    assert workflows.saved_metadata(path) is None
    assert workflows.stale_rankers(ws, ("svm",)) == ["svm"]
    workflows.ensure_learned(ws, ("svm",))
    metadata = workflows.saved_metadata(path)
    assert metadata is not None and metadata["featurizer"] == "fake-a"
    assert workflows.stale_rankers(ws, ("svm",)) == []


def test_a_ranker_saved_by_an_older_schema_is_refitted(ws):
    from core import metric_learning

    metadata = {"featurizer": ws.fingerprint, "data": workflows.data_signature(ws.prepared)}
    old = metric_learning.ProjectionRanker(matrix=np.eye(DIM, dtype=np.float32))
    path = ws.ranker_path("projection")
    path.parent.mkdir(parents=True)
    old.save(path, metadata)
    assert workflows.stale_rankers(ws, ("projection",)) == []  # same featurizer, data and schema: current
    header = json.loads(str(np.load(path)["header"]))
    header["schema_version"] = metric_learning.PROJECTION_SCHEMA_VERSION - 1  # written before the shrinkage fix
    np.savez(path, header=json.dumps(header), matrix=old.matrix)
    assert workflows.saved_metadata(path) == metadata  # its metadata alone says "current"
    assert workflows.stale_rankers(ws, ("projection",)) == ["projection"]


def test_a_ranker_the_data_cannot_fit_is_listed_and_the_others_are_still_fitted(tmp_path, tiny_dataset):
    data = tmp_path / "data"
    for label in ("fish", "tools"):  # 3 images per label (3 for training in all): too few for the projection
        (data / label).mkdir(parents=True)
        for image in sorted((tiny_dataset / label).glob("*.jpg"))[:3]:
            shutil.copy(image, data / label)
    ws = make_workspace(data, tmp_path / "work")
    with pytest.raises(
        workflows.RankerFitError, match=r"^projection ranker cannot be fitted on .* \(3 training images\)"
    ):
        workflows.fit_ranker(ws, "projection")
    ready = workflows.ensure_learned(ws, ("projection", "svm"))
    assert [item.name for item in ready.fitted] == ["svm"] and ready.current == ()
    [(name, reason)] = ready.failed
    assert name == "projection" and "\n" not in reason and str(ws.layout.root) in reason
    assert "svm" in ws.rankers_on_offer() and "projection" not in ws.rankers_on_offer()


def test_ensure_learned_refuses_plain_and_unknown_rankers(ws):
    with pytest.raises(WorkbenchError, match="'cosine' has nothing to learn"):
        workflows.ensure_learned(ws, ("cosine",))
    with pytest.raises(WorkbenchError, match="unknown ranker 'lda'"):
        workflows.ensure_learned(ws, ("lda",))
    assert workflows.READY_RANKERS == ("svm", "projection")


# --- full-gallery retrieval ---------------------------------------------------------------------------


def reference_retrieval(embeddings: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """Naive loops: each query ranks every other image by cosine (ties to the lower index)."""
    totals = {"recall@1": 0.0, "recall@5": 0.0, "map@r": 0.0, "mrr": 0.0}
    for query in queries:
        others = [i for i in range(len(labels)) if i != query]
        scores = [float(embeddings[query] @ embeddings[i]) for i in others]
        order = [others[j] for j in sorted(range(len(others)), key=lambda j: (-scores[j], others[j]))]
        relevant = [labels[i] == labels[query] for i in order]
        n_relevant = sum(relevant)
        totals["recall@1"] += float(relevant[0])
        totals["recall@5"] += float(any(relevant[:5]))
        hits, average = 0, 0.0
        for position, is_relevant in enumerate(relevant[:n_relevant], start=1):
            if is_relevant:
                hits += 1
                average += hits / position
        totals["map@r"] += average / n_relevant
        totals["mrr"] += 1.0 / (relevant.index(True) + 1)
    return {name: value / len(queries) for name, value in totals.items()}


@pytest.mark.parametrize("split", ["test", "train"])
def test_retrieval_queries_the_split_against_the_whole_gallery_itself_excluded(tmp_path, tiny_dataset, split):
    ws = make_workspace(tiny_dataset, tmp_path, noise=1.6)  # overlapping clusters: metrics well below 1
    [result] = workflows.retrieval(ws, ["cosine"], split)
    queries = ws.prepared.split.test if split == "test" else ws.prepared.split.train
    assert result.n_queries == len(queries) and result.n_dropped == 0
    expected = reference_retrieval(ws.embeddings, ws.dataset.label_array, queries)
    assert expected["map@r"] < 0.9  # the check below can tell a gallery of the split alone from the whole one
    for name, value in expected.items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-9), name
    assert set(result.per_category) == {"fish", "landmarks", "tools"}


def test_retrieval_bad_input(ws):
    with pytest.raises(WorkbenchError, match="split must be 'test' or 'train'"):
        workflows.retrieval(ws, ["cosine"], "validation")
    with pytest.raises(WorkbenchError, match="'svm' is not fitted"):
        workflows.retrieval(ws, ["svm"])
    [clipped] = workflows.retrieval(ws, ["cosine"], ks=(1, 5, 50))  # 18 images cannot serve recall@50
    assert {"recall@1", "recall@5"} <= set(clipped.metrics) and "recall@50" not in clipped.metrics


# --- likely label errors ------------------------------------------------------------------------------


def planted_error(tmp_path: Path, tiny_dataset: Path) -> tuple[Workspace, int]:
    """Tight clusters, and one fish image whose embedding sits among the tools."""
    ws = make_workspace(tiny_dataset, tmp_path, noise=0.05)
    labels = ws.dataset.label_array
    planted = int(np.flatnonzero(labels == "fish")[2])
    embeddings = ws.embeddings.copy()
    embeddings[planted] = embeddings[np.flatnonzero(labels == "tools")[0]] * 0.99 + 0.01 / np.sqrt(DIM)
    return make_workspace(
        tiny_dataset, tmp_path, embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    ), planted


def test_label_errors_find_the_planted_image_with_its_neighbours(tmp_path, tiny_dataset):
    ws, planted = planted_error(tmp_path, tiny_dataset)
    report = workflows.label_errors(ws, "cosine", k=10)
    assert report.k == 5  # capped: the smallest label has 6 images
    [error] = report.errors
    assert error.index == planted and error.record == ws.dataset.records[planted]
    assert (error.record.label, error.neighbour_label, error.share, error.own_share) == ("fish", "tools", 1.0, 0.0)
    assert len(error.neighbours) == 5 and {record.label for record in error.neighbours} == {"tools"}
    assert error.record not in error.neighbours


def test_a_label_of_one_image_does_not_shrink_every_neighbourhood(tmp_path, tiny_dataset):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "lonely").mkdir()
    shutil.copy(next((data / "fish").glob("*.jpg")), data / "lonely" / "one.jpg")
    shutil.rmtree(data / "fish")  # keep the copy's pixels unique: exact duplicates are dropped by the scan
    report = workflows.label_errors(make_workspace(data, tmp_path / "work"), "cosine", k=10)
    assert report.k == 5  # the smallest label of two or more images has 6 (was: 1, from the one-image label)


def test_label_errors_bad_input(ws):
    with pytest.raises(WorkbenchError, match="k must be at least 1"):
        workflows.label_errors(ws, k=0)
    with pytest.raises(WorkbenchError, match=r"min_share in \(0, 1\]"):
        workflows.label_errors(ws, min_share=1.5)
    with pytest.raises(WorkbenchError, match="unknown ranker"):
        workflows.label_errors(ws, "hamming")


def test_the_report_holds_retrieval_per_ranker_and_the_label_errors(tmp_path, tiny_dataset):
    ws, planted = planted_error(tmp_path, tiny_dataset)
    results = ws.evaluate(["cosine", "l2"])
    path = workflows.save_report(ws, results)
    report = json.loads(path.read_text())
    assert set(report["results"]) == set(report["retrieval"]) == {"cosine", "l2"}
    [expected] = workflows.retrieval(ws, ["l2"])
    assert report["retrieval"]["l2"]["metrics"] == pytest.approx(expected.metrics)
    assert report["retrieval"]["l2"]["n_queries"] == len(ws.prepared.split.test)
    assert set(report["looks"]) == {"cosine", "l2"}
    assert report["looks"]["l2"]["n_copies"] == len(ws.prepared.split.test)
    [error] = report["label_errors"]["errors"]
    assert error["path"] == ws.relative_path(ws.dataset.records[planted]) and error["neighbour_label"] == "tools"
    assert all(neighbour.startswith("tools/") for neighbour in error["neighbours"])


# --- the CLI, end to end with the real featurizer -------------------------------------------------------


@pytest.mark.slow  # about 13 s: three CLI runs, each loading the real model
def test_cli_fit_missing_then_evaluate_prints_full_gallery_metrics(tmp_path, tiny_dataset, capsys):
    from workbench.cli import main

    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path), "--quiet"]
    assert main(["fit", "--missing", "--ranker", "svm", *common]) == 0
    assert "svm ranker fitted in" in capsys.readouterr().out
    assert main(["fit", "--missing", "--ranker", "svm", *common]) == 0
    out = capsys.readouterr().out
    assert "already fitted" in out and "svm" in out and "fitted in" not in out

    assert main(["evaluate", "--ranker", "cosine", "--ranker", "svm", *common]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "recall@1" in line)
    assert header.split() == ["ranker", "queries", "recall@1", "recall@5", "recall@10", "map@r", "mrr"]
    lines = out.splitlines()
    table = lines[lines.index(header) :]
    table = table[: table.index("")]  # the full-gallery table, not the CI or looks tables after it
    rows = {line.split()[0]: line.split() for line in table if line.split()[:1] in (["cosine"], ["svm"])}
    assert len(rows["svm"]) == 2 + 5 * 3  # name, queries, then each metric with its interval [low, high]
    assert 0.0 <= float(rows["svm"][11]) <= 1.0  # MAP@R
    assert "copy recall@1" in out  # the look metric beside the label metrics
    assert "likely label error(s)" in out
    report = json.loads(next((tmp_path).glob("*/*/reports/*.json")).read_text())
    assert set(report["retrieval"]) == {"cosine", "svm"} and "errors" in report["label_errors"]


@pytest.mark.slow  # about 20 s: a 1-epoch run at 96 px, featurized and evaluated beside the pretrained model
def test_experiment_reports_full_gallery_metrics_per_featurizer(tmp_path, tiny_dataset, capsys):
    from workbench.cli import main

    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path), "--quiet"]
    assert main(["experiment", "--epochs", "1", "--input-size", "96", "--batch-size", "6", *common]) == 0
    out = capsys.readouterr().out
    assert out.count("recall@10") == 2  # one full-gallery table per featurizer
    interval = r"\d+\.\d% \[\d+\.\d%, \d+\.\d%\]"
    assert len(re.findall(rf"SVM pair accuracy \(balanced; .*\): train {interval}, test {interval}", out)) == 2, out
    report = json.loads(next(tmp_path.glob("*/*/reports/experiment-default.json")).read_text())
    assert report["schema_version"] == 2
    for section in report["sections"].values():
        assert set(section["retrieval"]) == set(section["results"]) == {"cosine", "l2", "svm", "l1", "random"}
        assert section["retrieval"]["cosine"]["n_queries"] == 6
        pairs = section["svm_pairs"]["test"]
        assert pairs["accuracy"]["method"] == "wilson" and pairs["balanced_accuracy"]["method"] == "wilson-mover"
        assert pairs["accuracy"]["low"] <= pairs["accuracy"]["value"] <= pairs["accuracy"]["high"]


def test_learned_rankers_are_fitted_on_the_training_split_only(tiny_dataset):
    from core.config import DataConfig
    from core.pipeline import prepare

    prepared = prepare(DataConfig(root=tiny_dataset, n_negatives=4))
    embeddings = np.random.default_rng(0).normal(size=(len(prepared.dataset), 8)).astype(np.float32)
    rows, labels, sets = workflows.training_view(prepared, embeddings)
    train = np.sort(prepared.split.train)
    assert len(rows) == len(train) < len(embeddings)  # no test image reaches a learned ranker
    np.testing.assert_array_equal(rows, embeddings[train])
    np.testing.assert_array_equal(labels, prepared.dataset.label_array[train])
    np.testing.assert_array_equal(rows[sets.queries], embeddings[prepared.train_sets.queries])
    np.testing.assert_array_equal(rows[sets.references], embeddings[prepared.train_sets.references])


def test_search_with_the_projection_transforms_the_gallery_once_and_ranks_as_the_ranker_does(
    tmp_path, tiny_dataset, monkeypatch
):
    from core.metric_learning import ProjectionRanker
    from core.rankers import top_k

    ws = make_workspace(tiny_dataset, tmp_path)
    workflows.ensure_learned(ws, ("projection",))
    query = ws.embeddings[3:4]
    ws.featurizer.embed = lambda images: query  # type: ignore[attr-defined]
    ws.ranker("projection")  # loaded (and checked on two rows against the featurizer) before counting
    rows_transformed: list[int] = []
    original = ProjectionRanker.agreement_transform
    monkeypatch.setattr(
        ProjectionRanker, "agreement_transform", lambda self, x: rows_transformed.append(len(x)) or original(self, x)
    )
    hits = ws.search(Image.new("RGB", (8, 8)), "projection", 6)
    first = len(rows_transformed)
    again = ws.search(Image.new("RGB", (8, 8)), "projection", 6)
    assert rows_transformed[0] == len(ws.embeddings)  # the gallery once (its label agreement part)...
    assert max(rows_transformed[1:]) <= 6 and len(rows_transformed) == 2 * first - 1  # ...then the query and hits
    expected_rows, expected_scores = top_k(ws.ranker("projection"), query, ws.embeddings, 6)
    for found in (hits, again):
        assert [ws.dataset.records.index(hit.record) for hit in found] == expected_rows[0].tolist()
        np.testing.assert_allclose([hit.score for hit in found], expected_scores[0], atol=1e-5)


def test_search_uses_a_saved_approximate_index_of_this_gallery_and_not_a_stale_one(tmp_path, tiny_dataset, monkeypatch):
    pytest.importorskip("faiss")
    from core.index.faiss_backend import FaissConfig

    data = tmp_path / "photos"
    shutil.copytree(tiny_dataset, data)
    ws = make_workspace(data, tmp_path / "work")
    query = ws.embeddings[4:5]
    ws.featurizer.embed = lambda images: query  # type: ignore[attr-defined]
    exact = ws.search(Image.new("RGB", (8, 8)), "cosine", 5)
    workflows.index_build(ws, ws.layout.index, FaissConfig(kind="flat"), "cosine")  # faiss, exact: same hits
    assert ws.saved_index("cosine") is not None and ws.saved_index("l2") is None  # built for cosine only

    def no_full_scan(*args, **kwargs):
        raise AssertionError("scored the whole gallery")

    monkeypatch.setattr("workbench.workspace.top_k", no_full_scan)
    indexed = ws.search(Image.new("RGB", (8, 8)), "cosine", 5)
    assert [hit.record for hit in indexed] == [hit.record for hit in exact]
    np.testing.assert_allclose([hit.score for hit in indexed], [hit.score for hit in exact], rtol=0, atol=1e-5)

    # the folder changed: the index holds other photos and is not used
    next(iter(sorted(data.glob("fish/*.jpg")))).unlink()
    changed = make_workspace(data, tmp_path / "work")
    changed.featurizer.embed = lambda images: changed.embeddings[4:5]  # type: ignore[attr-defined]
    assert changed.saved_index("cosine") is None
    with pytest.raises(AssertionError, match="whole gallery"):
        changed.search(Image.new("RGB", (8, 8)), "cosine", 5)


def test_the_look_metric_copies_each_photo_once_and_samples_large_splits(tmp_path, tiny_dataset, lite0_featurizer):
    from core.featurize import embed_files

    spec = WorkspaceSpec(configure(data={"root": tiny_dataset, "seed": 0}), tmp_path, backend="torch")
    prepared = prepared_data(spec.config.data, spec.layout)
    embeddings = embed_files(lite0_featurizer, [record.path for record in prepared.dataset.records])
    ws = Workspace(spec, prepared, lite0_featurizer, embeddings)
    cosine, random = workflows.looks(ws, ["cosine", "random"])
    test = ws.prepared.split.test
    assert cosine.n_copies == random.n_copies == len(test) and cosine.query_pool == 0
    assert sorted(cosine.originals.tolist()) == sorted(test.tolist())
    assert cosine.recall_at_1.value >= 0.75 > random.recall_at_1.value  # tiny real photos: copies find originals
    assert workflows.copy_embeddings(ws)[0] is workflows.copy_embeddings(ws)[0]  # embedded once per process
    [sampled] = workflows.looks(ws, ["cosine"], "train", max_copies=3)
    assert sampled.n_copies == 3 and sampled.query_pool == len(ws.prepared.split.train)
    assert set(sampled.originals.tolist()) <= set(ws.prepared.split.train.tolist())
    assert "copies of 3 of" in sampled.note


def test_the_datas_own_near_duplicates_are_a_second_look_metric(tmp_path, tiny_dataset, lite0_featurizer):
    from core.featurize import embed_files

    data = tmp_path / "photos"
    shutil.copytree(tiny_dataset, data)
    original = data / "fish/gc_fish2.jpg"
    Image.open(original).save(data / "fish/resaved_fish2.jpg", quality=80)  # a re-saved copy: other bytes, same look
    spec = WorkspaceSpec(configure(data={"root": data, "seed": 0}), tmp_path / "work", backend="torch")
    from workbench.workspace import refresh_data

    prepared = refresh_data(spec.config.data, spec.layout).prepared  # the catalogue holds every difference hash
    embeddings = embed_files(lite0_featurizer, [record.path for record in prepared.dataset.records])
    ws = Workspace(spec, prepared, lite0_featurizer, embeddings)
    names = [record.path.name for record in ws.dataset.records]
    pairs = set()
    for split in ("test", "train"):
        queries, partners, pool = workflows.near_duplicate_pairs(ws, split)
        pairs |= {(names[q], names[p]) for q, p in zip(queries, partners, strict=True)}
        assert pool == 0
    assert pairs and pairs <= {("gc_fish2.jpg", "resaved_fish2.jpg"), ("resaved_fish2.jpg", "gc_fish2.jpg")}
    split = "test" if names.index("gc_fish2.jpg") in ws.prepared.split.test else "train"
    cosine, random = workflows.near_duplicate_looks(ws, ["cosine", "random"], split)
    assert cosine.n_copies >= 1 and cosine.recall_at_1.value == 1.0  # the re-saved photo comes first, itself left out
    assert random.mean_rank.value > 1
    report = json.loads(workflows.save_report(ws, ws.evaluate(["cosine"], split), split=split).read_text())
    assert report["near_duplicate_looks"]["cosine"]["recall@1"]["value"] == 1.0
