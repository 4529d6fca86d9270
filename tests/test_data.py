"""Datasets: scanning with bad files, stratified seeded split, comparative sets."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import (
    ImageDataset,
    ImageRecord,
    Split,
    check_disjoint,
    make_comparative_sets,
    scan_folder,
    stratified_split,
)
from core.errors import DatasetError, ImageLoadError


def write_image(path: Path, color, size=(40, 30), fmt="PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def test_scan_folder_keeps_good_images_and_names_bad_ones(tmp_path):
    write_image(tmp_path / "red" / "a.png", (255, 0, 0))
    write_image(tmp_path / "red" / "b.jpg", (250, 5, 5), fmt="JPEG")
    write_image(tmp_path / "blue" / "c.png", (0, 0, 255))
    (tmp_path / "blue" / "notes.txt").write_text("hello")
    (tmp_path / "blue" / "fake.jpg").write_text("not really a jpeg")
    (tmp_path / "blue" / "empty.png").write_bytes(b"")
    (tmp_path / "red" / "copy.png").write_bytes((tmp_path / "red" / "a.png").read_bytes())
    (tmp_path / "green").mkdir()

    report = scan_folder(tmp_path)
    assert [(r.path.name, r.label) for r in report.dataset.records] == [
        ("c.png", "blue"),
        ("a.png", "red"),
        ("b.jpg", "red"),
    ]
    reasons = {item.path.name: item.reason for item in report.skipped}
    assert set(reasons) == {"notes.txt", "fake.jpg", "empty.png", "copy.png"}
    assert "fake.jpg: not a recognised image format" in reasons["fake.jpg"]
    assert "empty file" in reasons["empty.png"]
    assert "exact duplicate of" in reasons["copy.png"] and "a.png" in reasons["copy.png"]
    assert report.dataset.label_counts() == {"blue": 1, "red": 2}

    with pytest.raises(ImageLoadError, match="empty.png: empty file"):  # first bad file in sorted order
        scan_folder(tmp_path, on_error="raise")


def test_scan_folder_rejects_missing_or_empty_roots(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        scan_folder(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no label folders"):
        scan_folder(tmp_path)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no usable images"):
        scan_folder(tmp_path)


LABELS = np.array(["a"] * 8 + ["b"] * 4 + ["c"] * 2 + ["d"] * 1)


def test_stratified_split_fractions_disjointness_and_determinism():
    split = stratified_split(LABELS, 0.75, np.random.default_rng(0))
    assert set(split.train) | set(split.test) == set(range(len(LABELS)))
    assert not set(split.train) & set(split.test)
    counts = {
        label: (int((LABELS[split.train] == label).sum()), int((LABELS[split.test] == label).sum())) for label in "abcd"
    }
    assert counts == {"a": (6, 2), "b": (3, 1), "c": (1, 1), "d": (1, 0)}
    again = stratified_split(LABELS, 0.75, np.random.default_rng(0))
    other = stratified_split(LABELS, 0.75, np.random.default_rng(1))
    np.testing.assert_array_equal(split.train, again.train)
    assert not np.array_equal(split.train, other.train)
    with pytest.raises(ValueError, match="train_fraction"):
        stratified_split(LABELS, 1.0, np.random.default_rng(0))


def test_check_disjoint_catches_shared_content(tmp_path):
    records = (
        ImageRecord(tmp_path / "a.jpg", "x", "h1"),
        ImageRecord(tmp_path / "b.jpg", "x", "h1"),  # same bytes, other name
        ImageRecord(tmp_path / "c.jpg", "y", "h2"),
    )
    dataset = ImageDataset(records)
    check_disjoint(dataset, Split(np.array([0]), np.array([2])))
    with pytest.raises(DatasetError, match="b.jpg: same sha256 as training image .*a.jpg"):
        check_disjoint(dataset, Split(np.array([0]), np.array([1, 2])))


def test_comparative_sets_are_valid_and_reproducible():
    labels = np.array(["a"] * 10 + ["b"] * 6 + ["c"] * 5 + ["single"])
    sets = make_comparative_sets(labels, n_queries_per_label=4, n_negatives=8, rng=np.random.default_rng(0))
    assert len(sets) == 12 and sets.n_negatives == 8  # "single" cannot be queried
    for query, refs in zip(sets.queries, sets.references, strict=True):
        assert refs[0] != query and labels[refs[0]] == labels[query]
        assert all(labels[n] != labels[query] for n in refs[1:])
        assert len(set(refs[1:])) == len(refs) - 1
    for label in "abc":
        queries = sets.queries[labels[sets.queries] == label]
        assert len(queries) == 4 and len(set(queries)) == 4
    again = make_comparative_sets(labels, 4, 8, np.random.default_rng(0))
    np.testing.assert_array_equal(sets.references, again.references)


def test_comparative_sets_shrink_negatives_to_what_exists():
    labels = np.array(["a"] * 5 + ["b"] * 3)
    sets = make_comparative_sets(labels, 2, 99, np.random.default_rng(0))
    assert sets.n_negatives == 3  # label "a" only has 3 images of other labels


def test_comparative_sets_need_two_labels():
    with pytest.raises(DatasetError, match="at least 2 labels"):
        make_comparative_sets(np.array(["a"] * 4), 2, 3, np.random.default_rng(0))
    with pytest.raises(DatasetError, match="2 or more images"):
        make_comparative_sets(np.array(["a", "b"]), 2, 3, np.random.default_rng(0))
