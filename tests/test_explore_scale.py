"""The Explore map and the gallery picker at scale, without a model: a stratified sample fitted and drawn, queries
placed with the fitted projection, and a picker index whose pages and name lookups cost O(page)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from core.data import ImageDataset, RecordColumns
from core.plots import WEBGL_POINTS
from core.plots import embedding_map as map_figure
from workbench.analysis import embedding_map
from workbench.views import GalleryIndex

ROOT = Path("/photos")


def gallery(n_per_label: dict[str, int], dim: int = 16, seed: int = 0) -> SimpleNamespace:
    """A workspace stand-in: unit embeddings clustered by label, records as columns, interleaved labels."""
    rng = np.random.default_rng(seed)
    labels = [label for label, count in n_per_label.items() for _ in range(count)]
    order = rng.permutation(len(labels))
    labels = [labels[i] for i in order]
    centres = {label: rng.standard_normal(dim) * 3 for label in n_per_label}
    embeddings = np.array([centres[label] + rng.standard_normal(dim) for label in labels], np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    paths = tuple(f"{label}/photo_{row:04d}.jpg" for row, label in enumerate(labels))
    dataset = ImageDataset(RecordColumns(ROOT, paths, labels, ["0" * 64] * len(paths)), ROOT)
    return SimpleNamespace(
        embeddings=embeddings, seed=7, dataset=dataset, relative_path=lambda record: str(record.path.relative_to(ROOT))
    )


def test_a_large_gallery_is_mapped_through_a_stratified_sample_and_queries_are_placed_on_it():
    ws = gallery({"a": 60, "b": 30, "c": 10})
    mapping = embedding_map(ws, "pca", max_points=20)
    assert mapping.sampled and mapping.total == 100 and len(mapping.rows) == 20
    assert np.all(np.diff(mapping.rows) > 0)  # distinct rows, ascending
    labels = ws.dataset.label_array
    assert mapping.labels == labels[mapping.rows].tolist()
    assert {label: mapping.labels.count(label) for label in "abc"} == {"a": 12, "b": 6, "c": 2}  # shares kept
    assert mapping.names == [ws.dataset.relative_paths[row] for row in mapping.rows]
    # the points are the sample's, as the fitted projection places them; a photo outside the sample (a query) is
    # placed with the same projection
    np.testing.assert_allclose(
        mapping.projection.points, mapping.projection.transform(ws.embeddings[mapping.rows]), atol=1e-5
    )
    outside = np.setdiff1d(np.arange(100), mapping.rows)[0]
    placed = mapping.projection.transform(ws.embeddings[[outside]])
    assert placed.shape == (1, 2) and np.isfinite(placed).all()
    # placed beside its label: nearer the centre of its label's points than of any other label's
    centres = {label: mapping.projection.points[np.array(mapping.labels) == label].mean(0) for label in "abc"}
    nearest = min(centres, key=lambda label: np.linalg.norm(placed[0] - centres[label]))
    assert nearest == labels[outside]


def test_the_sampled_map_is_deterministic_for_a_seed_and_changes_with_it():
    ws = gallery({"a": 60, "b": 30, "c": 10})
    first, again = embedding_map(ws, "pca", max_points=20), embedding_map(ws, "pca", max_points=20)
    np.testing.assert_array_equal(first.rows, again.rows)
    np.testing.assert_array_equal(first.projection.points, again.projection.points)
    ws.seed = 8
    assert not np.array_equal(embedding_map(ws, "pca", max_points=20).rows, first.rows)


def test_a_gallery_within_the_cap_is_mapped_whole_as_before():
    from core.projection import project_2d

    ws = gallery({"a": 6, "b": 6})
    mapping = embedding_map(ws, "pca", max_points=12)
    assert not mapping.sampled and mapping.rows.tolist() == list(range(12))
    whole = project_2d(ws.embeddings, np.random.default_rng(ws.seed), "pca")  # the map before sampling existed
    np.testing.assert_allclose(mapping.projection.points, whole.points, atol=1e-6)


def test_each_map_point_carries_its_record_row_and_large_maps_draw_with_webgl():
    points = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    figure = map_figure(points, ["b", "a", "b"], ["x.jpg", "y.jpg", "z.jpg"], rows=np.array([10, 42, 97]))
    assert [trace.name for trace in figure.data] == ["a", "b"]
    assert list(figure.data[1].customdata) == [10, 97] and list(figure.data[1].text) == ["x.jpg", "z.jpg"]
    assert figure.data[0].type == "scatter"
    many = WEBGL_POINTS + 1
    large = map_figure(np.zeros((many, 2)), ["a"] * many, ["x"] * many)
    assert large.data[0].type == "scattergl"


def test_the_gallery_index_pages_a_label_and_finds_a_name_without_listing_them_all():
    ws = gallery({"a": 7, "b": 3})
    index = GalleryIndex.of(ws)
    assert index.labels == ("a", "b") and len(index) == 10
    labels = ws.dataset.label_array
    assert index.pages("a", size=3) == 3 and index.pages("b", size=3) == 1
    pages = [index.page("a", page, size=3) for page in (1, 2, 3)]
    assert [len(names) for names in pages] == [3, 3, 1]
    expected = [path for path, label in zip(ws.dataset.relative_paths, labels, strict=True) if label == "a"]
    assert [name for names in pages for name in names] == expected  # every photo of the label, in gallery order, once
    for row, path in enumerate(ws.dataset.relative_paths):
        assert index.row(path) == row and path in index
    assert index.row("a/nowhere.jpg") is None and "a/nowhere.jpg" not in index and 3 not in index


def test_the_gallery_index_finds_a_name_shown_with_escapes():
    dataset = ImageDataset(RecordColumns(ROOT, ("a/plain.jpg", "a/bad\nname.jpg"), ["a", "a"], ["0" * 64] * 2), ROOT)
    ws = SimpleNamespace(dataset=dataset, relative_path=lambda record: str(record.path.relative_to(ROOT)))
    index = GalleryIndex.of(ws)
    assert index.page("a", 1) == ["a/plain.jpg", "a/bad\\nname.jpg"]  # shown escaped, one line
    assert index.row("a/bad\\nname.jpg") == 1
    assert index.row("a/bad\nname.jpg") is None  # the raw name is not what the picker shows
