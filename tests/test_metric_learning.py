"""Projection ranker: learns hidden informative directions, stays cosine when told to, deterministic, storage."""

import json

import numpy as np
import pytest

from core.errors import ArtifactError
from core.metric_learning import ProjectionConfig, ProjectionRanker
from core.rankers import CosineRanker


def hidden_signal_data(rng, n_per_label=25, n_labels=5, informative=4, noise=28):
    """Labels differ along a few dimensions; louder noise dimensions drown them for plain cosine."""
    centres = rng.normal(scale=1.0, size=(n_labels, informative))
    labels = np.repeat(np.arange(n_labels), n_per_label).astype(str)
    signal = centres[labels.astype(int)] + rng.normal(scale=0.15, size=(len(labels), informative))
    embeddings = np.hstack([signal, rng.normal(scale=1.0, size=(len(labels), noise))])
    return (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32), labels


def recall_at_1(ranker, embeddings, labels):
    scores = ranker.score(embeddings, embeddings)
    np.fill_diagonal(scores, -np.inf)
    return float(np.mean(labels[scores.argmax(1)] == labels))


FAST = ProjectionConfig(epochs=15, identity_weights=(0.0, 0.5, 1.0))


def test_projection_learns_the_informative_directions_and_beats_cosine_on_new_images():
    train, train_labels = hidden_signal_data(np.random.default_rng(0))
    ranker = ProjectionRanker(FAST).fit(train, train_labels)
    test, test_labels = hidden_signal_data(np.random.default_rng(0), n_per_label=20)  # same centres, new noise
    projected, plain = recall_at_1(ranker, test, test_labels), recall_at_1(CosineRanker(), test, test_labels)
    assert ranker.identity_weight < 1.0
    assert projected > plain + 0.3, (projected, plain)


def styled_data(rng, n_per_label, style_scale, n_labels=5, informative=6, style=20):
    """Labels differ along a few dimensions; ``style`` more dimensions vary by ``style_scale`` (the photo style)."""
    centres = np.random.default_rng(0).normal(size=(n_labels, informative))
    labels = np.repeat(np.arange(n_labels), n_per_label).astype(str)
    signal = centres[labels.astype(int)] + rng.normal(scale=0.3, size=(len(labels), informative))
    embeddings = np.hstack([signal, rng.normal(scale=style_scale, size=(len(labels), style))])
    return (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32), labels


def top5_agreement(ranker, queries, query_labels, gallery, gallery_labels):
    top = np.argsort(-ranker.score(queries, gallery), axis=1)[:, :5]
    return float(np.mean(gallery_labels[top] == query_labels[:, None]))


def test_photos_in_another_style_keep_their_neighbours_with_the_default_shrinkage():
    # The gallery hardly varies in the style dimensions; the queries vary a lot there (another photo style).
    gallery, gallery_labels = styled_data(np.random.default_rng(1), 30, style_scale=0.02)
    queries, query_labels = styled_data(np.random.default_rng(2), 10, style_scale=0.3)
    cosine = top5_agreement(CosineRanker(), queries, query_labels, gallery, gallery_labels)

    def learned_alone(**config):
        ranker = ProjectionRanker(ProjectionConfig(epochs=15, identity_weights=(0.0,), **config))
        return top5_agreement(ranker.fit(gallery, gallery_labels), queries, query_labels, gallery, gallery_labels)

    assert learned_alone() >= 0.9 * cosine, (learned_alone(), cosine)
    # barely shrunk, whitening amplifies the style dimensions and the queries land next to arbitrary items
    assert learned_alone(shrinkage=1e-3) < 0.7 * cosine
    with pytest.raises(ValueError, match="shrinkage"):
        ProjectionConfig(shrinkage=0.0)


def test_identity_weight_one_is_exactly_cosine_and_transform_is_unit():
    train, labels = hidden_signal_data(np.random.default_rng(0))
    ranker = ProjectionRanker(ProjectionConfig(epochs=1, identity_weights=(1.0,))).fit(train, labels)
    np.testing.assert_allclose(ranker.score(train[:5], train), CosineRanker().score(train[:5], train), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ranker.transform(train), axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        ranker.score_pairs(train[:5], train[5:10]), np.diag(ranker.score(train[:5], train[5:10])), atol=1e-6
    )


def test_same_seed_same_matrix_other_seed_other_matrix():
    train, labels = hidden_signal_data(np.random.default_rng(0))
    config = ProjectionConfig(epochs=3, identity_weights=(0.0,))
    first = ProjectionRanker(config).fit(train, labels).matrix
    np.testing.assert_array_equal(first, ProjectionRanker(config).fit(train, labels).matrix)
    other = ProjectionConfig(epochs=3, identity_weights=(0.0,), seed=1)
    assert not np.array_equal(first, ProjectionRanker(other).fit(train, labels).matrix)


def test_reduced_dims_gives_d_columns():
    train, labels = hidden_signal_data(np.random.default_rng(0))
    ranker = ProjectionRanker(ProjectionConfig(dims=8, epochs=2, identity_weights=(0.0, 1.0))).fit(train, labels)
    assert ranker.matrix.shape == (32, 8) and ranker.transform(train).shape == (len(train), 8)


def test_save_load_round_trip_and_bad_files(tmp_path):
    ranker = ProjectionRanker(FAST, np.arange(12, dtype=np.float32).reshape(4, 3), identity_weight=0.5)
    ranker.save(tmp_path / "p.npz", {"featurizer": "x"})
    with np.load(tmp_path / "p.npz", allow_pickle=False) as archive:
        assert json.loads(str(archive["header"]))["metadata"] == {"featurizer": "x"}
    loaded = ProjectionRanker.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(loaded.matrix, ranker.matrix)
    assert (loaded.identity_weight, loaded.config) == (0.5, FAST)
    with pytest.raises(ArtifactError, match="missing.npz: no projection ranker"):
        ProjectionRanker.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="junk.npz: unreadable projection ranker"):
        ProjectionRanker.load(tmp_path / "junk.npz")
    with pytest.raises(ArtifactError, match="not fitted"):
        ProjectionRanker().score(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"expected \(N, 4\) embeddings"):
        ranker.transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least two labels"):
        ProjectionRanker(FAST).fit(np.eye(3, dtype=np.float32), np.array(["a", "a", "a"]))
    with pytest.raises(ValueError, match="identity_weights"):
        ProjectionConfig(identity_weights=(1.5,))


@pytest.mark.parametrize("damage", ["empty", "truncated", "object array"])
def test_damaged_ranker_files_get_one_line_errors_that_never_suggest_unpickling(tmp_path, damage):
    """Every way a saved ranker can be damaged reads as the same one-line ArtifactError (the CLI's exit 2)."""
    from core.svm import SVMRanker

    path = tmp_path / "projection.npz"
    ProjectionRanker(FAST, np.eye(4, dtype=np.float32)).save(path)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:  # a well-formed archive whose member needs pickle to load
        np.savez(path, header=np.array([{"schema_version": 2}], dtype=object), matrix=np.eye(4))
    for ranker in (ProjectionRanker, SVMRanker):
        with pytest.raises(ArtifactError) as caught:
            ranker.load(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: unreadable ") and "\n" not in message
        assert "pickle" not in message and "python -m workbench fit --ranker" in message
