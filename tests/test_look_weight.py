"""The look weight of the projection ranker in every door's search: exact, re-weighed per search, parts shown."""

import numpy as np
import pytest

from core.errors import WorkbenchError
from core.metric_learning import ProjectionConfig, ProjectionRanker
from core.rankers import top_k
from tests.test_workflows import make_workspace
from workbench import workflows


@pytest.fixture
def ws(tmp_path, tiny_dataset):
    ws = make_workspace(tiny_dataset, tmp_path, noise=0.8)
    fitted = ProjectionRanker(ProjectionConfig(epochs=2, identity_weights=(0.0,)))
    workflows.fit_ranker(ws, "projection", fitted.fit(*workflows.training_view(ws.prepared, ws.embeddings)))
    return ws


def test_search_equals_a_full_scoring_and_its_parts_add_up(ws):
    model = ws.ranker("projection")
    query = ws.embeddings[[4]]
    for weight in (None, 0.0, 0.3, 1.0):
        ranker = model if weight is None else model.with_look_weight(weight)
        expected_rows, expected_scores = top_k(ranker, query, ws.embeddings, 7)
        hits = ws.search_embedding(query, "projection", 7, look_weight=weight)
        assert [hit.record for hit in hits] == [ws.dataset.record(int(row)) for row in expected_rows[0]]
        np.testing.assert_allclose([hit.score for hit in hits], expected_scores[0], atol=1e-5)
        w = ranker.look_weight
        for hit in hits:
            agreement, look = hit.parts
            assert hit.score == pytest.approx((1 - w) * agreement + w * look, abs=1e-5)
    assert all(hit.parts is None for hit in ws.search_embedding(query, "cosine", 3))


def test_more_look_weight_brings_the_photo_itself_first(ws):
    query = ws.embeddings[[9]] + 0.3 * np.random.default_rng(0).normal(size=(1, ws.embeddings.shape[1]))
    query = (query / np.linalg.norm(query)).astype(np.float32)
    looks = ws.search_embedding(query, "projection", 1, look_weight=1.0)
    assert looks[0].record == ws.dataset.record(9)  # pure look: the nearest by cosine
    assert looks[0].record == ws.search_embedding(query, "cosine", 1)[0].record


def test_a_look_weight_is_refused_where_it_means_nothing(ws):
    query = ws.embeddings[[0]]
    with pytest.raises(WorkbenchError, match="the cosine ranker has no look weight"):
        ws.search_embedding(query, "cosine", 3, look_weight=0.5)
    with pytest.raises(WorkbenchError, match=r"look weight must lie in \[0, 1\], got 1.5"):
        ws.search_embedding(query, "projection", 3, look_weight=1.5)


def test_the_cli_takes_a_look_weight_and_prints_both_parts(tmp_path, tiny_dataset, capsys, caplog):
    from workbench.cli import main
    from workbench.workspace import WorkspaceSpec, configure, open_workspace

    common = ["--data", str(tiny_dataset), "--workdir", str(tmp_path), "--quiet"]
    assert main(["featurize", *common]) == 0
    ws = open_workspace(WorkspaceSpec(configure(data={"root": tiny_dataset}), tmp_path))
    matrix = np.random.default_rng(0).normal(size=(ws.embeddings.shape[1], 8)).astype(np.float32)
    workflows.fit_ranker(ws, "projection", ProjectionRanker(matrix=matrix))  # saved as it is: no fit needed
    query = tiny_dataset / "fish/gc_fish2.jpg"
    capsys.readouterr()
    assert main(["search", str(query), "-k", "3", "--ranker", "projection", "--look-weight", "1", *common]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split()[:5] == ["rank", "score", "label", "P(same)", "look"] and len(rows) == 3
    first = rows[0].split()
    assert first[-1].endswith("fish/gc_fish2.jpg") and float(first[1]) == pytest.approx(float(first[4]), abs=1e-3)
    assert main(["search", str(query), "--ranker", "cosine", "--look-weight", "0.5", *common]) == 2
    assert "the cosine ranker has no look weight" in caplog.text


def test_svm_hits_carry_the_calibrated_probability_of_the_same_label(ws):
    from workbench.service import hit_parts

    workflows.fit_ranker(ws, "svm")
    model = ws.ranker("svm")
    hits = ws.search_embedding(ws.embeddings[[2]], "svm", 6)
    chances = [hit.probability for hit in hits]
    np.testing.assert_allclose(chances, model.probability(np.array([hit.score for hit in hits])), atol=1e-6)
    assert all(0 <= p <= 1 for p in chances) and chances == sorted(chances, reverse=True)  # Platt is monotonic
    assert hit_parts(hits[0]) == f"P(same label) {chances[0]:.2f}" and hits[0].parts is None
    cosine = ws.search_embedding(ws.embeddings[[2]], "cosine", 2)
    assert cosine[0].probability is None and hit_parts(cosine[0]) is None
