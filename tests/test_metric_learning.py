"""Projection ranker: learns hidden informative directions, stays cosine when told to, deterministic, storage."""

import json

import numpy as np
import pytest

from core.errors import ArtifactError
from core.metric_learning import NeighbourLabels, ProjectionConfig, ProjectionRanker
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
        ranker = ProjectionRanker(
            ProjectionConfig(epochs=15, identity_weights=(0.0,), label_weight=0.0, look_weight=0.0, **config)
        )
        return top5_agreement(ranker.fit(gallery, gallery_labels), queries, query_labels, gallery, gallery_labels)

    assert learned_alone() >= 0.9 * cosine, (learned_alone(), cosine)
    with_votes = ProjectionRanker(ProjectionConfig(epochs=15)).fit(gallery, gallery_labels)
    assert top5_agreement(with_votes, queries, query_labels, gallery, gallery_labels) >= 0.9 * cosine
    # barely shrunk, whitening amplifies the style dimensions and the queries land next to arbitrary items
    assert learned_alone(shrinkage=1e-3) < 0.7 * cosine
    with pytest.raises(ValueError, match="shrinkage"):
        ProjectionConfig(shrinkage=0.0)


def test_identity_weight_one_is_exactly_cosine_and_transform_is_unit():
    train, labels = hidden_signal_data(np.random.default_rng(0))
    config = ProjectionConfig(epochs=1, identity_weights=(1.0,), label_weight=0.0)
    ranker = ProjectionRanker(config).fit(train, labels)
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
    votes = 0 if ranker.neighbours is None else 5  # one column per label when the labels vote
    # and the look: the input embedding beside the agreement
    assert ranker.matrix.shape == (32, 8) and ranker.transform(train).shape == (len(train), 8 + votes + 32)
    assert ranker.output_dim == 8 + votes + 32
    assert ranker.with_look_weight(0.0).output_dim == 8 + votes


def test_soft_labels_match_a_hand_computed_vote():
    # voters (1, 0) of label 0, (0, 1) and (0.6, 0.8) of label 1; T = 0.5; the query (1, 0) has cosines 1, 0, 0.6:
    # votes [e^2, e^0 + e^1.2] = [7.389, 4.320], unit length [0.8633, 0.5047]
    voters = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    votes = NeighbourLabels("input", voters, np.array([0, 1, 1]), 2, temperature=0.5, weight=0.75)
    np.testing.assert_allclose(votes.soft_labels(np.array([[1, 0]], np.float32)), [[0.8633, 0.5047]], atol=1e-4)
    # large cosines over a small temperature would overflow a plain exp: the vote is computed relative to the nearest
    far = NeighbourLabels("input", voters, np.array([0, 1, 1]), 2, temperature=1e-3, weight=0.75)
    np.testing.assert_allclose(far.soft_labels(np.array([[0, 1]], np.float32)), [[0, 1]], atol=1e-6)
    ranker = ProjectionRanker(
        ProjectionConfig(label_weight=0.75, temperature=0.5, look_weight=0.0), np.eye(2, dtype=np.float32), 0, votes
    )
    # [sqrt(0.25) * unit(x M), sqrt(0.75) * p(x)]: (1, 0) -> [0.5, 0, 0.866 * 0.8633, 0.866 * 0.5047]
    np.testing.assert_allclose(ranker.transform(np.array([[2, 0]], np.float32)), [[0.5, 0, 0.7476, 0.4371]], atol=1e-4)
    # with look weight 0.36: [0.8 * the above, 0.6 * unit(x)]
    looking = ranker.with_look_weight(0.36).transform(np.array([[2, 0]], np.float32))
    np.testing.assert_allclose(looking, [[0.4, 0, 0.5981, 0.3497, 0.6, 0]], atol=1e-4)


def test_the_look_weight_blends_label_agreement_with_the_input_cosine():
    train, labels = hidden_signal_data(np.random.default_rng(0))
    ranker = ProjectionRanker(ProjectionConfig(epochs=2, identity_weights=(0.0,))).fit(train, labels)
    assert ranker.look_weight == 0.6  # the default
    query, gallery = train[:3], train[3:40]
    agreement, look = ranker.parts(query, gallery)
    np.testing.assert_allclose(ranker.score(query, gallery), 0.4 * agreement + 0.6 * look, atol=1e-5)
    np.testing.assert_allclose(look, CosineRanker().score(query, gallery), atol=1e-5)
    np.testing.assert_allclose(ranker.with_look_weight(0.0).score(query, gallery), agreement, atol=1e-5)
    np.testing.assert_allclose(ranker.with_look_weight(1.0).score(query, gallery), look, atol=1e-5)
    # the blend is a dot product of unit rows, so an index serves it and pairs score as the matrix does
    np.testing.assert_allclose(np.linalg.norm(ranker.transform(query), axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        ranker.score_pairs(query, gallery[:3]), np.diag(ranker.score(query, gallery[:3])), atol=1e-5
    )
    assert not ranker.with_look_weight(0.2).same_scores_as(ranker)
    with pytest.raises(ValueError, match="look_weight"):
        ranker.with_look_weight(1.5)


def two_look_data(rng, n_per_look):
    """Label "a" has two opposite looks (+e0 and -e0), label "b" sits between them (+e1); small noise elsewhere."""
    looks = np.array([[1, 0, 0, 0], [-1, 0, 0, 0], [0, 1, 0, 0]], np.float64)
    which = np.repeat([0, 1, 2], n_per_look)
    embeddings = looks[which] + rng.normal(scale=0.2, size=(len(which), 4))
    labels = np.where(which < 2, "a", "b")
    return (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32), labels, which


def test_a_label_of_two_looks_finds_its_other_look_through_its_neighbours_labels():
    """No linear map brings x and -x together; the neighbours' labels do, and validation picks the input space."""
    train, train_labels, _ = two_look_data(np.random.default_rng(0), 30)
    test, _, looks = two_look_data(np.random.default_rng(1), 10)
    voting = ProjectionRanker(ProjectionConfig(epochs=10, look_weight=0.0)).fit(train, train_labels)
    alone = ProjectionRanker(ProjectionConfig(epochs=10, label_weight=0.0, look_weight=0.0)).fit(train, train_labels)
    assert voting.label_space == "input" and alone.label_space == "none"

    def other_look_first(ranker):  # queries of look +e0: is a photo of look -e0 scored above every "b" photo?
        scores = ranker.score(test[looks == 0], test)
        return float(np.mean(scores[:, looks == 1].max(1) > scores[:, looks == 2].max(1)))

    assert other_look_first(voting) == 1.0
    assert other_look_first(alone) <= 0.1
    assert other_look_first(CosineRanker()) <= 0.1


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
    for bad in ({"label_weight": 1.0}, {"label_weight": -0.1}, {"temperature": 1e-45}, {"max_references": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ProjectionConfig(**bad)


def test_the_voters_are_saved_and_damaged_voters_are_refused(tmp_path):
    train, labels, _ = two_look_data(np.random.default_rng(0), 30)
    ranker = ProjectionRanker(ProjectionConfig(epochs=3, max_references=40)).fit(train, labels)
    assert ranker.neighbours is not None and len(ranker.neighbours.references) == 40  # a sample of the 90
    assert np.bincount(ranker.neighbours.labels).tolist() == [27, 13]  # stratified: 60 and 30 of 90
    ranker.save(tmp_path / "p.npz")
    loaded = ProjectionRanker.load(tmp_path / "p.npz")
    assert loaded.same_scores_as(ranker) and loaded.label_space == ranker.label_space
    np.testing.assert_array_equal(loaded.transform(train), ranker.transform(train))
    header, arrays = ranker.state()
    damaged = [
        ("reference_labels", arrays["reference_labels"] + 5),  # a label id past the last label
        ("reference_labels", arrays["reference_labels"] + 0.5),  # not ids at all: never truncated
        ("references", arrays["references"][:, :2]),  # the wrong width
        ("references", arrays["references"][:0]),  # nobody votes: the softmax has nothing to take the max of
    ]
    for name, bad in damaged:
        with pytest.raises(ValueError, match="voter"):
            ProjectionRanker.from_state(header, {**arrays, name: bad})
    # a file of the previous schema says how to write it anew
    old = tmp_path / "old.npz"
    with np.load(tmp_path / "p.npz", allow_pickle=False) as archive:
        stored = {key: archive[key] for key in archive.files}
    stored["header"] = np.array(json.dumps({**json.loads(str(stored["header"])), "schema_version": 2}))
    np.savez(old, **stored)
    with pytest.raises(ArtifactError, match=r"schema version 2, this version reads 4; run .*fit --ranker projection"):
        ProjectionRanker.load(old)


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


def test_label_agreement_is_calibrated_on_held_out_pairs_and_saved():
    embeddings, all_labels = hidden_signal_data(np.random.default_rng(0), n_per_label=50)
    train, labels, test, test_labels = embeddings[::2], all_labels[::2], embeddings[1::2], all_labels[1::2]
    ranker = ProjectionRanker(ProjectionConfig(epochs=3, identity_weights=(0.0,))).fit(train, labels)
    assert ranker.platt is not None
    agreement, _ = ranker.parts(test, train)
    chances = ranker.agreement_probability(agreement)
    assert chances is not None and ((chances >= 0) & (chances <= 1)).all()
    order = np.argsort(agreement.reshape(-1))
    assert (np.diff(chances.reshape(-1)[order]) >= -1e-12).all()  # more agreement, more probable
    same = test_labels[:, None] == labels[None, :]
    assert chances[same].mean() > 0.5 > chances[~same].mean()  # new pairs: same labels probable, others not
    assert abs(chances.mean() - same.mean()) < 0.1  # calibrated in the large on pairs it never saw
    header, arrays = ranker.state()
    assert ProjectionRanker.from_state(header, arrays).platt == ranker.platt
    assert ranker.with_look_weight(0.2).platt == ranker.platt
    with pytest.raises(ValueError, match="platt must be two finite numbers"):
        ProjectionRanker.from_state({**header, "platt": [1.0, float("nan")]}, arrays)
