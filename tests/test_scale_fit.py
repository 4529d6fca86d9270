"""Quick learned-ranker fits at scale: a stratified, seeded sample of the training rows, a step cap, the thread
setting restored, and the SVM's cap on comparative sets."""

import numpy as np
import pytest
import torch

from core.data import ComparativeSets, make_comparative_sets
from core.evaluate import sample_queries
from core.metric_learning import ProjectionConfig, ProjectionRanker
from core.svm import SVMRanker


def clustered(n: int, n_labels: int = 4, dim: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, n_labels, n)
    rows = 2.0 * np.eye(dim)[codes] + rng.normal(size=(n, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32), np.array(list("abcd"))[codes]


FAST = {"epochs": 3, "batch_size": 32, "identity_weights": (0.0, 1.0)}


def test_projection_above_the_row_cap_fits_on_the_stratified_sample():
    embeddings, labels = clustered(400)
    capped = ProjectionRanker(ProjectionConfig(max_train_rows=150, **FAST)).fit(embeddings, labels)
    rows = sample_queries(np.arange(400), labels, 150, np.random.default_rng(0))
    direct = ProjectionRanker(ProjectionConfig(max_train_rows=None, **FAST)).fit(embeddings[rows], labels[rows])
    np.testing.assert_array_equal(capped.matrix, direct.matrix)
    everything = ProjectionRanker(ProjectionConfig(max_train_rows=None, **FAST)).fit(embeddings, labels)
    assert not np.array_equal(everything.matrix, capped.matrix)


def test_projection_step_cap_bounds_training_and_changes_nothing_when_not_reached():
    embeddings, labels = clustered(200)
    uncapped = ProjectionRanker(ProjectionConfig(max_steps=None, **FAST)).fit(embeddings, labels)
    roomy = ProjectionRanker(ProjectionConfig(max_steps=10_000, **FAST)).fit(embeddings, labels)
    np.testing.assert_array_equal(uncapped.matrix, roomy.matrix)
    calls = []
    original = torch.optim.Adam.step

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = counting
    try:
        threads = torch.get_num_threads()
        capped = ProjectionRanker(ProjectionConfig(max_steps=4, **FAST)).fit(embeddings, labels)
        assert torch.get_num_threads() == threads  # the training's own thread count is not left behind
    finally:
        torch.optim.Adam.step = original
    assert len(calls) == 2 * 4  # validation fit and final fit, 4 steps each (3 epochs would be 2 x 15)
    assert not np.array_equal(capped.matrix, uncapped.matrix)


@pytest.mark.parametrize(
    ("field", "value"), [("max_train_rows", 0), ("max_steps", 0), ("threads", 0), ("max_steps", -5)]
)
def test_projection_bad_caps_are_rejected(field, value):
    with pytest.raises(ValueError, match=f"ProjectionConfig.{field} must be >= 1"):
        ProjectionConfig(**{field: value})


def test_svm_above_the_set_cap_fits_on_a_stratified_sample(monkeypatch):
    embeddings, labels = clustered(300, dim=6)
    sets = make_comparative_sets(labels.astype(object), 30, 9, np.random.default_rng(1))
    assert len(sets) == 120
    monkeypatch.setattr("core.svm.MAX_TRAIN_SETS", 40)
    capped = SVMRanker().fit(embeddings, labels, sets, rng=np.random.default_rng(2))
    keep = sample_queries(np.arange(120), labels[sets.queries], 40, np.random.default_rng(2))
    direct = SVMRanker().fit(embeddings, labels, ComparativeSets(sets.queries[keep], sets.references[keep]))
    np.testing.assert_array_equal(capped.weights, direct.weights)
    assert not np.array_equal(capped.weights, SVMRanker().fit(embeddings, labels, sets).weights)
