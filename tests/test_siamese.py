"""Siamese pair ranker: exact symmetry, it learns, storage round trip."""

import numpy as np
import pytest

from core.data import make_comparative_sets
from core.errors import ArtifactError
from core.evaluate import evaluate
from core.rankers import RandomRanker
from core.siamese import SiameseConfig, SiameseRanker


def clusters(rng, n_labels=5, per_label=20, dim=16):
    centres = rng.normal(size=(n_labels, dim))
    labels = np.repeat(np.arange(n_labels), per_label).astype(str)
    embeddings = centres[labels.astype(int)] + rng.normal(scale=0.6, size=(len(labels), dim))
    return (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    embeddings, labels = clusters(rng)
    sets = make_comparative_sets(labels, 10, 20, rng)
    return SiameseRanker(SiameseConfig(epochs=15, hidden=32)).fit(embeddings, labels, sets)


def test_probability_is_symmetric(trained):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 16)).astype(np.float32), rng.normal(size=(9, 16)).astype(np.float32)
    np.testing.assert_allclose(trained.score(a, b), trained.score(b, a).T, atol=1e-5)
    np.testing.assert_allclose(trained.score_pairs(a, b[:6]), np.diag(trained.score(a, b[:6])), atol=1e-5)
    assert ((trained.probability(trained.score(a, b)) >= 0) & (trained.probability(trained.score(a, b)) <= 1)).all()


def test_it_learns_to_rank_unseen_data(trained):
    rng = np.random.default_rng(2)
    embeddings, labels = clusters(rng)
    sets = make_comparative_sets(labels, 10, 20, rng)
    learned = evaluate(trained, embeddings, labels, sets, np.random.default_rng(0), 50)
    chance = evaluate(RandomRanker(np.random.default_rng(0)), embeddings, labels, sets, np.random.default_rng(0), 50)
    assert learned.mean_rank.value < chance.mean_rank.value / 3


def test_save_load_round_trip_and_errors(trained, tmp_path):
    path = tmp_path / "siamese.npz"
    trained.save(path, {"featurizer": "x"})
    loaded = SiameseRanker.load(path)
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(3, 16)).astype(np.float32), rng.normal(size=(4, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.score(a, b), trained.score(a, b))
    with pytest.raises(ArtifactError, match="no Siamese ranker"):
        SiameseRanker.load(tmp_path / "missing.npz")
    with pytest.raises(ArtifactError, match="not trained"):
        SiameseRanker().score(a, b)


def test_prefilter_scores_only_the_predicted_class(trained):
    from core.siamese import PrefilteredRanker

    rng = np.random.default_rng(4)
    embeddings, labels = clusters(rng)
    calls = []

    class Counting(SiameseRanker):
        def score(self, query, gallery):
            calls.append(len(query) * len(gallery))
            return super().score(query, gallery)

    base = Counting(trained.config, trained.head)
    ranker = PrefilteredRanker(base, None).fit(embeddings, labels)
    scores = ranker.score(embeddings[:10], embeddings)
    assert sum(calls) < 10 * len(embeddings) / 2  # only same-class pairs were scored (5 classes)
    predicted = ranker.classifier.predict(embeddings)
    for i in range(10):
        same = predicted == predicted[i]
        np.testing.assert_allclose(
            scores[i, same], trained.score(embeddings[i : i + 1], embeddings[same])[0], atol=1e-5
        )
        assert (scores[i, ~same] == np.finfo(np.float32).min).all()
    np.testing.assert_allclose(
        ranker.score_pairs(embeddings[:10], embeddings[10:20]), np.diag(scores[:, 10:20]), atol=1e-5
    )
