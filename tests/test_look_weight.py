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
